//! A broker with the rule engine, started in-process the way the binary starts it, and the
//! helpers rule tests share.

use super::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use switchyard_rules::sink::SinkCounters;
use switchyard_rules::{RuleEngine, RulesConfig, SinkConfig};

pub struct Env {
    pub server: switchyard::Running,
    pub rules: Arc<RuleEngine>,
    pub dir: tempfile::TempDir,
}

pub fn sink(v: serde_json::Value) -> SinkConfig {
    serde_json::from_value(v).expect("sink config")
}

pub fn rules_config(dir: &Path) -> RulesConfig {
    RulesConfig {
        dir: Some(dir.to_path_buf()),
        debounce_ms: 100,
        timeout_ms: 100,
        flush_timeout_ms: 2_000,
        ..RulesConfig::default()
    }
}

pub async fn env_with(files: &[(&str, &str)], sinks: &[(&str, serde_json::Value)]) -> Env {
    env_configured(files, sinks, |_| {}).await
}

pub async fn env_configured(
    files: &[(&str, &str)],
    sinks: &[(&str, serde_json::Value)],
    tune: impl FnOnce(&mut RulesConfig),
) -> Env {
    // Rule errors are logged: show them with the failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let sinks: BTreeMap<String, SinkConfig> = sinks
        .iter()
        .map(|(n, v)| (n.to_string(), sink(v.clone())))
        .collect();
    let mut config = rules_config(dir.path());
    tune(&mut config);
    // The binary's own start-up path: rules loaded and watched before the listeners open.
    let server = switchyard::Switchyard::core(test_config())
        .rules(config, sinks)
        .start()
        .await
        .expect("broker with rules starts");
    let rules = server.rules.clone();
    Env { server, rules, dir }
}

pub fn counter(rules: &RuleEngine, sink: &str, what: &str) -> u64 {
    let s = rules.sink(sink).expect("sink exists");
    let c = &s.counters;
    SinkCounters::get(match what {
        "matched" => &c.matched,
        "sent" => &c.sent,
        "failed" => &c.failed,
        "retried" => &c.retried,
        _ => &c.dropped,
    })
}

pub async fn publisher(env: &Env, id: &str) -> v4::Client {
    v4::connect(v4::options(tcp_addr(&env.server), id)).await
}

pub async fn publish(c: &v4::Client, topic: &str, payload: impl Into<Vec<u8>>) {
    c.client
        .publish(topic, v4::QoS::AtLeastOnce, false, payload.into())
        .await
        .unwrap();
}

/// The sinks of an example folder's `switchyard.toml`, with every SQLite sink writing to
/// `db` (created from the folder's `schema.sql`) instead of the example's path.
pub fn example_sinks(folder: &Path, db: &Path) -> BTreeMap<String, SinkConfig> {
    let text = std::fs::read_to_string(folder.join("switchyard.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let schema = std::fs::read_to_string(folder.join("schema.sql")).unwrap();
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(&schema)
        .unwrap();
    let mut sinks = BTreeMap::new();
    for (name, v) in table["sink"].as_table().unwrap() {
        let mut v: serde_json::Value = serde_json::to_value(v).unwrap();
        if v["kind"] == "sqlite" {
            v["path"] = serde_json::json!(db);
        }
        sinks.insert(name.clone(), sink(v));
    }
    sinks
}
