//! Reading records back: [`decode_framed`] checks a frame (length, CRC-32) and turns its body
//! into a [`Decoded`] record that owns its data. Anything that does not read as a whole
//! record is a [`BadRecord`]: the file is damaged from there on.

use super::record::{instant_at, now_ms, FRAME};
use crate::message::Message;
use crate::protocol::properties::PropertyContext;
use crate::protocol::{Properties, Props, QoS, RetainHandling, SubscriptionOptions};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// A record as it is read back.
#[derive(Debug)]
pub(crate) enum Decoded {
    Message {
        id: u64,
        msg: Message,
    },
    Open {
        sid: u64,
        client_id: Arc<str>,
        user: Option<Arc<str>>,
        expiry: u32,
    },
    End {
        sid: u64,
    },
    Online {
        sid: u64,
        expiry: u32,
    },
    Offline {
        sid: u64,
        at_ms: u64,
        expiry: u32,
    },
    Sub {
        sid: u64,
        filter: String,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        read_checked: bool,
    },
    Unsub {
        sid: u64,
        filter: String,
    },
    Enqueue {
        sid: u64,
        mid: u64,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
    },
    Sent {
        sid: u64,
        mid: u64,
        pid: u16,
    },
    Released {
        sid: u64,
        mid: u64,
    },
    Done {
        sid: u64,
        mid: u64,
    },
    Qos2In {
        sid: u64,
        pid: u16,
    },
    Qos2Out {
        sid: u64,
        pid: u16,
    },
    Retain {
        topic: String,
        mid: u64,
    },
    Unretain {
        topic: String,
    },
    Will {
        sid: u64,
        mid: u64,
        at_ms: u64,
    },
    WillDone {
        sid: u64,
    },
    SnapshotEnd,
}

/// Why a record could not be read: the file is damaged from here on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadRecord {
    #[error("truncated record")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Reads the framed record at the start of `data`: the record and the bytes it took.
pub(crate) fn decode_framed(data: &[u8]) -> Result<(Decoded, usize), BadRecord> {
    if data.len() < FRAME {
        return Err(BadRecord::Truncated);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let body = data.get(FRAME..FRAME + len).ok_or(BadRecord::Truncated)?;
    if len == 0 {
        return Err(BadRecord::Malformed("empty record"));
    }
    if crc32fast::hash(body) != crc {
        return Err(BadRecord::Checksum);
    }
    let mut r = Cursor { data: body, pos: 0 };
    let rec = r.record()?;
    if r.pos != body.len() {
        return Err(BadRecord::Malformed("trailing bytes"));
    }
    Ok((rec, FRAME + len))
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, BadRecord> {
        let b = *self.data.get(self.pos).ok_or(BadRecord::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, BadRecord> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BadRecord::Malformed("integer too long"))
    }

    fn u32(&mut self) -> Result<u32, BadRecord> {
        u32::try_from(self.uint()?).map_err(|_| BadRecord::Malformed("integer out of range"))
    }

    fn u16(&mut self) -> Result<u16, BadRecord> {
        u16::try_from(self.uint()?).map_err(|_| BadRecord::Malformed("integer out of range"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], BadRecord> {
        let len = usize::try_from(self.uint()?).map_err(|_| BadRecord::Truncated)?;
        let end = self.pos.checked_add(len).ok_or(BadRecord::Truncated)?;
        let b = self.data.get(self.pos..end).ok_or(BadRecord::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, BadRecord> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| BadRecord::Malformed("invalid UTF-8"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, BadRecord> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(BadRecord::Malformed("bad option flag")),
        }
    }

    fn qos_flags(&mut self) -> Result<(QoS, bool), BadRecord> {
        let b = self.byte()?;
        let qos = QoS::from_u8(b & 0x3).ok_or(BadRecord::Malformed("bad QoS"))?;
        Ok((qos, b & 0x4 != 0))
    }

    fn options(&mut self) -> Result<(SubscriptionOptions, bool), BadRecord> {
        let b = self.byte()?;
        let bad = BadRecord::Malformed("bad subscription options");
        let read_checked = b & 0x40 != 0;
        let b = b & 0x3F;
        let options = SubscriptionOptions {
            qos: QoS::from_u8(b & 0x3).ok_or(bad.clone())?,
            no_local: b & 0x4 != 0,
            retain_as_published: b & 0x8 != 0,
            retain_handling: match b >> 4 {
                0 => RetainHandling::SendOnSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(bad),
            },
        };
        Ok((options, read_checked))
    }

    fn record(&mut self) -> Result<Decoded, BadRecord> {
        Ok(match self.byte()? {
            1 => {
                let id = self.uint()?;
                let topic = self.string()?;
                let payload = Bytes::copy_from_slice(self.bytes()?);
                let (qos, retain) = self.qos_flags()?;
                let publisher = self.opt_string()?;
                let received_ms = self.uint()?;
                let expires_ms = self.uint()?;
                let props = self.bytes()?;
                // Most messages carry no properties: one zero byte, nothing to decode.
                let properties: Props = if props == [0] {
                    Props::default()
                } else {
                    let mut reader =
                        crate::protocol::wire::Reader::new(Bytes::copy_from_slice(props));
                    Properties::decode(&mut reader, PropertyContext::Publish)
                        .map_err(|_| BadRecord::Malformed("bad message properties"))?
                };
                let mut msg = Message::new(topic, payload, qos, retain);
                msg.properties = properties;
                msg.publisher = publisher.map(Into::into);
                msg.received_at = UNIX_EPOCH + Duration::from_millis(received_ms);
                msg.expires_at =
                    (expires_ms != 0).then(|| instant_at(expires_ms, Instant::now(), now_ms()));
                Decoded::Message { id, msg }
            }
            2 => Decoded::Open {
                sid: self.uint()?,
                client_id: self.string()?.into(),
                user: self.opt_string()?.map(Into::into),
                expiry: self.u32()?,
            },
            3 => Decoded::End { sid: self.uint()? },
            4 => Decoded::Online {
                sid: self.uint()?,
                expiry: self.u32()?,
            },
            5 => Decoded::Offline {
                sid: self.uint()?,
                at_ms: self.uint()?,
                expiry: self.u32()?,
            },
            6 => {
                let sid = self.uint()?;
                let filter = self.string()?;
                let (options, read_checked) = self.options()?;
                Decoded::Sub {
                    sid,
                    filter,
                    options,
                    read_checked,
                    identifier: Some(self.u32()?).filter(|id| *id != 0),
                }
            }
            7 => Decoded::Unsub {
                sid: self.uint()?,
                filter: self.string()?,
            },
            8 => {
                let sid = self.uint()?;
                let mid = self.uint()?;
                let (qos, retain) = self.qos_flags()?;
                let n = self.uint()?;
                if n > 1024 {
                    return Err(BadRecord::Malformed("too many subscription ids"));
                }
                let sub_ids = (0..n).map(|_| self.u32()).collect::<Result<_, _>>()?;
                Decoded::Enqueue {
                    sid,
                    mid,
                    qos,
                    retain,
                    sub_ids,
                }
            }
            9 => Decoded::Sent {
                sid: self.uint()?,
                mid: self.uint()?,
                pid: self.u16()?,
            },
            10 => Decoded::Released {
                sid: self.uint()?,
                mid: self.uint()?,
            },
            11 => Decoded::Done {
                sid: self.uint()?,
                mid: self.uint()?,
            },
            12 => Decoded::Qos2In {
                sid: self.uint()?,
                pid: self.u16()?,
            },
            13 => Decoded::Qos2Out {
                sid: self.uint()?,
                pid: self.u16()?,
            },
            14 => Decoded::Retain {
                topic: self.string()?,
                mid: self.uint()?,
            },
            15 => Decoded::Unretain {
                topic: self.string()?,
            },
            16 => Decoded::Will {
                sid: self.uint()?,
                mid: self.uint()?,
                at_ms: self.uint()?,
            },
            17 => Decoded::WillDone { sid: self.uint()? },
            18 => {
                self.uint()?; // the record count, for a reader of the raw file
                Decoded::SnapshotEnd
            }
            _ => return Err(BadRecord::Malformed("unknown record type")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::record::Rec;

    #[test]
    fn records_read_back_as_written_and_damage_is_detected() {
        let mut msg = Message::new("a/b", &b"payload"[..], QoS::ExactlyOnce, true);
        msg.publisher = Some("pub".into());
        msg.properties.content_type = Some("text/plain".into());
        msg.properties
            .user_properties
            .push(("k".into(), "v".into()));
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        };
        let mut buf = Vec::new();
        Rec::Message { id: 7, msg: &msg }.encode(&mut buf);
        Rec::Sub {
            sid: 3,
            filter: "a/#",
            options,
            identifier: Some(42),
            read_checked: true,
        }
        .encode(&mut buf);
        Rec::Enqueue {
            sid: 3,
            mid: 7,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: &[42, 300_000],
        }
        .encode(&mut buf);
        let (first, n) = decode_framed(&buf).unwrap();
        let Decoded::Message { id: 7, msg: back } = first else {
            panic!("{first:?}")
        };
        assert_eq!(&*back.topic, "a/b");
        assert_eq!(&back.payload[..], b"payload");
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.publisher.as_deref(), Some("pub"));
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.user_properties.len(), 1);
        let (second, m) = decode_framed(&buf[n..]).unwrap();
        assert!(matches!(
            second,
            Decoded::Sub { sid: 3, ref filter, options: o, identifier: Some(42), read_checked: true } if filter == "a/#" && o == options
        ));
        let (third, k) = decode_framed(&buf[n + m..]).unwrap();
        assert!(matches!(third, Decoded::Enqueue { ref sub_ids, .. } if sub_ids == &[42, 300_000]));
        assert_eq!(n + m + k, buf.len());
        // Cut short, or one bit flipped: never a wrong record.
        assert_eq!(
            decode_framed(&buf[..n - 1]).unwrap_err(),
            BadRecord::Truncated
        );
        let mut flipped = buf.clone();
        flipped[n + FRAME + 2] ^= 0x10;
        assert_eq!(
            decode_framed(&flipped[n..]).unwrap_err(),
            BadRecord::Checksum
        );
    }
}
