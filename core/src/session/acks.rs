//! The acknowledgement transitions of a session: PUBACK, PUBREC and PUBCOMP for what it sent
//! (each recorded in the journal of a durable session), the resend after a reconnect, and the
//! incoming QoS 2 packet ids between PUBREC and PUBREL.

use super::state::InflightState;
use super::{durable, Delivery, IncomingQos2, Outlet, PubRecOutcome, Session};
use crate::message::Message;
use crate::persist::record::Rec;
use std::sync::Arc;
use std::time::Instant;

impl Session {
    /// After a reconnect, every unacknowledged message goes out again (DUP set), and PUBREL for
    /// those the client already acknowledged with PUBREC.
    pub fn resend_inflight(&self, out: &mut dyn Outlet) {
        let st = self.state.lock();
        let now = Instant::now();
        for f in &st.inflight {
            match f.state {
                InflightState::AwaitingPubComp => out.put_release(f.packet_id),
                _ => {
                    out.put(&f.delivery, f.packet_id, true, now);
                }
            }
        }
    }

    /// PUBACK: each QoS 1 delivery is done. A run of PUBACKs read together takes one lock (a
    /// subscriber's session lock is the one its publishers contend for). Returns the messages
    /// acknowledged; unknown packet ids are ignored.
    pub fn on_pubacks(&self, packet_ids: &[u16]) -> smallvec::SmallVec<[Arc<Message>; 32]> {
        let mut done = smallvec::SmallVec::new();
        let mut st = self.state.lock();
        for &id in packet_ids {
            if let Some(f) = st.take_inflight(id, InflightState::AwaitingPubAck) {
                self.log_done(&f.delivery);
                done.push(f.delivery.msg);
            }
        }
        done
    }

    /// A durable session's delivery is finished (acknowledged or refused by the client).
    fn log_done(&self, delivery: &Delivery) {
        if let (Some(d), Some(mid)) = (self.durable(), durable::stored_id(delivery)) {
            // Lost in a crash, it costs a redelivery (QoS 1) or a PUBREL the client answers
            // anyway (QoS 2): nothing waits for it.
            d.log_lazily(&Rec::Done { sid: d.sid, mid });
        }
    }

    /// PUBREC for a QoS 2 delivery; `refused`: its reason code is an error.
    pub fn on_pubrec(&self, packet_id: u16, refused: bool) -> PubRecOutcome {
        let mut st = self.state.lock();
        if refused {
            return match st.take_inflight(packet_id, InflightState::AwaitingPubRec) {
                Some(f) => {
                    self.log_done(&f.delivery);
                    PubRecOutcome::Ended
                }
                None => PubRecOutcome::Unknown,
            };
        }
        match st.advance_inflight(
            packet_id,
            InflightState::AwaitingPubRec,
            InflightState::AwaitingPubComp,
        ) {
            Some(delivery) => {
                if let (Some(d), Some(mid)) = (self.durable(), durable::stored_id(delivery)) {
                    d.log(&Rec::Released { sid: d.sid, mid });
                }
                PubRecOutcome::Release
            }
            None => PubRecOutcome::Unknown,
        }
    }

    /// PUBCOMP: the QoS 2 delivery is done. Returns its message.
    pub fn on_pubcomp(&self, packet_id: u16) -> Option<Arc<Message>> {
        let mut st = self.state.lock();
        let f = st.take_inflight(packet_id, InflightState::AwaitingPubComp)?;
        self.log_done(&f.delivery);
        Some(f.delivery.msg)
    }

    /// An incoming QoS 2 PUBLISH; `limit` is the Receive Maximum the client was told, if any.
    pub fn check_incoming_qos2(&self, packet_id: u16, limit: Option<usize>) -> IncomingQos2 {
        let st = self.state.lock();
        if st.incoming_qos2.contains(&packet_id) {
            IncomingQos2::Duplicate
        } else if limit.is_some_and(|l| st.incoming_qos2.len() >= l) {
            IncomingQos2::TooMany
        } else {
            IncomingQos2::New
        }
    }

    /// The incoming QoS 2 message was routed and PUBREC sent: remember it until PUBREL.
    pub fn record_incoming_qos2(&self, packet_id: u16) {
        let mut st = self.state.lock();
        st.incoming_qos2.push(packet_id);
        if let Some(d) = self.durable() {
            d.log(&Rec::Qos2In {
                sid: d.sid,
                pid: packet_id,
            });
        }
    }

    /// PUBREL: returns whether the packet id was waiting for it.
    pub fn release_incoming_qos2(&self, packet_id: u16) -> bool {
        let mut st = self.state.lock();
        match st.incoming_qos2.iter().position(|id| *id == packet_id) {
            Some(i) => {
                st.incoming_qos2.swap_remove(i);
                if let Some(d) = self.durable() {
                    d.log(&Rec::Qos2Out {
                        sid: d.sid,
                        pid: packet_id,
                    });
                }
                true
            }
            None => false,
        }
    }
}
