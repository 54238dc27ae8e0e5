//! Switchyard as a library: the configuration file and the composition root that the binary
//! and the end-to-end tests share.
//!
//! - [`config`]: the whole TOML file, split into the core's, the plugins' and the rules' tables.
//! - [`builder`]: [`Switchyard::builder`] loads hooks, plugins and rules, then listens.
//! - [`api`]: the HTTP endpoint: `/health`, `/metrics`, the JSON API and the dashboard.

pub mod api;
pub mod builder;
pub mod config;

pub use builder::{check, Builder, Checked, Running, StartError, Switchyard};
pub use config::{Config, ConfigError};
