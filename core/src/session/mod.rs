//! Sessions: what survives a connection (subscriptions, unacknowledged QoS 1/2 messages, the
//! queue of messages waiting to go out) for as long as the Session Expiry Interval says.
//!
//! - this module: [`Session`], which owns its state machine — attach, detach and take-over by
//!   [`AttachId`], the subscriptions it holds, the bounded queue, the outbound batch
//!   ([`Session::fill`]), the PUBACK / PUBREC / PUBREL / PUBCOMP transitions and the incoming
//!   QoS 2 bookkeeping. Nothing outside touches its fields.
//! - `acks`: the acknowledgement transitions (PUBACK, PUBREC, PUBCOMP, the resend after a
//!   reconnect) and the incoming QoS 2 bookkeeping.
//! - [`state`]: the fields behind the session's lock and the inflight window.
//! - [`backpressure`]: the one policy for publishers facing a congested subscriber.
//! - [`store`]: [`SessionStore`], where sessions live between connections, and the in-memory
//!   store (with a journal: persistent sessions are durable).
//! - `inspect`: a snapshot of a session for operators, and the kick.
//! - `durable`: a persistent session's link to the journal (`crate::persist`): every change
//!   of its state is appended as a record under its lock; restored and snapshotted here.
//!
//! A session is shared between the router (which enqueues) and at most one connection (which
//! drains). The queue lives here, not in a channel, so the same bounded queue serves an online
//! and an offline session and a reconnect finds it intact.

mod acks;
mod backpressure;
mod durable;
mod inspect;
mod state;
mod store;

pub use backpressure::{Backpressure, WaitOutcome};
pub(crate) use durable::{Durable, RestoredParts};
pub use inspect::{SessionSnapshot, SubscriptionView};
pub use state::{Inflight, InflightState, StoredSubscription};
pub use store::{MemoryStore, Opened, SessionClaim, SessionOwnedByOther, SessionStore};

use crate::message::Message;
use crate::persist::record::{now_ms, Rec};
use crate::protocol::{QoS, SubscriptionOptions};
use parking_lot::Mutex;
use state::{SessionState, Stamp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
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

/// Identifies one attach of a connection to a session. Unique for the broker's lifetime and
/// increasing, so it says both who owns a session now and whether a session was resumed since
/// (wills and expiry timers compare it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachId(pub(crate) u64);

/// Where a connection stands with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Owner,
    /// Another connection attached, or the session ended.
    TakenOver,
    /// Marked slow under `slow_subscriber = "disconnect"`: the connection must close.
    Evicted,
    /// An operator kicked the connection (HTTP API): it must close; the session stays.
    Kicked,
}

/// Outcome of offering a delivery to a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The queue was full: the oldest QoS 0 message made room.
    DroppedOther,
    Refused,
    /// QoS 0 for an offline session is not stored (as in Mosquitto's default).
    Skipped,
}

/// Where a front end writes the deliveries [`Session::fill`] hands it.
pub trait Outlet {
    /// `bytes` (an estimate) are about to be written: one allocation instead of doubling.
    fn reserve(&mut self, _bytes: usize) {}
    /// Whether another message fits in this batch.
    fn has_room(&self) -> bool;
    /// Writes one delivery (`dup` on a resend). Returns false, having written nothing, when it
    /// is larger than the client accepts: the message is dropped.
    fn put(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Instant) -> bool;
    /// Writes a PUBREL for a QoS 2 message the client has acknowledged with PUBREC.
    fn put_release(&mut self, packet_id: u16);
}

/// How the client acknowledges what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// MQTT: QoS 1/2 deliveries wait in the inflight window for PUBACK / PUBCOMP.
    Mqtt { window: usize },
    /// The front end has no acknowledgements (`ws-json`): everything is handed over once.
    None,
}

/// What one [`Session::fill`] did, for metrics and events (told after the lock is released).
#[derive(Debug, Default)]
pub struct Batch {
    pub sent: u64,
    pub dropped: u64,
    /// Filled only when observed.
    pub delivered: Vec<Arc<Message>>,
    pub dropped_msgs: Vec<(Arc<Message>, &'static str)>,
}

/// Answer to an incoming QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// Not seen before: route it.
    New,
    /// A resend of one already routed: acknowledge again, never route twice.
    Duplicate,
    /// More unreleased QoS 2 messages than the client was allowed.
    TooMany,
}

/// Answer to a PUBREC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRecOutcome {
    /// Send PUBREL.
    Release,
    /// The receiver refused the message (error code): the exchange ends here.
    Ended,
    /// No such packet id waiting for PUBREC: PUBREL with 0x92.
    Unknown,
}

pub struct Session {
    pub client_id: Arc<str>,
    /// The user name that created the session (sessions are bound to it; see `SessionClaim`).
    owner_user: Option<Arc<str>>,
    state: Mutex<SessionState>,
    /// Wakes the attached connection: new messages, or it has been taken over.
    wake: Notify,
    /// Wakes publishers held back because this session's queue was congested.
    space: Notify,
    /// Set for a persistent session when the broker keeps a journal.
    durable: Option<Box<Durable>>,
}

impl Session {
    pub fn new(client_id: Arc<str>, owner_user: Option<Arc<str>>, expiry_interval: u32) -> Self {
        Self {
            client_id,
            owner_user,
            state: Mutex::new(SessionState::new(expiry_interval)),
            wake: Notify::new(),
            space: Notify::new(),
            durable: None,
        }
    }

    pub fn owner_user(&self) -> Option<&Arc<str>> {
        self.owner_user.as_ref()
    }

    pub fn is_connected(&self) -> bool {
        self.state.lock().attached.is_some()
    }

    /// Whether the connection of `id` still owns the session.
    pub fn is_attached(&self, id: AttachId) -> bool {
        self.state.lock().attached == Some(id)
    }

    /// Makes `id` the owner. A connection that owned it before is woken and, seeing it is no
    /// longer attached, closes (taken over). Returns false if the session has ended.
    pub(crate) fn attach(&self, id: AttachId, expiry_interval: u32) -> bool {
        let mut st = self.state.lock();
        if st.ended {
            return false;
        }
        let had_owner = st.attached.is_some();
        st.attached = Some(id);
        st.last_attach = id;
        st.expiry_interval = expiry_interval;
        // A new connection starts with a clean record: what made the last one slow was its.
        st.slow = false;
        st.evicted = false;
        st.kicked = false;
        st.congested_since = None;
        if let Some(d) = self.durable() {
            d.came_online();
            d.log(&Rec::Online {
                sid: d.sid,
                expiry: expiry_interval,
            });
            // Resumed: a will waiting for its delay is cancelled (spec 3.1.3.2.2).
            durable::clear_will_locked(d);
        }
        drop(st);
        if had_owner {
            self.wake.notify_one();
        }
        true
    }

    /// The owning connection `id` went away. Returns the expiry interval to honour, or `None`
    /// if `id` no longer owned the session. QoS 0 messages are not kept for offline sessions.
    pub(crate) fn detach(&self, id: AttachId) -> Option<u32> {
        let mut st = self.state.lock();
        if st.attached != Some(id) {
            return None;
        }
        st.attached = None;
        st.queue.retain(|d| d.qos != QoS::AtMostOnce);
        // Kept while offline: payloads that are slices of read buffers get their own copies
        // (one per message, however many deliveries share it).
        {
            let st = &mut *st;
            let mut copies: HashMap<*const Message, Arc<Message>> = HashMap::new();
            let inflight = st.inflight.iter_mut().map(|f| &mut f.delivery);
            for d in st.queue.iter_mut().chain(inflight) {
                if !d.msg.payload_is_own {
                    let copy = copies
                        .entry(Arc::as_ptr(&d.msg))
                        .or_insert_with(|| Arc::new(d.msg.with_own_payload()));
                    d.msg = copy.clone();
                }
            }
        }
        let expiry = st.expiry_interval;
        if let Some(d) = self.durable() {
            let at_ms = now_ms();
            d.went_offline(at_ms);
            d.log(&Rec::Offline {
                sid: d.sid,
                at_ms,
                expiry,
            });
        }
        drop(st);
        // Publishers held back by this session's queue need not wait for an offline client.
        self.space.notify_waiters();
        Some(expiry)
    }

    /// Still offline and not resumed since the attach `id` ended (expiry timers ask).
    pub(crate) fn idle_since(&self, id: AttachId) -> bool {
        let st = self.state.lock();
        st.attached.is_none() && st.last_attach == id && !st.ended
    }

    /// Another connection attached after `id` (a will with a delay is then cancelled).
    pub(crate) fn resumed_after(&self, id: AttachId) -> bool {
        let st = self.state.lock();
        st.last_attach != id && !st.ended
    }

    pub fn has_ended(&self) -> bool {
        self.state.lock().ended
    }

    pub fn expiry_interval(&self) -> u32 {
        self.state.lock().expiry_interval
    }

    pub(crate) fn set_expiry_interval(&self, expiry: u32) {
        self.state.lock().expiry_interval = expiry;
    }

    /// Discards the session (clean start, expiry): nothing may be added any more. Returns the
    /// filters it was subscribed to, for the router to forget.
    pub(crate) fn end(&self) -> Vec<String> {
        let mut st = self.state.lock();
        st.ended = true;
        let had_owner = st.attached.take().is_some();
        let filters = st.subscriptions.drain().map(|(f, _)| f).collect();
        st.queue.clear();
        st.inflight.clear();
        if let Some(d) = self.durable() {
            d.log(&Rec::End { sid: d.sid });
        }
        drop(st);
        if had_owner {
            self.wake.notify_one();
        }
        self.space.notify_waiters();
        filters
    }

    /// Wakes the attached connection (shutdown, take-over).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when the session has news for its connection.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Records a subscription. `None` if the session has ended, else whether it existed.
    pub(crate) fn add_subscription(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        read_checked: bool,
    ) -> Option<bool> {
        let mut st = self.state.lock();
        if st.ended {
            return None;
        }
        if let Some(d) = self.durable() {
            d.log(&Rec::Sub {
                sid: d.sid,
                filter,
                options,
                identifier,
                read_checked,
            });
        }
        let sub = StoredSubscription {
            options,
            identifier,
            read_checked,
        };
        Some(st.subscriptions.insert(filter.to_string(), sub).is_some())
    }

    /// Whether `filter` may be added without the session holding more than `max`
    /// subscriptions (replacing one it has is always possible).
    pub fn has_room_for(&self, filter: &str, max: usize) -> bool {
        let st = self.state.lock();
        st.subscriptions.len() < max || st.subscriptions.contains_key(filter)
    }

    pub(crate) fn remove_subscription(&self, filter: &str) -> bool {
        let mut st = self.state.lock();
        let existed = st.subscriptions.remove(filter).is_some();
        if let (true, Some(d)) = (existed, self.durable()) {
            d.log(&Rec::Unsub { sid: d.sid, filter });
        }
        existed
    }

    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    #[cfg(test)]
    pub(crate) fn first_queued(&self) -> Option<Arc<Message>> {
        self.state.lock().queue.front().map(|d| d.msg.clone())
    }

    /// Adds a delivery to the bounded queue and wakes the connection. The flag says the queue
    /// of this online session is past the high-water mark: the publisher should wait for it.
    /// An offline session keeps the message with a payload of its own: `stored_copy` holds the
    /// copy made for the first offline session of a publish, shared by the others. The last
    /// value is the LSN of the journal record (0: none), for the publisher's acknowledgement.
    pub(crate) fn enqueue(
        &self,
        mut d: Delivery,
        bp: &Backpressure,
        stored_copy: &mut Option<Arc<Message>>,
    ) -> (Enqueued, bool, u64) {
        let mut st = self.state.lock();
        if st.ended {
            return (Enqueued::Refused, false, 0);
        }
        let online = st.attached.is_some();
        if !online && d.qos == QoS::AtMostOnce {
            return (Enqueued::Skipped, false, 0);
        }
        if !online && !d.msg.payload_is_own {
            d.msg = stored_copy
                .get_or_insert_with(|| Arc::new(d.msg.with_own_payload()))
                .clone();
        }
        let mut outcome = Enqueued::Queued;
        if st.queue.len() >= bp.max_queued {
            match st.queue.iter().position(|q| q.qos == QoS::AtMostOnce) {
                Some(i) => {
                    st.queue.remove(i);
                    outcome = Enqueued::DroppedOther;
                }
                None => return (Enqueued::Refused, false, 0),
            }
        }
        let mut lsn = 0;
        if let Some(durable) = self.durable().filter(|_| d.qos != QoS::AtMostOnce) {
            lsn = durable.journal.append_about(&d.msg, |mid| Rec::Enqueue {
                sid: durable.sid,
                mid,
                qos: d.qos,
                retain: d.retain,
                sub_ids: &d.subscription_ids,
            });
            // The publisher's acknowledgement waits for it (`Routed::lsn`); this session's
            // client need not: what it is sent at QoS 2 waits for its own "sent" record.
        }
        st.queue.push_back(d);
        let congested = online && !st.slow && st.queue.len() >= bp.high_water(st.drain_rate);
        if congested && st.congested_since.is_none() {
            st.congested_since = Some(Stamp::at(Instant::now()));
        }
        drop(st);
        if online {
            self.wake.notify_one();
        }
        (outcome, congested, lsn)
    }

    /// Moves queued deliveries to `out` as far as the acknowledgement window and the outlet
    /// allow: expired messages and those larger than the client accepts are dropped, QoS 1/2
    /// deliveries get a packet id and wait in the inflight window. Publishers held back by this
    /// queue are released once it drains below the low-water mark. Nothing happens unless `id`
    /// still owns the session.
    pub fn fill(
        &self,
        id: AttachId,
        acks: Acks,
        bp: &Backpressure,
        observe: bool,
        out: &mut dyn Outlet,
    ) -> Batch {
        let mut batch = Batch::default();
        let mut st = self.state.lock();
        if st.attached != Some(id) {
            return batch;
        }
        let now = Instant::now();
        let low = bp.low_water(st.drain_rate);
        let was_above = st.queue.len() > low;
        let queued_before = st.queue.len();
        if st.queue.len() > 4 {
            let estimate = st
                .queue
                .front()
                .map_or(64, |d| d.msg.payload.len() + d.msg.topic.len() + 16);
            out.reserve(estimate * st.queue.len());
        }
        let durable = self.durable();
        // A durable session's QoS 1/2 delivery leaves the queue: gone (done) or in flight.
        // The batch's records go to the journal together, under one lock, at the end.
        let mut records = Vec::new();
        let mut relied_on = false;
        let mut log = |d: &Delivery, sent: Option<u16>| {
            if let (Some(dur), Some(mid)) = (durable, durable::stored_id(d)) {
                let sid = dur.sid;
                match sent {
                    Some(pid) => Rec::Sent { sid, mid, pid }.encode(&mut records),
                    None => Rec::Done { sid, mid }.encode(&mut records),
                }
                // QoS 2: the packet id must survive before the PUBLISH goes out, or a restart
                // would resend it under a new one (a second delivery). A lost QoS 1 record
                // costs at most a duplicate or a DUP flag: nothing waits for it.
                relied_on |= sent.is_some() && d.qos == QoS::ExactlyOnce;
            }
        };
        while out.has_room() {
            let Some(front) = st.queue.front() else { break };
            let tracked = front.qos != QoS::AtMostOnce && acks != Acks::None;
            if let Acks::Mqtt { window } = acks {
                if tracked && st.inflight.len() >= window {
                    break;
                }
            }
            let Some(d) = st.queue.pop_front() else { break };
            if d.msg.is_expired(now) {
                log(&d, None);
                batch.dropped += 1;
                if observe {
                    batch.dropped_msgs.push((d.msg, "expired"));
                }
                continue;
            }
            let packet_id = if tracked { st.allocate_packet_id() } else { 0 };
            if !out.put(&d, packet_id, false, now) {
                log(&d, None);
                batch.dropped += 1;
                if observe {
                    batch
                        .dropped_msgs
                        .push((d.msg, "larger than the client's maximum packet size"));
                }
                continue;
            }
            log(&d, tracked.then_some(packet_id));
            batch.sent += 1;
            if observe {
                batch.delivered.push(d.msg.clone());
            }
            if tracked {
                st.start_inflight(packet_id, d);
            }
        }
        if let Some(dur) = durable {
            dur.log_encoded(&records, relied_on);
        }
        if st.queue.len() < queued_before {
            let stamp = Stamp::at(now);
            st.last_drain = Some(stamp);
            let taken = queued_before - st.queue.len();
            st.count_drain(taken, stamp);
        }
        // The drain rate may have moved the mark: waiting publishers check against the new
        // one, so a queue below either has released them.
        let released = was_above && st.queue.len() <= low.max(bp.low_water(st.drain_rate));
        if released {
            st.slow = false;
            st.congested_since = None;
        }
        drop(st);
        if released {
            self.space.notify_waiters();
        }
        batch
    }

    /// Whether the connection of `id` may go on: one lock for the questions a woken
    /// connection asks.
    pub fn standing(&self, id: AttachId) -> Standing {
        let st = self.state.lock();
        if st.attached != Some(id) {
            Standing::TakenOver
        } else if st.evicted {
            Standing::Evicted
        } else if st.kicked {
            Standing::Kicked
        } else {
            Standing::Owner
        }
    }

    /// Whether [`Session::fill`] would find more to send right now.
    pub fn has_ready(&self, acks: Acks) -> bool {
        let st = self.state.lock();
        let Some(front) = st.queue.front() else {
            return false;
        };
        match acks {
            Acks::None => true,
            Acks::Mqtt { window } => front.qos == QoS::AtMostOnce || st.inflight.len() < window,
        }
    }
}
