//! Session state: what survives a connection (subscriptions, unacknowledged QoS 1/2 messages,
//! the queue of messages waiting to go out) for as long as the Session Expiry Interval says.
//!
//! A session is shared between the router (which enqueues) and at most one connection (which
//! drains). The queue lives here, not in a channel, so the same bounded queue serves an online
//! and an offline session and a reconnect finds it intact.

use crate::message::Message;
use crate::protocol::{QoS, SubscriptionOptions};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

/// One message on its way to this session's client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS it is delivered at: min(message QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag on the wire (set for retained messages sent on subscribe, or when the
    /// subscription has Retain As Published).
    pub retain: bool,
    /// Subscription identifiers of every matching subscription; empty (no allocation) usually.
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

#[derive(Debug)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: InflightState,
}

#[derive(Debug, Clone)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

#[derive(Debug)]
pub struct SessionState {
    /// Keyed by the filter exactly as subscribed (`$share/...` included).
    pub subscriptions: HashMap<String, StoredSubscription>,
    pub queue: VecDeque<Delivery>,
    /// Outgoing QoS 1/2 messages not yet acknowledged, in send order.
    pub inflight: VecDeque<Inflight>,
    /// Incoming QoS 2 packet ids between PUBREC and PUBREL (exactly-once across reconnects).
    pub incoming_qos2: Vec<u16>,
    pub next_packet_id: u16,
    /// Generation of the connection attached to this session; 0 when none.
    pub owner: u64,
    /// Bumped on every attach: timers started for an earlier connection compare it.
    pub epoch: u64,
    pub expiry_interval: u32,
    /// The session was discarded (clean start, expiry): nothing may be added to it any more.
    pub ended: bool,
    /// The client did not drain its queue within the backpressure timeout: publishers stop
    /// waiting for it (its overflow is dropped and counted) until it catches up.
    pub slow: bool,
}

pub struct Session {
    pub client_id: Arc<str>,
    pub(crate) state: Mutex<SessionState>,
    /// Wakes the attached connection: new messages, or it has been taken over.
    pub(crate) wake: Notify,
    /// Wakes publishers held back because this session's queue was congested.
    pub(crate) space: Notify,
}

/// Queue length at which publishers to an online session start waiting for it (backpressure).
pub(crate) fn high_water(max_queued: usize) -> usize {
    (max_queued / 2).max(1)
}

/// Queue length below which waiting publishers are released.
pub(crate) fn low_water(max_queued: usize) -> usize {
    max_queued / 4
}

/// Outcome of offering a delivery to a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The queue was full: the oldest QoS 0 message made room (or this one was refused).
    DroppedOther,
    Refused,
    /// QoS 0 for an offline session is not stored (as in Mosquitto's default).
    Skipped,
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>, expiry_interval: u32) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState {
                subscriptions: HashMap::new(),
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                incoming_qos2: Vec::new(),
                next_packet_id: 1,
                owner: 0,
                epoch: 0,
                expiry_interval,
                ended: false,
                slow: false,
            }),
            wake: Notify::new(),
            space: Notify::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state.lock().owner != 0
    }

    /// Adds a delivery to the bounded queue and wakes the connection. The flag says the queue
    /// of this online session is past its high-water mark: the publisher should wait for it.
    pub(crate) fn enqueue(&self, d: Delivery, max_queued: usize) -> (Enqueued, bool) {
        let mut st = self.state.lock();
        if st.ended {
            return (Enqueued::Refused, false);
        }
        if st.owner == 0 && d.qos == QoS::AtMostOnce {
            return (Enqueued::Skipped, false);
        }
        let mut outcome = Enqueued::Queued;
        if st.queue.len() >= max_queued {
            match st.queue.iter().position(|q| q.qos == QoS::AtMostOnce) {
                Some(i) => {
                    st.queue.remove(i);
                    outcome = Enqueued::DroppedOther;
                }
                None => return (Enqueued::Refused, false),
            }
        }
        st.queue.push_back(d);
        let online = st.owner != 0;
        let congested = online && !st.slow && st.queue.len() >= high_water(max_queued);
        drop(st);
        if online {
            self.wake.notify_one();
        }
        (outcome, congested)
    }
}

impl SessionState {
    /// The next packet id not in use by an inflight message.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    pub fn take_inflight(&mut self, packet_id: u16, state: InflightState) -> Option<Inflight> {
        let i = self
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)?;
        self.inflight.remove(i)
    }
}
