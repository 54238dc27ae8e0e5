//! `$SYS/broker/...` statistics, published as retained messages every `sys_interval_s`.

use crate::broker::Broker;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = concat!("switchyard ", env!("CARGO_PKG_VERSION"));

/// Publishes the statistics once.
pub fn publish_stats(broker: &Arc<Broker>) {
    let m = &broker.metrics;
    let stats: [(&str, String); 11] = [
        ("$SYS/broker/version", VERSION.to_string()),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", broker.started.elapsed().as_secs()),
        ),
        (
            "$SYS/broker/clients/connected",
            Metrics::get(&m.clients_connected).to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            broker.session_count().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            Metrics::get(&m.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            Metrics::get(&m.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/messages/dropped",
            Metrics::get(&m.messages_dropped).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            Metrics::get(&m.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            Metrics::get(&m.bytes_sent).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            broker.subscription_count().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained_count().to_string(),
        ),
    ];
    for (topic, value) in stats {
        broker.publish_internal(topic, value.into_bytes(), true);
    }
}

/// Runs until shutdown. An interval of 0 disables `$SYS`.
pub async fn run(broker: Arc<Broker>) {
    let secs = broker.config.sys_interval_s;
    if secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tick.tick() => publish_stats(&broker),
        }
    }
}
