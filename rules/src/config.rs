//! The rule engine's tables of the broker's TOML: `[rules]` and `[sink.NAME]`.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Folder of `*.rhai` files, watched; empty = no rules.
    pub dir: Option<PathBuf>,
    /// Threads that evaluate rules (off the routing path).
    pub workers: usize,
    /// Messages and events waiting for the workers (shared out between them); what happens when
    /// a worker's share is full is `overflow`'s choice.
    pub queue_size: usize,
    /// A full queue: `drop` the message (counted) or hold its publisher (`backpressure`) until
    /// there is room, for at most `backpressure_timeout_ms` (then it is dropped and counted).
    pub overflow: Overflow,
    pub backpressure_timeout_ms: u64,
    /// Wall-clock budget of one rule evaluation (`when` or `select`).
    pub timeout_ms: u64,
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// File changes are collected for this long before a reload.
    pub debounce_ms: u64,
    /// How long a graceful shutdown waits for sinks to deliver what they hold.
    pub flush_timeout_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            workers: 2,
            queue_size: 65_536,
            overflow: Overflow::Drop,
            backpressure_timeout_ms: 10_000,
            timeout_ms: 50,
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            debounce_ms: 200,
            flush_timeout_ms: 5_000,
        }
    }
}

/// What a full rule queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    Drop,
    Backpressure,
}

/// One `[sink.NAME]` table: settings every sink has, plus the kind's own (checked by the kind,
/// see `sink::KINDS`).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub common: SinkCommon,
    /// The `kind` key: `webhook`, `kafka`, `sqlite`, `postgres`, `mqtt`.
    pub kind: &'static str,
    /// The kind's own keys, as written.
    pub options: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkCommon {
    /// Records held while the destination is slow or down; beyond it records are dropped and
    /// counted.
    pub buffer_size: usize,
    /// `memory`, or `disk` to keep undelivered records across restarts.
    pub buffer: BufferKind,
    /// Where `buffer = "disk"` keeps its queue (default `data/sinks`; relative to the config
    /// file's folder).
    pub buffer_dir: PathBuf,
    /// The most the buffer may hold, in bytes (on disk; in memory, the records' estimated
    /// size). Default: 1 GiB on disk, 256 MiB in memory.
    pub buffer_max_bytes: Option<u64>,
    /// `buffer = "disk"`, past `buffer_max_bytes`: `refuse` new records or `drop-oldest`
    /// (both counted as dropped).
    pub buffer_overflow: crate::sink::Overflow,
    pub batch_size: usize,
    /// How long a partial batch waits for more records.
    pub linger_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// 0 = retry transient failures until delivered (or the buffer overflows).
    pub max_retries: u32,
    /// A record that keeps failing for this long is given up (0 = never). Only records the
    /// sink is trying to deliver age: the rest of the buffer waits behind them.
    pub record_ttl_s: u64,
    /// Where records the sink gives up on go (refused, out of retries, past their TTL).
    pub dead_letter: Option<DeadLetterConfig>,
}

/// `dead_letter = { file = "dead/alerts.jsonl" }`, `{ sink = "NAME" }` or `{ topic = "dead/x" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// JSON lines appended to a file (relative to the config file's folder).
    File(PathBuf),
    /// Offered to another sink (which must not have a sink dead letter of its own).
    Sink(String),
    /// Published on this broker's topic at QoS 1.
    Topic(String),
}

impl Default for SinkCommon {
    fn default() -> Self {
        Self {
            buffer_size: 100_000,
            buffer: BufferKind::Memory,
            buffer_dir: PathBuf::from("data/sinks"),
            buffer_max_bytes: None,
            buffer_overflow: crate::sink::Overflow::Refuse,
            batch_size: 500,
            linger_ms: 5,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            max_retries: 0,
            record_ttl_s: 3_600,
            dead_letter: None,
        }
    }
}

impl SinkCommon {
    pub fn max_bytes(&self) -> u64 {
        self.buffer_max_bytes.unwrap_or(match self.buffer {
            BufferKind::Disk => 1 << 30,
            BufferKind::Memory => 256 << 20,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    Memory,
    Disk,
}

const COMMON_KEYS: &[&str] = &[
    "buffer_size",
    "buffer",
    "buffer_dir",
    "buffer_max_bytes",
    "buffer_overflow",
    "batch_size",
    "linger_ms",
    "retry_initial_ms",
    "retry_max_ms",
    "max_retries",
    "record_ttl_s",
    "dead_letter",
];

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Common keys and kind keys live in one table; split them so each half can still
        // reject unknown keys.
        let mut table = Map::<String, Value>::deserialize(d)?;
        let mut common = Map::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(*key) {
                common.insert((*key).to_string(), v);
            }
        }
        let common = SinkCommon::deserialize(Value::Object(common)).map_err(D::Error::custom)?;
        let kind = match table.remove("kind") {
            Some(Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "kind: expected a string, got {other}"
                )))
            }
            None => return Err(D::Error::custom("kind: missing")),
        };
        let Some(def) = crate::sink::kind(&kind) else {
            let known: Vec<&str> = crate::sink::KINDS.iter().map(|k| k.name).collect();
            return Err(D::Error::custom(format!(
                "kind: unknown sink kind {kind:?} (expected one of {})",
                known.join(", ")
            )));
        };
        let options = Value::Object(table);
        (def.check)(&options).map_err(D::Error::custom)?;
        let config = SinkConfig {
            common,
            kind: def.name,
            options,
        };
        config.validate().map_err(D::Error::custom)?;
        Ok(config)
    }
}

impl SinkConfig {
    fn validate(&self) -> Result<(), String> {
        let c = &self.common;
        if c.buffer_size == 0 || c.batch_size == 0 {
            return Err("buffer_size and batch_size must be at least 1".into());
        }
        if c.retry_initial_ms == 0 || c.retry_max_ms < c.retry_initial_ms {
            return Err("retry_initial_ms must be > 0 and <= retry_max_ms".into());
        }
        if let Some(DeadLetterConfig::Topic(t)) = &c.dead_letter {
            if !switchyard_core::topic::publishable(t, usize::MAX) {
                return Err(format!("dead_letter: not a topic name: {t:?}"));
            }
        }
        Ok(())
    }
}

/// Every `dead_letter = { sink = ... }` names another configured sink, and that one does not
/// hand its own refusals to a sink in turn (no loops, no chains).
pub fn check_dead_letters(sinks: &BTreeMap<String, SinkConfig>) -> Result<(), String> {
    for (name, s) in sinks {
        let Some(DeadLetterConfig::Sink(target)) = &s.common.dead_letter else {
            continue;
        };
        let Some(t) = sinks.get(target).filter(|_| target != name) else {
            return Err(format!(
                "sink {name}: dead_letter names {target:?}, which is not another configured sink"
            ));
        };
        if matches!(t.common.dead_letter, Some(DeadLetterConfig::Sink(_))) {
            return Err(format!(
                "sink {name}: its dead-letter sink {target:?} sends its own refusals to a sink; use a file or a topic there"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_tables_split_common_and_kind_keys() {
        let v =
            serde_json::json!({"kind": "webhook", "url": "http://127.0.0.1:1/x", "batch_size": 7});
        let s: SinkConfig = serde_json::from_value(v).unwrap();
        assert_eq!(s.common.batch_size, 7);
        assert_eq!(s.kind, "webhook");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let v = serde_json::json!({"kind": "webhook", "url": "http://x", "urll": 1});
        let e = serde_json::from_value::<SinkConfig>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("urll"), "{e}");
        let v = serde_json::json!({"kind": "carrier-pigeon"});
        let e = serde_json::from_value::<SinkConfig>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("carrier-pigeon"), "{e}");
        let v = serde_json::json!({"kind": "mqtt", "topic": "a", "qos": 3});
        let e = serde_json::from_value::<SinkConfig>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qos"), "{e}");
    }
}
