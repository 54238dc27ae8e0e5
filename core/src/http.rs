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

/// One of the core's series: its name (without `switchyard_`, and without `_total` for a
/// counter), whether it is a counter, its help text and its value now.
pub struct Series {
    pub name: &'static str,
    pub counter: bool,
    pub help: &'static str,
    pub value: u64,
}

/// The core's series, in `/metrics` order: what Prometheus, the API's metrics JSON and its
/// history are all made of.
pub fn series(broker: &Broker) -> [Series; 12] {
    let m = &broker.metrics;
    let row = |name, counter, help, value| Series {
        name,
        counter,
        help,
        value,
    };
    [
        row(
            "clients_connected",
            false,
            "Clients connected now.",
            Metrics::get(&m.clients_connected),
        ),
        row(
            "connections",
            true,
            "Connections accepted since start.",
            Metrics::get(&m.connections_total),
        ),
        row(
            "sessions",
            false,
            "Sessions, online and offline.",
            broker.session_count() as u64,
        ),
        row(
            "subscriptions",
            false,
            "Subscriptions.",
            broker.subscription_count() as u64,
        ),
        row(
            "retained_messages",
            false,
            "Retained messages.",
            broker.retained_count() as u64,
        ),
        row(
            "messages_received",
            true,
            "PUBLISH packets received.",
            Metrics::get(&m.messages_received),
        ),
        row(
            "messages_sent",
            true,
            "PUBLISH packets sent.",
            Metrics::get(&m.messages_sent),
        ),
        row(
            "messages_dropped",
            true,
            "Messages not delivered: queue full, expired or too large.",
            Metrics::get(&m.messages_dropped),
        ),
        row(
            "publishes_denied",
            true,
            "Publishes refused by authorization or dropped by a hook.",
            Metrics::get(&m.publishes_denied),
        ),
        row(
            "bytes_received",
            true,
            "Bytes received from clients.",
            Metrics::get(&m.bytes_received),
        ),
        row(
            "bytes_sent",
            true,
            "Bytes sent to clients.",
            Metrics::get(&m.bytes_sent),
        ),
        row(
            "uptime_seconds",
            false,
            "Seconds since start.",
            broker.started.elapsed().as_secs(),
        ),
    ]
}

/// The broker's counters in the Prometheus text exposition format.
pub fn prometheus(broker: &Broker) -> String {
    let m = &broker.metrics;
    let mut out = String::with_capacity(2048);
    for Series {
        name,
        counter,
        help,
        value,
    } in series(broker)
    {
        let (kind, suffix) = if counter {
            ("counter", "_total")
        } else {
            ("gauge", "")
        };
        let _ = writeln!(
            out,
            "# HELP switchyard_{name}{suffix} {help}\n# TYPE switchyard_{name}{suffix} {kind}\nswitchyard_{name}{suffix} {value}"
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
