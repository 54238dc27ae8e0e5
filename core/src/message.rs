//! The application message as the router carries it: shared by every subscriber it goes to.

use crate::protocol::{LastWill, Props, Publish, QoS};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publish properties that travel end to end (never topic alias or subscription ids).
    pub properties: Props,
    /// When Message Expiry Interval runs out, measured from receipt.
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local; `None` for the broker's own messages.
    pub publisher: Option<Arc<str>>,
    pub received_at: SystemTime,
    /// The payload may be a slice of a connection's read buffer (64 KiB to 1 MiB): kept for
    /// long (retained, queued for an offline session) a small payload would pin all of it.
    /// False until [`Message::with_own_payload`] made a copy.
    pub payload_is_own: bool,
    /// Its id in the persistence journal once a durable session or the retained store holds
    /// it (0: not stored): stored once, however many sessions queue it.
    pub(crate) store_id: StoreId,
}

/// A message's journal id, set once by the first durable holder. A clone starts without one:
/// whoever clones a message may change it (a rule, a plugin), and the journal would then hold
/// the old body under the id. [`Message::with_own_payload`] keeps it (same body).
#[derive(Debug, Default)]
pub(crate) struct StoreId(AtomicU64);

impl StoreId {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Sets the id unless another holder set one first; returns the id in force.
    pub(crate) fn set(&self, id: u64) -> u64 {
        match self
            .0
            .compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => id,
            Err(existing) => existing,
        }
    }
}

impl Clone for StoreId {
    fn clone(&self) -> Self {
        StoreId::default()
    }
}

impl Message {
    pub fn new(
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: Props::default(),
            expires_at: None,
            publisher: None,
            received_at: SystemTime::now(),
            // Made by the broker, a rule or a plugin from a payload of their own.
            payload_is_own: true,
            store_id: StoreId::default(),
        }
    }

    /// The same message with a payload of its own allocation, to be stored for long.
    pub fn with_own_payload(&self) -> Self {
        Self {
            payload: Bytes::copy_from_slice(&self.payload),
            payload_is_own: true,
            store_id: StoreId(AtomicU64::new(self.store_id.get())),
            ..self.clone()
        }
    }

    /// A client's PUBLISH as it was read at `received_at`.
    pub fn from_publish(p: Publish, publisher: Arc<str>, received_at: SystemTime) -> Self {
        let mut properties = p.properties;
        if let Some(props) = properties.get_mut() {
            props.topic_alias = None;
            props.subscription_identifiers.clear();
        }
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            expires_at: expiry_deadline(&properties),
            properties,
            publisher: Some(publisher),
            received_at,
            payload_is_own: false,
            store_id: StoreId::default(),
        }
    }

    pub fn from_will(w: &LastWill, publisher: Arc<str>) -> Self {
        let mut properties = w.properties.clone();
        if let Some(props) = properties.get_mut() {
            props.will_delay_interval = None;
        }
        Self {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            expires_at: expiry_deadline(&properties),
            properties,
            publisher: Some(publisher),
            received_at: SystemTime::now(),
            payload_is_own: false,
            store_id: StoreId::default(),
        }
    }

    /// Seconds of expiry left (rounded up), `Some(0)` once expired, `None` if it never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

fn expiry_deadline(p: &Props) -> Option<Instant> {
    p.message_expiry_interval
        .map(|s| Instant::now() + std::time::Duration::from_secs(u64::from(s)))
}
