//! The `sluice` binary's own modules (not part of the library): what the
//! CLI prints and how it maps answers to exit codes.

pub mod admin;
