//! Encoding packets into a write buffer. The connection appends many packets to one buffer and
//! writes it with one syscall.

use super::wire::{fixed_header, header, put_binary, put_str, put_varint, varint_len};
use super::*;
use bytes::{BufMut, BytesMut};

/// A PUBLISH as it goes to one subscriber: the shared message plus what differs per delivery.
pub struct OutgoingPublish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: u16,
    /// The message's own properties (no topic alias, no subscription identifiers).
    pub properties: &'a Properties,
    pub message_expiry: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    /// Topic Alias property (v5) for this client; with it, `topic` may be empty.
    pub topic_alias: Option<u16>,
    pub payload: &'a [u8],
}

impl OutgoingPublish<'_> {
    fn props_body_len(&self) -> usize {
        let mut n = self.properties.body_len();
        // The stored expiry may be absent while an override is present and vice versa.
        n -= self.properties.message_expiry_interval.map_or(0, |_| 5);
        n += self.message_expiry.map_or(0, |_| 5);
        n += self
            .subscription_identifiers
            .iter()
            .map(|id| 1 + varint_len(*id as usize))
            .sum::<usize>();
        n += self.topic_alias.map_or(0, |_| 3);
        n
    }

    fn remaining_len(&self, v5: bool) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            n += 2;
        }
        if v5 {
            let p = self.props_body_len();
            n += varint_len(p) + p;
        }
        n
    }
}

/// The size on the wire, to check against a client's Maximum Packet Size before encoding.
pub fn publish_size(p: &OutgoingPublish<'_>, version: ProtocolVersion) -> usize {
    let rem = p.remaining_len(version.is_v5());
    1 + varint_len(rem) + rem
}

pub fn encode_publish(p: &OutgoingPublish<'_>, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    let first = 0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
    let remaining = p.remaining_len(v5);
    buf.reserve(1 + varint_len(remaining) + remaining);
    // Head and topic length in one copy, the topic, then packet id and payload: the fewer
    // `put_*` calls the better on the path every delivery takes.
    let topic = &p.topic.as_bytes()[..p.topic.len().min(usize::from(u16::MAX))];
    let (head, n) = fixed_header(first, remaining);
    let mut head_and_len = [0u8; 7];
    head_and_len[..n].copy_from_slice(&head[..n]);
    head_and_len[n..n + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
    buf.put_slice(&head_and_len[..n + 2]);
    buf.put_slice(topic);
    if p.qos != QoS::AtMostOnce {
        buf.put_slice(&p.packet_id.to_be_bytes());
    }
    if v5 {
        put_varint(buf, p.props_body_len());
        p.properties
            .encode_body_with(buf, p.message_expiry, p.subscription_identifiers);
        if let Some(alias) = p.topic_alias {
            buf.put_u8(0x23);
            buf.put_u16(alias);
        }
    }
    buf.put_slice(p.payload);
}

fn pub_response(buf: &mut BytesMut, first: u8, r: &PubResponse, v5: bool) {
    if !v5 || (r.code == ReasonCode::SUCCESS && r.properties.is_empty()) {
        let [hi, lo] = r.packet_id.to_be_bytes();
        buf.put_slice(&[first, 2, hi, lo]);
    } else if r.properties.is_empty() {
        header(buf, first, 3);
        buf.put_u16(r.packet_id);
        buf.put_u8(r.code.0);
    } else {
        header(buf, first, 3 + r.properties.encoded_len());
        buf.put_u16(r.packet_id);
        buf.put_u8(r.code.0);
        r.properties.encode(buf);
    }
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 {
        p.encoded_len()
    } else {
        0
    }
}

fn put_props(buf: &mut BytesMut, p: &Properties, v5: bool) {
    if v5 {
        p.encode(buf);
    }
}

fn subscription_options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

/// Encodes any packet for a peer speaking `version` (the CONNECT's own version is used for it).
pub fn encode_packet(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => encode_connect(c, buf),
        Packet::ConnAck(a) => {
            let code = if v5 { a.code.0 } else { a.code.to_v3_connack() };
            header(buf, 0x20, 2 + props_len(&a.properties, v5));
            buf.put_u8(u8::from(a.session_present));
            buf.put_u8(code);
            put_props(buf, &a.properties, v5);
        }
        Packet::Publish(p) => encode_publish(
            &OutgoingPublish {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: &p.topic,
                packet_id: p.packet_id,
                properties: &p.properties,
                message_expiry: p.properties.message_expiry_interval,
                subscription_identifiers: &[],
                topic_alias: None,
                payload: &p.payload,
            },
            version,
            buf,
        ),
        Packet::PubAck(r) => pub_response(buf, 0x40, r, v5),
        Packet::PubRec(r) => pub_response(buf, 0x50, r, v5),
        Packet::PubRel(r) => pub_response(buf, 0x62, r, v5),
        Packet::PubComp(r) => pub_response(buf, 0x70, r, v5),
        Packet::Subscribe(s) => {
            let body: usize = s.filters.iter().map(|(f, _)| 3 + f.len()).sum();
            header(buf, 0x82, 2 + props_len(&s.properties, v5) + body);
            buf.put_u16(s.packet_id);
            put_props(buf, &s.properties, v5);
            for (f, o) in &s.filters {
                put_str(buf, f);
                buf.put_u8(subscription_options_byte(o, v5));
            }
        }
        Packet::SubAck(s) => {
            header(buf, 0x90, 2 + props_len(&s.properties, v5) + s.codes.len());
            buf.put_u16(s.packet_id);
            put_props(buf, &s.properties, v5);
            for c in &s.codes {
                // v3 knows only granted QoS or 0x80.
                buf.put_u8(if v5 || c.0 <= 2 { c.0 } else { 0x80 });
            }
        }
        Packet::Unsubscribe(u) => {
            let body: usize = u.filters.iter().map(|f| 2 + f.len()).sum();
            header(buf, 0xA2, 2 + props_len(&u.properties, v5) + body);
            buf.put_u16(u.packet_id);
            put_props(buf, &u.properties, v5);
            for f in &u.filters {
                put_str(buf, f);
            }
        }
        Packet::UnsubAck(u) => {
            let codes = if v5 { u.codes.len() } else { 0 };
            header(buf, 0xB0, 2 + props_len(&u.properties, v5) + codes);
            buf.put_u16(u.packet_id);
            put_props(buf, &u.properties, v5);
            if v5 {
                for c in &u.codes {
                    buf.put_u8(c.0);
                }
            }
        }
        Packet::PingReq => header(buf, 0xC0, 0),
        Packet::PingResp => header(buf, 0xD0, 0),
        Packet::Disconnect(d) => {
            if !v5 {
                header(buf, 0xE0, 0);
            } else if d.properties.is_empty() {
                header(buf, 0xE0, 1);
                buf.put_u8(d.code.0);
            } else {
                header(buf, 0xE0, 1 + d.properties.encoded_len());
                buf.put_u8(d.code.0);
                d.properties.encode(buf);
            }
        }
        Packet::Auth(a) => {
            header(buf, 0xF0, 1 + a.properties.encoded_len());
            buf.put_u8(a.code.0);
            a.properties.encode(buf);
        }
    }
}

fn encode_connect(c: &Connect, buf: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    let (name, level): (&str, u8) = match c.protocol {
        ProtocolVersion::V31 => ("MQIsdp", 3),
        ProtocolVersion::V311 => ("MQTT", 4),
        ProtocolVersion::V5 => ("MQTT", 5),
    };
    let mut len = 2 + name.len() + 1 + 1 + 2 + props_len(&c.properties, v5) + 2 + c.client_id.len();
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        len += props_len(&w.properties, v5) + 2 + w.topic.len() + 2 + w.payload.len();
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if let Some(u) = &c.username {
        len += 2 + u.len();
        flags |= 0x80;
    }
    if let Some(p) = &c.password {
        len += 2 + p.len();
        flags |= 0x40;
    }
    header(buf, 0x10, len);
    put_str(buf, name);
    buf.put_u8(level);
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_props(buf, &c.properties, v5);
    put_str(buf, &c.client_id);
    if let Some(w) = &c.will {
        put_props(buf, &w.properties, v5);
        put_str(buf, &w.topic);
        put_binary(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(buf, u);
    }
    if let Some(p) = &c.password {
        put_binary(buf, p);
    }
}
