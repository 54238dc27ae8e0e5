//! A persistent session's link to the journal: what it appended last (its connection waits for
//! that in `sync` mode), when it went offline, its pending will; how a session is rebuilt from
//! what the journal held and how it writes itself into a snapshot.

use super::state::{Inflight, InflightState, StoredSubscription};
use super::{Delivery, Session};
use crate::message::Message;
use crate::persist::record::Rec;
use crate::persist::{Journal, SnapshotOut};
use crate::protocol::{QoS, SubscriptionOptions};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct Durable {
    pub(crate) sid: u64,
    pub(crate) journal: Arc<Journal>,
    /// LSN after the last record this session appended.
    lsn: AtomicU64,
    /// When the client went away (Unix ms); 0 while online.
    offline_since: AtomicU64,
    /// A will waiting for its delay, and when it is due (Unix ms): for snapshots.
    will: Mutex<Option<(Arc<Message>, u64)>>,
}

impl Durable {
    pub(crate) fn new(sid: u64, journal: Arc<Journal>) -> Self {
        Self {
            sid,
            journal,
            lsn: AtomicU64::new(0),
            offline_since: AtomicU64::new(0),
            will: Mutex::new(None),
        }
    }

    /// Appends a record of this session (called under its lock, so the log keeps its order)
    /// that its client will rely on: in `sync` mode its connection writes nothing more until it
    /// is durable (a subscription before its SUBACK, a QoS 2 packet id before the PUBLISH or
    /// PUBREL that uses it).
    pub(crate) fn log(&self, rec: &Rec<'_>) -> u64 {
        let lsn = self.journal.append(rec);
        self.lsn.fetch_max(lsn, Ordering::Relaxed);
        lsn
    }

    /// Appends a record whose loss in a crash costs at most a QoS 1 duplicate or a DUP flag
    /// (a QoS 1 delivery sent, a delivery done): nothing waits for it, so a subscriber's
    /// window is not held to one fsync per round trip. A later [`Durable::log`] covers it.
    pub(crate) fn log_lazily(&self, rec: &Rec<'_>) -> u64 {
        self.journal.append(rec)
    }

    /// Appends records framed into `bytes` in one go; `relied_on` as for [`Durable::log`].
    pub(crate) fn log_encoded(&self, bytes: &[u8], relied_on: bool) {
        if bytes.is_empty() {
            return;
        }
        let lsn = self.journal.append_encoded(bytes);
        if relied_on {
            self.lsn.fetch_max(lsn, Ordering::Relaxed);
        }
    }

    pub(crate) fn went_offline(&self, at_ms: u64) {
        self.offline_since.store(at_ms.max(1), Ordering::Relaxed);
    }

    pub(crate) fn came_online(&self) {
        self.offline_since.store(0, Ordering::Relaxed);
    }
}

/// A session as the journal held it, ready to be rebuilt.
pub(crate) struct RestoredParts {
    pub(crate) expiry: u32,
    pub(crate) offline_since: u64,
    /// Filter, options, identifier, read-checked.
    pub(crate) subscriptions: Vec<(String, SubscriptionOptions, Option<u32>, bool)>,
    /// Deliveries waiting to be sent, in order.
    pub(crate) queue: Vec<Delivery>,
    /// Deliveries sent and not acknowledged: packet id, delivery, whether PUBREC came.
    pub(crate) inflight: Vec<(u16, Delivery, bool)>,
    pub(crate) incoming_qos2: Vec<u16>,
}

impl Session {
    /// A persistent session whose changes go to `durable`'s journal.
    pub(crate) fn new_durable(
        client_id: Arc<str>,
        owner_user: Option<Arc<str>>,
        expiry_interval: u32,
        durable: Durable,
    ) -> Self {
        let mut s = Session::new(client_id, owner_user, expiry_interval);
        s.durable = Some(Box::new(durable));
        s
    }

    /// A persistent session rebuilt from the journal after a restart. Its inflight messages
    /// go out again with DUP when its client reconnects.
    pub(crate) fn restored(
        client_id: Arc<str>,
        owner_user: Option<Arc<str>>,
        durable: Durable,
        parts: RestoredParts,
    ) -> Self {
        durable.went_offline(parts.offline_since);
        let s = Session::new_durable(client_id, owner_user, parts.expiry, durable);
        {
            let mut st = s.state.lock();
            for (filter, options, identifier, read_checked) in parts.subscriptions {
                st.subscriptions.insert(
                    filter,
                    StoredSubscription {
                        options,
                        identifier,
                        read_checked,
                    },
                );
            }
            st.queue.extend(parts.queue);
            let mut last_pid = 0;
            for (packet_id, delivery, released) in parts.inflight {
                last_pid = packet_id;
                let state = match (delivery.qos, released) {
                    (QoS::ExactlyOnce, true) => InflightState::AwaitingPubComp,
                    (QoS::ExactlyOnce, false) => InflightState::AwaitingPubRec,
                    _ => InflightState::AwaitingPubAck,
                };
                st.push_inflight(Inflight {
                    packet_id,
                    delivery,
                    state,
                });
            }
            st.continue_packet_ids_after(last_pid);
            st.incoming_qos2 = parts.incoming_qos2;
        }
        s
    }

    /// The LSN its connection must see durable before writing (0: nothing, or not durable).
    pub fn lsn(&self) -> u64 {
        self.durable
            .as_ref()
            .map_or(0, |d| d.lsn.load(Ordering::Relaxed))
    }

    pub(crate) fn durable(&self) -> Option<&Durable> {
        self.durable.as_deref()
    }

    /// Records a will waiting for its delay; returns the LSN of the record.
    pub(crate) fn store_will(&self, msg: &Arc<Message>, at_ms: u64) -> u64 {
        let Some(d) = self.durable() else { return 0 };
        let _st = self.state.lock();
        *d.will.lock() = Some((msg.clone(), at_ms));
        let sid = d.sid;
        let lsn = d
            .journal
            .append_about(msg, |mid| Rec::Will { sid, mid, at_ms });
        d.lsn.fetch_max(lsn, Ordering::Relaxed);
        lsn
    }

    /// The stored will was published or cancelled.
    pub(crate) fn clear_will(&self) {
        let Some(d) = self.durable() else { return };
        let _st = self.state.lock();
        clear_will_locked(d);
    }

    /// Writes the session into a snapshot: its records as of now, under its lock.
    pub(crate) fn snapshot(&self, out: &mut SnapshotOut<'_>) {
        let Some(d) = self.durable() else { return };
        let st = self.state.lock();
        if st.ended {
            return;
        }
        let sid = d.sid;
        out.rec(&Rec::Open {
            sid,
            client_id: &self.client_id,
            user: self.owner_user.as_deref(),
            expiry: st.expiry_interval,
        });
        let offline = d.offline_since.load(Ordering::Relaxed);
        if offline != 0 {
            out.rec(&Rec::Offline {
                sid,
                at_ms: offline,
                expiry: st.expiry_interval,
            });
        }
        for (filter, sub) in &st.subscriptions {
            out.rec(&Rec::Sub {
                sid,
                filter,
                options: sub.options,
                identifier: sub.identifier,
                read_checked: sub.read_checked,
            });
        }
        let entries = st
            .inflight
            .iter()
            .map(|f| (&f.delivery, Some(f)))
            .chain(st.queue.iter().map(|d| (d, None)));
        for (delivery, inflight) in entries {
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            let mid = out.message(&delivery.msg);
            out.rec(&Rec::Enqueue {
                sid,
                mid,
                qos: delivery.qos,
                retain: delivery.retain,
                sub_ids: &delivery.subscription_ids,
            });
            if let Some(f) = inflight {
                out.rec(&Rec::Sent {
                    sid,
                    mid,
                    pid: f.packet_id,
                });
                if f.state == InflightState::AwaitingPubComp {
                    out.rec(&Rec::Released { sid, mid });
                }
            }
        }
        for pid in &st.incoming_qos2 {
            out.rec(&Rec::Qos2In { sid, pid: *pid });
        }
        if let Some((msg, at_ms)) = d.will.lock().clone() {
            let mid = out.message(&msg);
            out.rec(&Rec::Will { sid, mid, at_ms });
        }
    }
}

pub(super) fn clear_will_locked(d: &Durable) {
    if d.will.lock().take().is_some() {
        d.log(&Rec::WillDone { sid: d.sid });
    }
}

/// The journal id of a delivery a durable session holds (QoS 1/2 only).
pub(super) fn stored_id(delivery: &Delivery) -> Option<u64> {
    let id = delivery.msg.store_id.get();
    (delivery.qos != QoS::AtMostOnce && id != 0).then_some(id)
}
