//! The `[[plugin]]` table and the errors of loading a plugin.

use serde::Deserialize;
use std::path::PathBuf;

/// What a failed call (trap, timeout, memory exhaustion) means for authenticate/authorize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: refuse the client or the operation.
    #[default]
    Deny,
    Allow,
    /// Let the next hook decide.
    Ignore,
}

/// A `[[plugin]]` table of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    pub path: PathBuf,
    /// Place in the hook chain; lower runs first. Built-in password file and ACL are at 1000.
    #[serde(default)]
    pub priority: i32,
    /// Handed to the plugin's `init` as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default)]
    pub on_error: OnError,
    /// Warm instances kept for concurrent calls.
    #[serde(default = "default_instances")]
    pub instances: usize,
    /// Remember each client's authorize answers for this long (0: ask the plugin every time).
    #[serde(default)]
    pub authorize_cache_ms: u64,
}

impl PluginSettings {
    /// Defaults for a plugin found in `plugins_dir` without a `[[plugin]]` entry.
    pub fn for_path(path: PathBuf) -> Self {
        Self {
            path,
            priority: 0,
            config: empty_object(),
            timeout_ms: default_timeout_ms(),
            memory_mb: default_memory_mb(),
            on_error: OnError::default(),
            instances: default_instances(),
            authorize_cache_ms: 0,
        }
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_memory_mb() -> u64 {
    16
}
fn default_instances() -> usize {
    4
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {path}: not a valid component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("plugin {path}: cannot link: {message}")]
    Link { path: PathBuf, message: String },
    #[error("plugin {path}: init failed: {message}")]
    Init { path: PathBuf, message: String },
}
