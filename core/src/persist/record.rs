//! What the journal holds, and its binary form. Every record sets a value (present, absent,
//! a state) instead of changing one, so replaying a record twice, or over a snapshot taken
//! after it, ends in the same state: that is what lets a snapshot be written while the broker
//! keeps appending.
//!
//! Reading back is `super::decode`. On disk each record is framed as `len: u32 LE, crc32(body): u32 LE, body`; the body starts
//! with a tag byte. Integers are LEB128, strings and byte strings are length-prefixed.

use crate::message::Message;
use crate::protocol::{QoS, SubscriptionOptions};
use bytes::BytesMut;
use std::time::{Duration, Instant};

/// Bytes of framing before each record's body.
pub(crate) const FRAME: usize = 8;

/// A record as it is appended (borrowing what it describes).
#[derive(Debug)]
pub(crate) enum Rec<'a> {
    /// A message body, stored once however many sessions hold it; referenced by id.
    Message {
        id: u64,
        msg: &'a Message,
    },
    /// A persistent session was created (a new id per session, never reused).
    Open {
        sid: u64,
        client_id: &'a str,
        user: Option<&'a str>,
        expiry: u32,
    },
    /// The session ended (clean start, expiry, taken over by a clean start).
    End {
        sid: u64,
    },
    /// A client attached, with the expiry interval it asked for.
    Online {
        sid: u64,
        expiry: u32,
    },
    /// The client went away at `at_ms` (Unix ms): the expiry interval counts from there.
    Offline {
        sid: u64,
        at_ms: u64,
        expiry: u32,
    },
    Sub {
        sid: u64,
        filter: &'a str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        /// Granted with `AclDecision::Filter`: each topic it delivers is read-checked.
        read_checked: bool,
    },
    Unsub {
        sid: u64,
        filter: &'a str,
    },
    /// Message `mid` waits in the session's queue.
    Enqueue {
        sid: u64,
        mid: u64,
        qos: QoS,
        retain: bool,
        sub_ids: &'a [u32],
    },
    /// Sent with packet id `pid`, waiting for PUBACK / PUBREC.
    Sent {
        sid: u64,
        mid: u64,
        pid: u16,
    },
    /// PUBREC received, PUBREL sent: waiting for PUBCOMP.
    Released {
        sid: u64,
        mid: u64,
    },
    /// Acknowledged, or dropped (expired, too large): gone from the session.
    Done {
        sid: u64,
        mid: u64,
    },
    /// An incoming QoS 2 packet id between PUBREC and PUBREL.
    Qos2In {
        sid: u64,
        pid: u16,
    },
    Qos2Out {
        sid: u64,
        pid: u16,
    },
    Retain {
        topic: &'a str,
        mid: u64,
    },
    Unretain {
        topic: &'a str,
    },
    /// A will waiting for its delay (published at `at_ms` unless the session resumes).
    Will {
        sid: u64,
        mid: u64,
        at_ms: u64,
    },
    WillDone {
        sid: u64,
    },
    /// Closes a snapshot file: one without it was not finished.
    SnapshotEnd {
        records: u64,
    },
}

pub(crate) use crate::clock::{now_ms, unix_ms};

/// A monotonic deadline as wall-clock ms (deadlines must survive a restart; 0 = none).
fn deadline_ms(at: Option<Instant>, now: Instant, now_ms: u64) -> u64 {
    at.map_or(0, |at| {
        (now_ms + at.saturating_duration_since(now).as_millis() as u64).max(1)
    })
}

/// The wall-clock deadline back as an `Instant` of this process.
pub(crate) fn instant_at(ms: u64, now: Instant, now_ms: u64) -> Instant {
    now + Duration::from_millis(ms.saturating_sub(now_ms))
}

fn put_uint(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_uint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn put_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.push(1);
            put_bytes(buf, s.as_bytes());
        }
        None => buf.push(0),
    }
}

fn options_byte(o: SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

impl Rec<'_> {
    /// Appends the record, framed, to `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        buf.extend_from_slice(&[0; FRAME]);
        self.encode_body(buf);
        let body = &buf[start + FRAME..];
        let len = body.len() as u32;
        let crc = crc32fast::hash(body);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn encode_body(&self, b: &mut Vec<u8>) {
        match *self {
            Rec::Message { id, msg } => {
                b.push(1);
                put_uint(b, id);
                put_bytes(b, msg.topic.as_bytes());
                put_bytes(b, &msg.payload);
                b.push(msg.qos as u8 | u8::from(msg.retain) << 2);
                put_opt_str(b, msg.publisher.as_deref());
                put_uint(b, unix_ms(msg.received_at));
                // Clocks read only for a message that expires.
                let expires = msg.expires_at.map(|_| (Instant::now(), now_ms()));
                put_uint(
                    b,
                    expires.map_or(0, |(now, ms)| deadline_ms(msg.expires_at, now, ms)),
                );
                let mut props = BytesMut::new();
                msg.properties.encode(&mut props);
                put_bytes(b, &props);
            }
            Rec::Open {
                sid,
                client_id,
                user,
                expiry,
            } => {
                b.push(2);
                put_uint(b, sid);
                put_bytes(b, client_id.as_bytes());
                put_opt_str(b, user);
                put_uint(b, expiry.into());
            }
            Rec::End { sid } => {
                b.push(3);
                put_uint(b, sid);
            }
            Rec::Online { sid, expiry } => {
                b.push(4);
                put_uint(b, sid);
                put_uint(b, expiry.into());
            }
            Rec::Offline { sid, at_ms, expiry } => {
                b.push(5);
                put_uint(b, sid);
                put_uint(b, at_ms);
                put_uint(b, expiry.into());
            }
            Rec::Sub {
                sid,
                filter,
                options,
                identifier,
                read_checked,
            } => {
                b.push(6);
                put_uint(b, sid);
                put_bytes(b, filter.as_bytes());
                b.push(options_byte(options) | u8::from(read_checked) << 6);
                put_uint(b, identifier.unwrap_or(0).into());
            }
            Rec::Unsub { sid, filter } => {
                b.push(7);
                put_uint(b, sid);
                put_bytes(b, filter.as_bytes());
            }
            Rec::Enqueue {
                sid,
                mid,
                qos,
                retain,
                sub_ids,
            } => {
                b.push(8);
                put_uint(b, sid);
                put_uint(b, mid);
                b.push(qos as u8 | u8::from(retain) << 2);
                put_uint(b, sub_ids.len() as u64);
                for id in sub_ids {
                    put_uint(b, (*id).into());
                }
            }
            Rec::Sent { sid, mid, pid } => {
                b.push(9);
                put_uint(b, sid);
                put_uint(b, mid);
                put_uint(b, pid.into());
            }
            Rec::Released { sid, mid } => {
                b.push(10);
                put_uint(b, sid);
                put_uint(b, mid);
            }
            Rec::Done { sid, mid } => {
                b.push(11);
                put_uint(b, sid);
                put_uint(b, mid);
            }
            Rec::Qos2In { sid, pid } => {
                b.push(12);
                put_uint(b, sid);
                put_uint(b, pid.into());
            }
            Rec::Qos2Out { sid, pid } => {
                b.push(13);
                put_uint(b, sid);
                put_uint(b, pid.into());
            }
            Rec::Retain { topic, mid } => {
                b.push(14);
                put_bytes(b, topic.as_bytes());
                put_uint(b, mid);
            }
            Rec::Unretain { topic } => {
                b.push(15);
                put_bytes(b, topic.as_bytes());
            }
            Rec::Will { sid, mid, at_ms } => {
                b.push(16);
                put_uint(b, sid);
                put_uint(b, mid);
                put_uint(b, at_ms);
            }
            Rec::WillDone { sid } => {
                b.push(17);
                put_uint(b, sid);
            }
            Rec::SnapshotEnd { records } => {
                b.push(18);
                put_uint(b, records);
            }
        }
    }
}
