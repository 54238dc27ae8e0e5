//! `rules-bench`: what one rule evaluation costs per message, through the same engine, API and
//! sandbox settings the broker uses (no broker, no sink: evaluation only).
//!
//! ```text
//! rules-bench [--messages 200000]
//! ```
//! Reports µs per message for: `when` filters evaluated through Rhai and natively; `when` + `select` building a map; the
//! default output (no `select`); and the topic index with 1,000 rules.

use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::message::Message;
use switchyard_core::protocol::QoS;
use switchyard_core::topic::{TopicTree, TreeEntry};
use switchyard_rules::native::{MessageView, Predicate};
use switchyard_rules::script::{self, Msg};
use switchyard_rules::RulesConfig;

#[path = "shared.rs"]
mod shared;
use shared::{arg, client};

/// `native`: evaluate `when` the way the broker does, natively when its shape allows;
/// otherwise always through Rhai.
fn bench_rule(label: &str, text: &str, messages: usize, native: bool) -> Result<()> {
    let engine = script::build_engine(&RulesConfig::default());
    let sinks = Arc::new(HashMap::from([("out".to_string(), "mqtt")]));
    let (ast, defs) = script::load_file(&engine, "bench.rhai", text, sinks, Duration::from_secs(1))
        .map_err(|e| anyhow!(e))?;
    let def = defs.first().ok_or_else(|| anyhow!("no rule"))?;
    let predicate = match &def.when {
        Some(w) if native => Predicate::compile(&ast, w),
        _ => None,
    };
    let client = Arc::new(client("sensor-17", "plant"));
    let payload = br#"{"temp": 31.5, "humidity": 40, "site": "north"}"#;
    let start = Instant::now();
    let mut outputs = 0usize;
    for i in 0..messages {
        let msg = Message::new(
            format!("sensors/d{}/temp", i % 100),
            &payload[..],
            QoS::AtMostOnce,
            false,
        );
        let msg = Arc::new(msg);
        let answered = predicate
            .as_ref()
            .and_then(|p| p.eval(&MessageView::new(&client, &msg)));
        let m = Msg::new(client.clone(), msg);
        let arg = rhai::Dynamic::from(m.clone());
        let passed = match (&def.when, answered) {
            (_, Some(passed)) => passed,
            (Some(w), None) => w
                .call::<bool>(&engine, &ast, (arg.clone(),))
                .map_err(|e| anyhow!("{e}"))?,
            (None, None) => true,
        };
        if !passed {
            continue;
        }
        let out = match &def.select {
            Some(s) => {
                let d: rhai::Dynamic = s.call(&engine, &ast, (arg,)).map_err(|e| anyhow!("{e}"))?;
                rhai::serde::from_dynamic::<serde_json::Value>(&d).map_err(|e| anyhow!("{e}"))?
            }
            None => m.to_output(),
        };
        outputs += usize::from(!out.is_null());
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / messages as f64;
    let mode = if predicate.is_some() {
        "native"
    } else {
        "rhai"
    };
    println!("RESULT bench=rule label={label} when={mode} messages={messages} outputs={outputs} us_per_msg={per:.2} msgs_per_s_one_core={:.0}", 1e6 / per);
    Ok(())
}

struct Entry(Box<str>);
impl TreeEntry for Entry {
    fn key(&self) -> &str {
        &self.0
    }
}

fn bench_index(messages: usize) {
    let mut tree = TopicTree::default();
    for i in 0..1000 {
        tree.insert(
            &format!("site{i}/+/telemetry"),
            None,
            Entry(format!("r{i}").into()),
        );
    }
    let topics: Vec<String> = (0..1000)
        .map(|i| format!("site{}/dev{}/telemetry", i * 7 % 1000, i))
        .collect();
    let start = Instant::now();
    let mut hits = 0usize;
    for i in 0..messages {
        tree.for_each_match(&topics[i % topics.len()], |_| true, |_, _| hits += 1);
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / messages as f64;
    println!("RESULT bench=index rules=1000 messages={messages} hits={hits} ns_per_msg={ns:.0}");
}

fn main() -> Result<()> {
    let n = arg("--messages", 200_000);
    for native in [false, true] {
        for (label, when) in [
            ("when-false", "|m| false"),
            ("when-size", "|m| m.size < 100000"),
            ("when-json", "|m| m.json.temp > 30.0"),
        ] {
            let text = format!(r#"rule("r").from(["sensors/#"]).when({when}).to(mqtt("out"));"#);
            bench_rule(label, &text, n, native)?;
        }
    }
    bench_rule(
        "when-select",
        r#"rule("r").from(["sensors/#"]).when(|m| m.json.temp > 30.0)
            .select(|m| #{ device: m.level(1), temp: m.json.temp, ts: m.ts }).to(mqtt("out"));"#,
        n,
        true,
    )?;
    bench_rule(
        "default-output",
        r#"rule("r").from(["sensors/#"]).to(mqtt("out"));"#,
        n,
        true,
    )?;
    bench_index(n * 5);
    Ok(())
}
