//! What the broker reports over HTTP (DESIGN: port 18083): the `/health` document, the
//! Prometheus text of `/metrics`, and the same counters as JSON for the API. The HTTP server
//! itself, with the API and the dashboard, is the composition root's (`src/api`).

use crate::broker::Broker;
use crate::metrics::{Limit, Metrics};
use std::fmt::Write as _;

/// `GET /health`: `ok`, or `degraded` with what is wrong. Degraded still answers 200: the
/// broker serves, but an operator must look.
pub fn health(broker: &Broker) -> serde_json::Value {
    let problems = broker.problems();
    serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "uptime_s": broker.started.elapsed().as_secs(),
        "clients_connected": Metrics::get(&broker.metrics.clients_connected),
        "problems": problems,
    })
}

/// The core's counters by name, as `/metrics` shows them (without the `switchyard_` prefix
/// and `_total` suffix): what the API's metrics JSON and its history are made of.
pub fn counters(broker: &Broker) -> Vec<(&'static str, u64)> {
    let m = &broker.metrics;
    vec![
        ("clients_connected", Metrics::get(&m.clients_connected)),
        ("connections", Metrics::get(&m.connections_total)),
        ("sessions", broker.session_count() as u64),
        ("subscriptions", broker.subscription_count() as u64),
        ("retained_messages", broker.retained_count() as u64),
        ("messages_received", Metrics::get(&m.messages_received)),
        ("messages_sent", Metrics::get(&m.messages_sent)),
        ("messages_dropped", Metrics::get(&m.messages_dropped)),
        ("publishes_denied", Metrics::get(&m.publishes_denied)),
        ("bytes_received", Metrics::get(&m.bytes_received)),
        ("bytes_sent", Metrics::get(&m.bytes_sent)),
        ("uptime_seconds", broker.started.elapsed().as_secs()),
    ]
}

/// The broker's counters in the Prometheus text exposition format.
pub fn prometheus(broker: &Broker) -> String {
    let m = &broker.metrics;
    let rows: [(&str, &str, &str, u64); 12] = [
        (
            "switchyard_clients_connected",
            "gauge",
            "Clients connected now.",
            Metrics::get(&m.clients_connected),
        ),
        (
            "switchyard_connections_total",
            "counter",
            "Connections accepted since start.",
            Metrics::get(&m.connections_total),
        ),
        (
            "switchyard_sessions",
            "gauge",
            "Sessions, online and offline.",
            broker.session_count() as u64,
        ),
        (
            "switchyard_subscriptions",
            "gauge",
            "Subscriptions.",
            broker.subscription_count() as u64,
        ),
        (
            "switchyard_retained_messages",
            "gauge",
            "Retained messages.",
            broker.retained_count() as u64,
        ),
        (
            "switchyard_messages_received_total",
            "counter",
            "PUBLISH packets received.",
            Metrics::get(&m.messages_received),
        ),
        (
            "switchyard_messages_sent_total",
            "counter",
            "PUBLISH packets sent.",
            Metrics::get(&m.messages_sent),
        ),
        (
            "switchyard_messages_dropped_total",
            "counter",
            "Messages not delivered: queue full, expired or too large.",
            Metrics::get(&m.messages_dropped),
        ),
        (
            "switchyard_publishes_denied_total",
            "counter",
            "Publishes refused by authorization or dropped by a hook.",
            Metrics::get(&m.publishes_denied),
        ),
        (
            "switchyard_bytes_received_total",
            "counter",
            "Bytes received from clients.",
            Metrics::get(&m.bytes_received),
        ),
        (
            "switchyard_bytes_sent_total",
            "counter",
            "Bytes sent to clients.",
            Metrics::get(&m.bytes_sent),
        ),
        (
            "switchyard_uptime_seconds",
            "gauge",
            "Seconds since start.",
            broker.started.elapsed().as_secs(),
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_limit_hits_total Things a limit refused or cut off (see README, Limits).\n# TYPE switchyard_limit_hits_total counter"
    );
    for limit in Limit::ALL {
        let _ = writeln!(
            out,
            "switchyard_limit_hits_total{{limit=\"{}\"}} {}",
            limit.as_str(),
            m.limit_hits(limit)
        );
    }
    broker.render_metrics_sources(&mut out);
    out
}
