//! Packets from the client: each becomes a pipeline call (publish, subscribe, unsubscribe) or a
//! session transition (acknowledgements, QoS 2 bookkeeping), and its reply goes to the write
//! buffer.

use super::connection::{Close, Connection};
use super::pipeline::{PublishRefused, SubscribeRefused};
use crate::message::Message;
use crate::metrics::Limit;
use crate::protocol::*;
use crate::session::{IncomingQos2, PubRecOutcome};
use bytes::Buf;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Decodes and handles every complete packet in the read buffer.
    pub(super) async fn process_input(&mut self) -> Result<(), Close> {
        let max = self.att.broker.config.max_packet_size as usize;
        // One clock read per batch of packets: the n-th publish of a read is stamped n
        // nanoseconds after it, so each still has its own receipt time (message ids use it).
        let mut received_at = SystemTime::now();
        while let Some(packet) =
            decode_packet_with(&mut self.rbuf, Some(self.version), max, &mut self.topics)?
        {
            match packet {
                Packet::Publish(p) => {
                    received_at += Duration::from_nanos(1);
                    self.on_publish(p, received_at).await?;
                }
                other => self.handle(other).await?,
            }
        }
        Ok(())
    }

    /// A PUBACK and the four-byte PUBACKs right behind it in the buffer, acknowledged under one
    /// session lock (a subscriber's PUBACKs mostly arrive in runs, one per message).
    fn on_pubacks(&mut self, first: u16) {
        let mut ids = smallvec::SmallVec::<[u16; 32]>::new();
        ids.push(first);
        while ids.len() < ids.inline_size() {
            let Some(id) = short_puback(&self.rbuf) else {
                break;
            };
            self.rbuf.advance(4);
            ids.push(id);
        }
        for msg in self.att.session.on_pubacks(&ids) {
            self.att.acked(msg);
        }
    }

    /// Every packet but PUBLISH (see `process_input`).
    async fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        // Handing PUBLISH on from here instead (even boxed) costs every message ~55 instructions.
        debug_assert!(
            !matches!(packet, Packet::Publish(_)),
            "PUBLISH goes from process_input to on_publish"
        );
        match packet {
            Packet::Publish(_) => Ok(()),
            Packet::PubAck(r) => {
                self.on_pubacks(r.packet_id);
                Ok(())
            }
            Packet::PubRec(r) => {
                let code = match self.att.session.on_pubrec(r.packet_id, r.code.is_error()) {
                    PubRecOutcome::Release => ReasonCode::SUCCESS,
                    PubRecOutcome::Ended => return Ok(()),
                    PubRecOutcome::Unknown => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                };
                self.send(&Packet::PubRel(PubResponse::new(r.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(r) => {
                if let Some(msg) = self.att.session.on_pubcomp(r.packet_id) {
                    self.att.acked(msg);
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let code = if self.att.session.release_incoming_qos2(r.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(PubResponse::new(r.packet_id, code)));
                Ok(())
            }
            // Boxed: rare, and its future (authorization, read checks of retained messages)
            // would otherwise enlarge every read's future, which is allocated per read.
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(s)).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(_) => Err(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-only packet sent by client",
                ))
            }
            Packet::Connect(_) => Err(DecodeError::SecondConnect.into()),
        }
    }

    /// Resolves an incoming topic alias (v5): sets it, or replaces the empty topic by it.
    fn resolve_topic_alias(&mut self, p: &mut Publish) -> Result<(), Close> {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(());
        };
        if alias == 0 || alias > self.att.broker.config.topic_alias_max {
            return Err(Close::error(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            p.topic = self
                .topic_aliases
                .as_ref()
                .and_then(|a| a.get(&alias))
                .cloned()
                .ok_or(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "unknown topic alias",
                ))?;
        } else {
            self.topic_aliases
                .get_or_insert_with(Default::default)
                .insert(alias, p.topic.clone());
        }
        Ok(())
    }

    async fn on_publish(&mut self, mut p: Publish, received_at: SystemTime) -> Result<(), Close> {
        if self.version.is_v5() {
            self.resolve_topic_alias(&mut p)?;
        }
        let packet_id = p.packet_id;
        let qos = p.qos;
        if qos == QoS::ExactlyOnce {
            // Only v5 clients were told our Receive Maximum; v3 clients may use any window.
            let limit = self
                .version
                .is_v5()
                .then_some(usize::from(self.att.broker.config.max_inflight));
            match self.att.session.check_incoming_qos2(packet_id, limit) {
                IncomingQos2::New => {}
                IncomingQos2::Duplicate => {
                    // A resend of a message we already routed: acknowledge, never route twice.
                    self.send(&Packet::PubRec(PubResponse::new(
                        packet_id,
                        ReasonCode::SUCCESS,
                    )));
                    return Ok(());
                }
                IncomingQos2::TooMany => {
                    return Err(Close {
                        linger: true,
                        ..Close::error(
                            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                            "receive maximum exceeded",
                        )
                    });
                }
            }
        }
        let msg = Message::from_publish(p, self.att.client.client_id.clone(), received_at);
        let code = match self.att.publish(msg).await {
            Ok(()) | Err(PublishRefused::Dropped) => ReasonCode::SUCCESS,
            Err(PublishRefused::Invalid(code, why)) => return Err(Close::error(code, why)),
            // v3 has no way to say no: the message is dropped and acknowledged as usual.
            Err(PublishRefused::Denied(_)) if !self.version.is_v5() => ReasonCode::SUCCESS,
            Err(PublishRefused::Denied(code)) => code,
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResponse::new(packet_id, code))),
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    self.att.session.record_incoming_qos2(packet_id);
                }
                self.send(&Packet::PubRec(PubResponse::new(packet_id, code)));
            }
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted = Vec::new();
        let max_filters = self.att.broker.guard.limits.max_filters_per_subscribe;
        for (n, (filter, options)) in s.filters.into_iter().enumerate() {
            // Past the limit each filter is refused unread: a 1 MiB SUBSCRIBE cannot make the
            // broker take its tree's write lock 100,000 times.
            if max_filters > 0 && n >= max_filters {
                self.att
                    .broker
                    .metrics
                    .limit_hit(Limit::FiltersPerSubscribe);
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            match self.att.check_subscribe(&filter, &options).await {
                Ok(grant) => {
                    codes.push(ReasonCode(options.qos as u8));
                    granted.push(self.att.subscribe(filter, options, identifier, grant));
                }
                Err(SubscribeRefused::Code(code)) => codes.push(code),
                Err(SubscribeRefused::Protocol(why)) => {
                    return Err(Close::error(ReasonCode::PROTOCOL_ERROR, why))
                }
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes,
            properties: Props::default(),
        }));
        // Retained messages go out after the SUBACK, through the session queue.
        for g in granted {
            self.att.complete_subscribe(g).await;
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let codes = u
            .filters
            .iter()
            .map(|filter| {
                if self.att.unsubscribe(filter) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes,
            properties: Props::default(),
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                return Err(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 on CONNECT",
                ));
            }
            self.session_expiry = expiry.min(self.att.broker.config.session_expiry_max_s);
            self.att.session.set_expiry_interval(self.session_expiry);
        }
        Err(Close {
            code: d.code,
            will: d.code == ReasonCode::DISCONNECT_WITH_WILL,
            notify: false,
            linger: false,
            why: "client disconnected",
        })
    }
}
