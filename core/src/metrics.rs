//! Broker-wide counters, published under `$SYS/broker/...`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_connected: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages that could not be queued for a subscriber (queue full, too large, expired).
    pub messages_dropped: AtomicU64,
    /// Publishes refused by authorization or dropped by a message hook.
    pub publishes_denied: AtomicU64,
    /// Limits that refused something: retained messages not stored (store full, too deep),
    /// subscriptions past `max_subscriptions`, sockets closed at the connect timeout (no
    /// CONNECT, TLS handshake, WebSocket upgrade or first ws-json request in time).
    pub retained_refused: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub handshake_timeouts: AtomicU64,
}

/// Counters and state owned by another crate (plugin host, rule engine), rendered into
/// `/metrics` and, as JSON, at `GET /NAME` of the HTTP endpoint (NAME as registered).
pub trait MetricsSource: Send + Sync {
    /// Appends Prometheus text-format lines (with HELP and TYPE) to `out`.
    fn render(&self, out: &mut String);
    /// A JSON document for operators: what is loaded, errors of the last reload, counters.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
    /// Conditions an operator must know about (each a sentence); none when all is well.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
