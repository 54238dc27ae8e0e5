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
    /// Instances that may exist at once (idle and busy); a call that finds none waits, within
    /// its deadline, for one to come back. At most [`MAX_INSTANCES`].
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// Consecutive failed calls that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe call; doubled per failed probe.
    #[serde(default = "default_breaker_backoff_ms")]
    pub breaker_backoff_ms: u64,
    /// While the file is missing (removed, or not loadable at start), refuse every client and
    /// operation instead of falling back to the listener's defaults.
    #[serde(default)]
    pub required: bool,
    /// Log lines a second the plugin may write, and the length each is cut to.
    #[serde(default = "default_log_per_s")]
    pub log_per_s: u32,
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: usize,
    /// The key-value store's quota: entries, and bytes of keys and values together.
    #[serde(default = "default_kv_max_entries")]
    pub kv_max_entries: usize,
    #[serde(default = "default_kv_max_bytes")]
    pub kv_max_bytes: usize,
    /// Hosts `http-fetch` may reach (`host`, or `host:port`); none by default.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default = "default_http_timeout_ms")]
    pub http_timeout_ms: u64,
    /// The longest answer body `http-fetch` accepts.
    #[serde(default = "default_http_max_bytes")]
    pub http_max_bytes: usize,
}

/// The most instances one plugin may have; the engine's pool holds 256 for all plugins.
pub const MAX_INSTANCES: usize = 64;

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
            max_instances: default_max_instances(),
            breaker_failures: default_breaker_failures(),
            breaker_backoff_ms: default_breaker_backoff_ms(),
            required: false,
            log_per_s: default_log_per_s(),
            log_max_bytes: default_log_max_bytes(),
            kv_max_entries: default_kv_max_entries(),
            kv_max_bytes: default_kv_max_bytes(),
            allowed_hosts: Vec::new(),
            http_timeout_ms: default_http_timeout_ms(),
            http_max_bytes: default_http_max_bytes(),
        }
    }

    /// Settings no plugin can run with, found before anything is compiled.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |message: String| LoadError::Settings {
            path: self.path.clone(),
            message,
        };
        if !(1..=MAX_INSTANCES).contains(&self.max_instances) {
            return Err(invalid(format!(
                "max_instances must be 1..={MAX_INSTANCES}, not {}",
                self.max_instances
            )));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms must be at least 1".into()));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("breaker_failures must be at least 1".into()));
        }
        Ok(())
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
fn default_max_instances() -> usize {
    16
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_backoff_ms() -> u64 {
    2000
}
fn default_log_per_s() -> u32 {
    50
}
fn default_log_max_bytes() -> usize {
    2048
}
fn default_kv_max_entries() -> usize {
    1024
}
fn default_kv_max_bytes() -> usize {
    4 << 20
}
fn default_http_timeout_ms() -> u64 {
    1000
}
fn default_http_max_bytes() -> usize {
    1 << 20
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
    #[error("plugin {path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error("plugin {path} is configured twice (also as {other})")]
    Duplicate { path: PathBuf, other: PathBuf },
}
