//! `print`: writes each record's value to standard output, one per line,
//! like Flink's print sink. The connector needs `stdout = true` in its grants.

use std::io::{Stdout, Write};

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

/// Config of the `print` sink. (`#[sluice_sdk::config]` derives through the
/// SDK's own `serde` and `schemars`: this crate depends on neither.)
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Written before every value, e.g. `"events> "`.
    #[serde(default)]
    pub prefix: String,
}

/// The sink's state.
#[derive(Debug)]
pub struct Print {
    prefix: String,
    out: Stdout,
}

impl Sink for Print {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Ok(Print {
            prefix: config.prefix,
            out: std::io::stdout(),
        })
    }

    fn write(
        &mut self,
        _origin: &Origin,
        batch: Batch<'_>,
        _rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut out = self.out.lock();
        for record in batch.iter() {
            out.write_all(self.prefix.as_bytes())
                .and_then(|()| out.write_all(record.value))
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| Error::retriable(format!("cannot write to stdout: {e}")))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.out
            .flush()
            .map_err(|e| Error::retriable(format!("cannot flush stdout: {e}")))
    }
}

sluice_sdk::export_sink!(Print);
