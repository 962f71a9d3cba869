//! The `oprun` binary's library half: the config file (`oprun.toml`) it
//! composes from each crate's sections, which the integration tests load
//! the same way the binary does.

pub mod config;
pub mod metrics;
