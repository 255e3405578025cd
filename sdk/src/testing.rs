//! Running a plugin's code in a unit test, outside the host: a
//! [`Context`], and a transform's [`Transform::process`] over owned
//! records.
//!
//! ```
//! use sluice_sdk::{Batch, BatchWriter, Context, Error, Record, Rejects, Transform};
//!
//! struct Upper;
//! impl Transform for Upper {
//!     type Config = ();
//!     fn open(_: (), _: &Context) -> Result<Self, Error> {
//!         Ok(Upper)
//!     }
//!     fn process(&mut self, input: Batch<'_>, out: &mut BatchWriter, rejects: &mut Rejects) -> Result<(), Error> {
//!         for (i, r) in input.iter().enumerate() {
//!             match r.value {
//!                 b"" => rejects.reject(i, "empty"),
//!                 v => out.push_value(&v.to_ascii_uppercase()),
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut t = Upper::open((), &sluice_sdk::testing::context()).unwrap();
//! let input = [Record::from_value("a"), Record::from_value("")];
//! let done = sluice_sdk::testing::process(&mut t, &input).unwrap();
//! assert_eq!(done.records, [Record::from_value("A")]);
//! assert_eq!(done.refused, [(1, "empty".to_owned())]);
//! ```

use crate::{Batch, BatchWriter, Context, Error, Record, Rejects, Transform};

/// The context of instance 0 of 1 of connector `test`.
pub fn context() -> Context {
    Context {
        connector: "test".into(),
        index: 0,
        count: 1,
    }
}

/// What one [`Transform::process`] call made of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The records written, in order.
    pub records: Vec<Record>,
    /// The records refused, as (index in the input, reason).
    pub refused: Vec<(u32, String)>,
}

/// What `transform` makes of `input` in one call.
pub fn process<T: Transform>(transform: &mut T, input: &[Record]) -> Result<Processed, Error> {
    let mut batch = BatchWriter::new();
    for r in input {
        batch.push_record(r);
    }
    let batch = batch.finish();
    let mut out = BatchWriter::new();
    let mut rejects = Rejects::default();
    let input = Batch::parse(&batch).expect("a batch the SDK wrote");
    transform.process(input, &mut out, &mut rejects)?;
    let out = out.finish();
    let records = Batch::parse(&out)
        .expect("a batch the SDK wrote")
        .iter()
        .map(|r| r.to_owned())
        .collect();
    let refused = rejects
        .iter()
        .map(|r| (r.index, r.reason.clone()))
        .collect();
    Ok(Processed { records, refused })
}
