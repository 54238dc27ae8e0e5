//! Switchyard as a library: the configuration file and the composition root that the binary
//! and the end-to-end tests share.
//!
//! - [`config`]: the whole TOML file, split into the core's, the plugins' and the rules' tables.
//! - [`builder`]: [`Switchyard::builder`] loads hooks, plugins and rules, then listens.

pub mod builder;
pub mod config;

pub use builder::{check, Builder, Checked, Running, StartError, Switchyard};
pub use config::{Config, ConfigError};
