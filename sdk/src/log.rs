//! Logging into the host's tracing.
//!
//! Each line lands in the host's log tagged with the connector and instance
//! that wrote it. Use the macros (`sluice_sdk::info!("opened {}", path)`), or
//! [`log_with`] for key/value fields.

pub use crate::__private::host::Level;

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    log_with(level, message, &[]);
}

/// Writes one line at `level` with key/value fields.
pub fn log_with(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        crate::__private::host::log(level, message, &fields);
    }
    // Outside a component (a plugin's native unit tests) there is no host.
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (level, message, fields);
    }
}

/// Logs at trace level, `format!`-style.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Trace, &format!($($arg)*)) };
}

/// Logs at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &format!($($arg)*)) };
}

/// Logs at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &format!($($arg)*)) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &format!($($arg)*)) };
}

/// Logs at error level, `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &format!($($arg)*)) };
}
