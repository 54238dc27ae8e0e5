//! What the engine shows operators: `/rules` JSON and Prometheus counters per rule and sink.

use super::{Rule, Shared};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::metrics::MetricsSource;

pub(super) struct Metrics(pub(super) Arc<Shared>);

impl Metrics {
    fn rule_json(r: &Rule) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = &r.def.trigger;
        let (kind, on) = match (t.filters.is_empty(), t.events.as_slice()) {
            (false, []) => ("messages", serde_json::json!(t.filters)),
            (true, [one]) => ("event", serde_json::json!(one)),
            _ => {
                let mut all = t.filters.clone();
                all.extend(t.events.iter().map(|e| format!("$events/{e}")));
                ("mixed", serde_json::json!(all))
            }
        };
        serde_json::json!({
            "name": r.def.name,
            "file": &*r.file,
            "line": r.def.line,
            "kind": kind,
            "from": on,
            "sinks": r.def.sinks,
            // "native": evaluated in Rust (see `native`), "rhai": by the interpreter.
            "when": r.def.when.as_ref().map(|_| if r.when_native.is_some() { "native" } else { "rhai" }),
            "matched": g(&r.stats.matched),
            "passed": g(&r.stats.passed),
            "failed": g(&r.stats.failed),
            "outputs": g(&r.stats.outputs),
            "print_dropped": r.stats.prints.dropped(),
            "key": r.key,
            "enabled": r.enabled,
            "last_error": r.stats.last_error.lock().as_ref().map(|(e, at)| serde_json::json!({"error": e, "at_ms": at})),
        })
    }
}

impl MetricsSource for Metrics {
    fn status(&self) -> Option<serde_json::Value> {
        let s = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let set = s.rules.load();
        let sinks: Vec<serde_json::Value> = s
            .sinks
            .values()
            .map(|k| {
                let c = &k.counters;
                let health = c.health.lock().clone();
                serde_json::json!({
                    "name": k.name, "kind": k.kind,
                    "matched": g(&c.matched), "sent": g(&c.sent), "failed": g(&c.failed),
                    "retried": g(&c.retried), "dropped": g(&c.dropped), "buffered": k.buffered(),
                    "dead_lettered": g(&c.dead_lettered), "in_flight": g(&c.in_flight),
                    "buffer": if k.buffer_on_disk() { "disk" } else { "memory" },
                    "state": health.state(switchyard_core::clock::now_ms()),
                    "last_error": health.last_error, "last_error_ms": health.last_error_ms,
                    "last_success_ms": health.last_success_ms,
                    "failing_since_ms": health.failing_since_ms,
                })
            })
            .collect();
        Some(serde_json::json!({
            "dir": s.config.dir,
            "rules": set.rules.iter().map(Self::rule_json).collect::<Vec<_>>(),
            "last_reload_errors": *s.last_errors.lock(),
            "reloads": g(&s.counters.reloads),
            "reload_errors": g(&s.counters.reload_errors),
            "queue_dropped": g(&s.counters.queue_dropped),
            "backpressure_waits": g(&s.counters.backpressure_waits),
            "sinks": sinks,
        }))
    }

    fn render(&self, out: &mut String) {
        let s = &self.0;
        let c = &s.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP switchyard_rules_queue_dropped_total Messages and events not evaluated: rule queue full.\n# TYPE switchyard_rules_queue_dropped_total counter\nswitchyard_rules_queue_dropped_total {}",
            g(&c.queue_dropped)
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_rules_backpressure_waits_total Publishers held because the rule queue was full.\n# TYPE switchyard_rules_backpressure_waits_total counter\nswitchyard_rules_backpressure_waits_total {}",
            g(&c.backpressure_waits)
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_rules_queue_depth Messages and events waiting for a rule worker.\n# TYPE switchyard_rules_queue_depth gauge\nswitchyard_rules_queue_depth {}",
            s.queue.len()
        );
        let _ = writeln!(
            out,
            "# TYPE switchyard_rules_reloads_total counter\nswitchyard_rules_reloads_total {}\n# TYPE switchyard_rules_reload_errors_total counter\nswitchyard_rules_reload_errors_total {}",
            g(&c.reloads),
            g(&c.reload_errors)
        );
        let _ = writeln!(out, "# HELP switchyard_rule_evaluations_total Rule evaluations by outcome.\n# TYPE switchyard_rule_evaluations_total counter");
        let set = s.rules.load();
        for r in &set.rules {
            let st = &r.stats;
            for (what, v) in [
                ("matched", g(&st.matched)),
                ("passed", g(&st.passed)),
                ("failed", g(&st.failed)),
                ("outputs", g(&st.outputs)),
            ] {
                let _ = writeln!(
                    out,
                    "switchyard_rule_evaluations_total{{rule=\"{}\",outcome=\"{what}\"}} {v}",
                    r.def.name.replace('"', "'")
                );
            }
        }
        let _ = writeln!(out, "# HELP switchyard_sink_sent_total Records per sink by outcome; switchyard_sink_buffered is held now.\n# TYPE switchyard_sink_sent_total counter");
        for sink in s.sinks.values() {
            sink.render_metrics(out);
        }
    }
}
