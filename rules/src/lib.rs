//! Switchyard's rule engine: Rhai rule files pick messages and client events, filter and
//! reshape them, and forward them to sinks (webhook, Kafka, SQLite, PostgreSQL, MQTT). Rules
//! run on worker threads fed by a bounded queue, never on the routing path.
//!
//! - [`config`]: the `[rules]` table and `[sink.NAME]` tables (common keys; each kind checks
//!   its own).
//! - [`script`]: the Rhai side: the rule builder API, sources (topics and `$events/...`), limits.
//! - `message`: the message type rule functions see and EMQX's message fields.
//! - `helpers`: the functions rules call (time, encodings, hashing, UUIDs, bits, compression).
//! - [`native`]: simple `when` filters compiled to Rust, run on the routing thread.
//! - `engine`: the running engine (hook, events, reload, workers, status, and the HTTP API's
//!   admin: rule files, enabling, testing).
//! - `queue`: the bounded queue between routing and the workers.
//! - `print`: the per-rule rate and size limit of `print` and `debug`.
//! - [`sink`]: sink kinds (one table, `sink::KINDS`) and the driver they share (buffer,
//!   batches, retries, counters) with its buffer: memory, or the write-ahead disk queue.
//! - [`tls`]: TLS for the sinks' own connections (PostgreSQL, the MQTT bridge).

pub mod config;
mod engine;
mod helpers;
mod message;
pub mod native;
mod print;
mod queue;
pub mod script;
pub mod sink;
pub mod tls;

pub use config::{RulesConfig, SinkConfig};
pub use engine::admin::{AdminError, Sample, TestOutcome};
pub use engine::{EngineCounters, RuleEngine, RuleStats, RulesError};

/// reqwest is built without a default TLS provider; ring is the one the broker uses.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
