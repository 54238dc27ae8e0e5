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
    /// How often each [`Limit`] refused something, indexed by `Limit as usize`.
    pub limit_hits: [AtomicU64; Limit::ALL.len()],
}

/// The limits that protect the broker from its clients, each counted when it bites
/// (`switchyard_limit_hits_total{limit="..."}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A retained message not stored: the store is full (`max_retained_*`) or it is too deep.
    Retained,
    /// A subscription past `max_subscriptions`.
    Subscriptions,
    /// A SUBSCRIBE with more filters than `max_filters_per_subscribe`.
    FiltersPerSubscribe,
    /// A socket closed at `connect_timeout_s`: no CONNECT, TLS handshake, WebSocket upgrade or
    /// first ws-json request in time.
    HandshakeTimeout,
    /// A client that read nothing we wrote for `write_timeout_s`.
    WriteTimeout,
    /// A subscriber marked slow: publishers stopped waiting for it.
    SlowSubscriber,
    /// A new session refused at `max_sessions`.
    Sessions,
    /// A connection refused at a listener's `max_connections`.
    ListenerConnections,
    /// A connection refused at `max_connections_per_ip`.
    IpConnections,
    /// A connection refused by a listener's `max_connection_rate`.
    ConnectionRate,
    /// A publish past the client's `max_publish_rate` or `max_publish_bytes_rate`.
    PublishRate,
    /// A connection refused by a ban (flapping or configured).
    Banned,
    /// A connection refused or a QoS 0 message shed by overload protection.
    Overload,
    /// An HTTP connection refused at `[http] max_connections`, or a request too large.
    Http,
}

impl Limit {
    pub const ALL: [Limit; 14] = [
        Limit::Retained,
        Limit::Subscriptions,
        Limit::FiltersPerSubscribe,
        Limit::HandshakeTimeout,
        Limit::WriteTimeout,
        Limit::SlowSubscriber,
        Limit::Sessions,
        Limit::ListenerConnections,
        Limit::IpConnections,
        Limit::ConnectionRate,
        Limit::PublishRate,
        Limit::Banned,
        Limit::Overload,
        Limit::Http,
    ];

    /// The `limit` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Retained => "retained",
            Limit::Subscriptions => "subscriptions",
            Limit::FiltersPerSubscribe => "filters_per_subscribe",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::WriteTimeout => "write_timeout",
            Limit::SlowSubscriber => "slow_subscriber",
            Limit::Sessions => "sessions",
            Limit::ListenerConnections => "listener_connections",
            Limit::IpConnections => "ip_connections",
            Limit::ConnectionRate => "connection_rate",
            Limit::PublishRate => "publish_rate",
            Limit::Banned => "banned",
            Limit::Overload => "overload",
            Limit::Http => "http",
        }
    }
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
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        Metrics::get(&self.limit_hits[limit as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::Limit;

    #[test]
    fn every_limit_has_its_own_slot() {
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "{l:?} is out of place in Limit::ALL");
        }
    }
}
