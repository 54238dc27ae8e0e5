//! The retained store: what a retained publish leaves behind for later subscribers, within
//! the configured count and bytes, with expiry.

use super::Broker;
use crate::message::Message;
use crate::metrics::Limit;
use crate::persist::record::Rec;
use crate::protocol::{RetainHandling, SubscriptionOptions};
use crate::session::{Delivery, Session};
use crate::topic;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

impl Broker {
    /// Stores (or with an empty payload, clears) the retained message of its topic. Returns
    /// the LSN of its journal record (0: none).
    pub(super) fn store_retained(&self, msg: &Arc<Message>) -> u64 {
        // Every retained message passes here, whatever made it (a client, a will, a plugin's
        // patch, a rule's sink): none deeper than the configured limit enters the tree.
        if topic::level_count(&msg.topic) > self.config.max_topic_levels {
            self.metrics.limit_hit(Limit::Retained);
            tracing::warn!(
                topic_levels = topic::level_count(&msg.topic),
                max = self.config.max_topic_levels,
                "retained message not stored: too many topic levels"
            );
            return 0;
        }
        // The broker's own `$SYS` values are made afresh after a restart.
        let journal = self
            .journal
            .as_ref()
            .filter(|_| !msg.topic.starts_with('$'));
        if msg.payload.is_empty() {
            let mut retained = self.retained.write();
            if let Some(old) = retained.remove(&msg.topic) {
                self.retained_bytes
                    .fetch_sub(retained_size(&old), Ordering::Relaxed);
                if let Some(j) = journal {
                    return j.append(&Rec::Unretain { topic: &msg.topic });
                }
            }
            return 0;
        }
        // A payload is a slice of the read buffer it arrived in (64 KiB to 1 MiB): kept for
        // good, a 10-byte retained payload would pin all of it. The copy is made outside the
        // lock, and only on this path.
        let stored = Arc::new(msg.with_own_payload());
        let size = retained_size(&stored);
        let mut retained = self.retained.write();
        // Bytes change only under the write lock, so this read is exact.
        let bytes = self.retained_bytes.load(Ordering::Relaxed);
        let old = retained.get(&msg.topic).map(|m| retained_size(m));
        let count = retained.len() + usize::from(old.is_none());
        let bytes_after = bytes - old.unwrap_or(0) + size;
        if count > self.config.max_retained_messages || bytes_after > self.config.max_retained_bytes
        {
            drop(retained);
            self.metrics.limit_hit(Limit::Retained);
            if self.retained_full_log.admit("").is_some() {
                tracing::warn!(
                    retained = count - 1,
                    bytes,
                    "retained store full (max_retained_messages, max_retained_bytes): new retained topics are routed but not retained"
                );
            }
            return 0;
        }
        let mut lsn = 0;
        if let Some(j) = journal {
            // Under the write lock: the journal keeps the order of retains on one topic.
            lsn = j.append_about(&stored, |mid| Rec::Retain {
                topic: &msg.topic,
                mid,
            });
            // Deliveries of this publish to durable sessions refer to the same body.
            msg.store_id.set(stored.store_id.get());
        }
        retained.insert(&msg.topic, stored);
        self.retained_bytes.store(bytes_after, Ordering::Relaxed);
        lsn
    }

    /// Retained messages matching `filter` that have not expired; expired ones are removed.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut found = Vec::new();
        self.retained.read().matching(filter, &mut found);
        if found.iter().any(|m| m.is_expired(now)) {
            let mut retained = self.retained.write();
            for m in found.iter().filter(|m| m.is_expired(now)) {
                // Only if a newer message has not replaced it meanwhile.
                if retained
                    .get(&m.topic)
                    .is_some_and(|cur| Arc::ptr_eq(cur, m))
                {
                    retained.remove(&m.topic);
                    self.retained_bytes
                        .fetch_sub(retained_size(m), Ordering::Relaxed);
                }
            }
            found.retain(|m| !m.is_expired(now));
        }
        found
    }

    /// The retained messages a new subscription should get, per its Retain Handling.
    pub fn retained_for(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        existed: bool,
    ) -> Vec<Arc<Message>> {
        let send = match options.retain_handling {
            RetainHandling::SendOnSubscribe => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        // Shared subscriptions never get retained messages on subscribe.
        if !send || topic::parse_shared(filter).is_some() {
            return Vec::new();
        }
        self.retained_matching(filter)
    }

    /// Queues retained messages for a subscription.
    pub fn enqueue_retained(
        &self,
        session: &Arc<Session>,
        msgs: Vec<Arc<Message>>,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) {
        for msg in msgs {
            let qos = msg.qos.min(options.qos);
            let _ = session.enqueue(
                Delivery {
                    msg,
                    qos,
                    retain: true,
                    subscription_ids: identifier.into_iter().collect(),
                },
                &self.backpressure,
                &mut None,
            );
        }
    }
}

/// What a retained message costs the store: its topic and payload.
pub(super) fn retained_size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;
    use crate::protocol::QoS;

    #[test]
    fn payloads_queued_for_offline_sessions_do_not_pin_read_buffers() {
        let broker = Broker::new(MqttConfig::default());
        let read_buffer = bytes::Bytes::from(vec![9u8; 64 * 1024]);
        let in_buffer = |p: &bytes::Bytes| read_buffer.as_ptr_range().contains(&p.as_ptr());
        // Two offline sessions share one copy; an online one keeps the slice (it is sent soon).
        let offline: Vec<_> = (0..2)
            .map(|i| Arc::new(Session::new(format!("off-{i}").into(), None, 600)))
            .collect();
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        for s in &offline {
            broker.subscribe(s, "q/#", options, None, None);
        }
        let mut msg = Message::new("q/t", read_buffer.slice(10..20), QoS::AtLeastOnce, false);
        msg.payload_is_own = false;
        let (routed, _) = broker.route(&Arc::new(msg));
        assert_eq!(routed.queued, 2);
        let mut seen = Vec::new();
        for s in &offline {
            let m = s.first_queued().expect("queued");
            assert!(!in_buffer(&m.payload), "still a slice of the read buffer");
            seen.push(Arc::as_ptr(&m));
        }
        assert_eq!(seen[0], seen[1], "one copy per publish, not per session");
    }

    #[test]
    fn a_retained_payload_does_not_pin_the_buffer_it_arrived_in() {
        let broker = Broker::new(MqttConfig::default());
        let read_buffer = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let payload = read_buffer.slice(100..110);
        let msg = Arc::new(Message::new(
            "r/t",
            payload,
            crate::protocol::QoS::AtMostOnce,
            true,
        ));
        broker.store_retained(&msg);
        let stored = broker.retained_matching("r/t");
        assert_eq!(&stored[0].payload[..], &[7u8; 10]);
        let range = read_buffer.as_ptr_range();
        assert!(
            !range.contains(&stored[0].payload.as_ptr()),
            "the retained copy still points into the read buffer"
        );
    }
}
