//! The fields behind a session's lock. Only [`super::Session`] reads or writes them.

use super::{AttachId, Delivery};
use crate::protocol::SubscriptionOptions;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Instant;

/// A moment in 4 bytes: milliseconds since the process first asked, wrapping after 49 days.
/// Sessions keep two of these instead of two 16-byte `Instant`s (idle memory is a budget), and
/// only compare moments less than a minute apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(NonZeroU32);

impl Stamp {
    pub(crate) fn at(now: Instant) -> Self {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        let ms = now.saturating_duration_since(epoch).as_millis() as u32;
        Stamp(NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN))
    }

    /// Milliseconds from `self` to `later` (0 if `later` is not later).
    pub(crate) fn ms_until(self, later: Stamp) -> u32 {
        let d = later.0.get().wrapping_sub(self.0.get());
        if d < 1 << 31 {
            d
        } else {
            0
        }
    }

    /// The later of two stamps.
    pub(crate) fn latest(self, other: Stamp) -> Stamp {
        if self.ms_until(other) > 0 {
            other
        } else {
            self
        }
    }
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
    /// Granted with `AclDecision::Filter` (kept for the journal: restored with a read check).
    pub read_checked: bool,
}

#[derive(Debug)]
pub(super) struct SessionState {
    /// Keyed by the filter exactly as subscribed (`$share/...` included).
    pub(super) subscriptions: HashMap<String, StoredSubscription>,
    pub(super) queue: VecDeque<Delivery>,
    /// Outgoing QoS 1/2 messages not yet acknowledged, in send order. Only
    /// [`SessionState::push_inflight`] adds to it, which keeps `ids_ascending` true.
    pub(super) inflight: VecDeque<Inflight>,
    /// Every packet id in `inflight` comes after the one before it (cyclically), so an id can
    /// be looked up by binary search and one past the newest is free without a scan. Always
    /// true for ids this session allocated; false only after a restore out of order.
    ids_ascending: bool,
    /// Incoming QoS 2 packet ids between PUBREC and PUBREL (exactly-once across reconnects).
    pub(super) incoming_qos2: Vec<u16>,
    next_packet_id: u16,
    /// The connection attached now, if any.
    pub(super) attached: Option<AttachId>,
    /// The latest attach, kept after it ends: timers started for it compare.
    pub(super) last_attach: AttachId,
    pub(super) expiry_interval: u32,
    /// The session was discarded (clean start, expiry): nothing may be added to it any more.
    pub(super) ended: bool,
    /// The client did not drain its queue within the backpressure timeout: publishers stop
    /// waiting for it (its overflow is dropped and counted) until it catches up.
    pub(super) slow: bool,
    /// `slow_subscriber = "disconnect"`: the connection must close (its session stays).
    pub(super) evicted: bool,
    /// An operator kicked the attached connection: it must close.
    pub(super) kicked: bool,
    /// When the queue last passed the high-water mark ([`Stamp`]); cleared once it drains
    /// below the low-water mark. The clock is read only at that crossing, never per message.
    pub(super) congested_since: Option<Stamp>,
    /// When the connection last took anything from the queue (set by `fill`, which reads the
    /// clock anyway): a congested subscriber that stops draining is slow.
    pub(super) last_drain: Option<Stamp>,
    /// Messages taken a millisecond, smoothed over windows of at least 10 ms (see
    /// `Session::fill`); sets how many an online subscriber may have queued.
    pub(super) drain_rate: u32,
    /// The current window: when it started and what was taken since.
    pub(super) rate_window: Option<Stamp>,
    pub(super) rate_taken: u32,
}

impl SessionState {
    pub(super) fn new(expiry_interval: u32) -> Self {
        Self {
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            ids_ascending: true,
            incoming_qos2: Vec::new(),
            next_packet_id: 1,
            attached: None,
            last_attach: AttachId(0),
            expiry_interval,
            ended: false,
            slow: false,
            evicted: false,
            kicked: false,
            congested_since: None,
            last_drain: None,
            drain_rate: 0,
            rate_window: None,
            rate_taken: 0,
        }
    }

    /// Counts `taken` messages towards the drain rate.
    pub(super) fn count_drain(&mut self, taken: usize, now: Stamp) {
        let start = *self.rate_window.get_or_insert(now);
        self.rate_taken = self.rate_taken.saturating_add(taken as u32);
        let ms = start.ms_until(now);
        if ms >= 10 {
            let rate = self.rate_taken / ms;
            self.drain_rate = (self.drain_rate.saturating_mul(3) / 4).saturating_add(rate / 4);
            self.rate_window = Some(now);
            self.rate_taken = 0;
        }
    }

    /// The next packet id not in use by an inflight message. Ids are handed out in order, so
    /// the next one is normally past the newest in flight and free without a lookup.
    pub(super) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if self.inflight_index(id).is_none() {
                return id;
            }
        }
    }

    /// After a restart: packet ids continue after the last one in flight.
    pub(super) fn continue_packet_ids_after(&mut self, last: u16) {
        self.next_packet_id = last.wrapping_add(1).max(1);
    }

    pub(super) fn start_inflight(&mut self, packet_id: u16, delivery: Delivery) {
        let state = if delivery.qos == crate::protocol::QoS::AtLeastOnce {
            InflightState::AwaitingPubAck
        } else {
            InflightState::AwaitingPubRec
        };
        self.push_inflight(Inflight {
            packet_id,
            delivery,
            state,
        });
    }

    /// Adds the newest inflight message (sent now, or restored in its send order).
    pub(super) fn push_inflight(&mut self, f: Inflight) {
        match (self.inflight.front(), self.inflight.back()) {
            (Some(first), Some(last)) => {
                let span = id_distance(first.packet_id, last.packet_id);
                let to_new = id_distance(first.packet_id, f.packet_id);
                self.ids_ascending &= to_new > span;
            }
            _ => self.ids_ascending = true,
        }
        self.inflight.push_back(f);
    }

    /// Where `packet_id` sits in the inflight window, if it is there.
    fn inflight_index(&self, packet_id: u16) -> Option<usize> {
        let first = self.inflight.front()?.packet_id;
        if !self.ids_ascending {
            return self.inflight.iter().position(|f| f.packet_id == packet_id);
        }
        let last = self.inflight.back()?.packet_id;
        let to_id = id_distance(first, packet_id);
        if to_id > id_distance(first, last) {
            return None;
        }
        // Acknowledgements mostly come in send order: the oldest is the usual answer.
        if to_id == 0 {
            return Some(0);
        }
        self.inflight
            .binary_search_by_key(&to_id, |f| id_distance(first, f.packet_id))
            .ok()
    }

    pub(super) fn take_inflight(
        &mut self,
        packet_id: u16,
        state: InflightState,
    ) -> Option<Inflight> {
        let i = self.inflight_index(packet_id)?;
        if self.inflight[i].state != state {
            return None;
        }
        self.inflight.remove(i)
    }

    /// Moves one inflight message from `from` to `to`; returns its delivery, or `None` if
    /// none was in `from`.
    pub(super) fn advance_inflight(
        &mut self,
        packet_id: u16,
        from: InflightState,
        to: InflightState,
    ) -> Option<&Delivery> {
        let i = self.inflight_index(packet_id)?;
        let f = &mut self.inflight[i];
        if f.state != from {
            return None;
        }
        f.state = to;
        Some(&f.delivery)
    }
}

/// How many ids `b` comes after `a` in the packet-id cycle 1, 2, …, 65535, 1, …
fn id_distance(a: u16, b: u16) -> u32 {
    (u32::from(b) + 65535 - u32::from(a)) % 65535
}

#[cfg(test)]
mod tests {
    use super::{Inflight, InflightState, SessionState, Stamp};
    use crate::message::Message;
    use crate::protocol::QoS;
    use crate::session::Delivery;
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn delivery() -> Delivery {
        Delivery {
            msg: Arc::new(Message::new(
                "t",
                bytes::Bytes::new(),
                QoS::AtLeastOnce,
                false,
            )),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    fn send(st: &mut SessionState) -> u16 {
        let id = st.allocate_packet_id();
        st.start_inflight(id, delivery());
        id
    }

    fn ids(st: &SessionState) -> Vec<u16> {
        st.inflight.iter().map(|f| f.packet_id).collect()
    }

    #[test]
    fn packet_ids_skip_those_in_flight_across_the_wrap() {
        let mut st = SessionState::new(0);
        st.continue_packet_ids_after(65530);
        let sent: Vec<u16> = (0..10).map(|_| send(&mut st)).collect();
        assert_eq!(sent, [65531, 65532, 65533, 65534, 65535, 1, 2, 3, 4, 5]);
        // Out-of-order acknowledgements, on both sides of the wrap.
        for id in [65533, 2, 65531, 5] {
            let f = st.take_inflight(id, InflightState::AwaitingPubAck);
            assert_eq!(f.map(|f| f.packet_id), Some(id));
        }
        assert!(
            st.take_inflight(65533, InflightState::AwaitingPubAck)
                .is_none(),
            "taken"
        );
        assert!(
            st.take_inflight(3, InflightState::AwaitingPubRec).is_none(),
            "wrong state"
        );
        assert!(
            st.take_inflight(6, InflightState::AwaitingPubAck).is_none(),
            "never sent"
        );
        assert_eq!(ids(&st), [65532, 65534, 65535, 1, 3, 4]);
        // Every id but one in use: the next allocation finds the only free one.
        let mut full = SessionState::new(0);
        for _ in 0..65535 {
            send(&mut full);
        }
        assert!(full
            .take_inflight(40_000, InflightState::AwaitingPubAck)
            .is_some());
        assert_eq!(full.allocate_packet_id(), 40_000);
    }

    #[test]
    fn inflight_restored_out_of_order_is_still_found() {
        let mut st = SessionState::new(0);
        for id in [7, 3, 9] {
            st.push_inflight(Inflight {
                packet_id: id,
                delivery: delivery(),
                state: InflightState::AwaitingPubAck,
            });
        }
        st.continue_packet_ids_after(6);
        assert_eq!(st.allocate_packet_id(), 8, "7 is in flight");
        assert!(st.take_inflight(3, InflightState::AwaitingPubAck).is_some());
        assert!(st
            .advance_inflight(
                9,
                InflightState::AwaitingPubAck,
                InflightState::AwaitingPubComp
            )
            .is_some());
        st.inflight.clear();
        st.continue_packet_ids_after(0);
        assert_eq!([send(&mut st), send(&mut st)], [1, 2]);
        assert!(st.take_inflight(2, InflightState::AwaitingPubAck).is_some());
    }

    #[test]
    fn stamps_measure_short_spans_even_across_a_wrap() {
        let _ = Stamp::at(Instant::now()); // sets the epoch
        let t0 = Instant::now() + Duration::from_millis(5);
        let a = Stamp::at(t0);
        let b = Stamp::at(t0 + Duration::from_millis(250));
        assert_eq!(a.ms_until(b), 250);
        assert_eq!(b.ms_until(a), 0, "not later");
        assert_eq!(a.latest(b), b);
        let before_wrap = Stamp(NonZeroU32::new(u32::MAX - 10).unwrap());
        let after_wrap = Stamp(NonZeroU32::new(20).unwrap());
        assert_eq!(before_wrap.ms_until(after_wrap), 31);
        assert_eq!(before_wrap.latest(after_wrap), after_wrap);
    }
}
