//! What goes to the client: control packets, deliveries from the session's batch (with
//! outbound topic aliases), and the write that keeps reading while the socket is full.

use super::connection::{Close, Connection, IDLE_BUFFER_KEEP};
use crate::broker::live::LiveClient;
use crate::metrics::{Limit, Metrics};
use crate::protocol::*;
use crate::session::{Acks, Delivery, Outlet};
use bytes::BytesMut;
use std::collections::HashMap;
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much encoded output to gather before writing; then we go back to reading.
const WRITE_BATCH: usize = 64 * 1024;
/// While a write is blocked, how often the client's progress and the session are checked.
const WRITE_CHECK: Duration = Duration::from_millis(250);
/// Scratch size for reads done while a write is blocked.
const READ_CHUNK: usize = 2048;
/// Topics this short are sent as they are: an alias (3 bytes of property) saves nothing.
const ALIAS_MIN_TOPIC: usize = 4;

/// Topic aliases towards one v5 client (spec 3.3.2.3.4): the first message on a topic carries
/// the topic and a new alias, later ones only the alias. Aliases are handed out until the
/// client's Topic Alias Maximum is reached; topics after that go out in full.
pub(super) struct OutAliases {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

impl OutAliases {
    pub(super) fn new(max: u16) -> Self {
        Self {
            max,
            by_topic: HashMap::new(),
        }
    }

    /// The alias for `topic` and whether the client knows it already.
    fn alias_for(&self, topic: &str) -> Option<(u16, bool)> {
        if let Some(a) = self.by_topic.get(topic) {
            return Some((*a, true));
        }
        let next = self.by_topic.len() + 1;
        (topic.len() >= ALIAS_MIN_TOPIC && next <= usize::from(self.max))
            .then_some((next as u16, false))
    }
}

/// The MQTT connection's [`Outlet`]: deliveries are encoded into the write buffer.
struct MqttOutlet<'a> {
    wbuf: &'a mut BytesMut,
    version: ProtocolVersion,
    client_max_packet: usize,
    aliases: Option<&'a mut OutAliases>,
}

impl Outlet for MqttOutlet<'_> {
    fn reserve(&mut self, bytes: usize) {
        if self.wbuf.capacity() - self.wbuf.len() < 1024 {
            self.wbuf.reserve(bytes.min(WRITE_BATCH + 1024));
        }
    }

    fn has_room(&self) -> bool {
        self.wbuf.len() < WRITE_BATCH
    }

    fn put(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Instant) -> bool {
        let alias = self
            .aliases
            .as_ref()
            .and_then(|a| a.alias_for(&d.msg.topic));
        let (topic, topic_alias) = match alias {
            Some((a, true)) => ("", Some(a)),
            Some((a, false)) => (&*d.msg.topic, Some(a)),
            None => (&*d.msg.topic, None),
        };
        let before = self.wbuf.len();
        let out = OutgoingPublish {
            dup: dup && d.qos != QoS::AtMostOnce,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties: &d.msg.properties,
            message_expiry: d.msg.remaining_expiry(now),
            subscription_identifiers: &d.subscription_ids,
            topic_alias,
            payload: &d.msg.payload,
        };
        encode_publish(&out, self.version, self.wbuf);
        if self.wbuf.len() - before > self.client_max_packet {
            // Never send a client more than its Maximum Packet Size: the message is dropped
            // (and an alias it would have set is not used).
            self.wbuf.truncate(before);
            return false;
        }
        if let (Some(aliases), Some((a, false))) = (self.aliases.as_mut(), alias) {
            aliases.by_topic.insert(d.msg.topic.clone(), a);
        }
        true
    }

    fn put_release(&mut self, packet_id: u16) {
        encode_packet(
            &Packet::PubRel(PubResponse::new(packet_id, ReasonCode::SUCCESS)),
            self.version,
            self.wbuf,
        );
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn acks(&self) -> Acks {
        Acks::Mqtt {
            window: self.send_window,
        }
    }

    fn outlet(&mut self) -> MqttOutlet<'_> {
        MqttOutlet {
            wbuf: &mut self.wbuf,
            version: self.version,
            client_max_packet: self.client_max_packet,
            aliases: self.out_aliases.as_deref_mut(),
        }
    }

    /// Appends a control packet to the write buffer.
    pub(super) fn send(&mut self, packet: &Packet) {
        let start = self.wbuf.len();
        encode_packet(packet, self.version, &mut self.wbuf);
        if self.wbuf.len() - start > self.client_max_packet {
            // Over the client's Maximum Packet Size: the spec lets us drop the reason string and
            // user properties (3.1.2.11.4), so send the packet without its properties.
            self.wbuf.truncate(start);
            let mut bare = packet.clone();
            match &mut bare {
                Packet::ConnAck(p) => p.properties = Props::default(),
                Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                    p.properties = Props::default()
                }
                Packet::SubAck(p) => p.properties = Props::default(),
                Packet::UnsubAck(p) => p.properties = Props::default(),
                Packet::Disconnect(p) => p.properties = Props::default(),
                _ => {}
            }
            encode_packet(&bare, self.version, &mut self.wbuf);
        }
    }

    /// After a reconnect, every unacknowledged message goes out again with DUP set.
    pub(super) fn resend_inflight(&mut self) {
        let session = self.att.session.clone();
        session.resend_inflight(&mut self.outlet());
    }

    /// Writes everything that is ready: control packets and as many queued messages as fit.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        loop {
            let acks = self.acks();
            let att = &self.att;
            att.fill(
                acks,
                &mut MqttOutlet {
                    wbuf: &mut self.wbuf,
                    version: self.version,
                    client_max_packet: self.client_max_packet,
                    aliases: self.out_aliases.as_deref_mut(),
                },
            );
            if self.wbuf.is_empty() {
                return Ok(());
            }
            if self.att.broker.sync_journal().is_some() {
                Box::pin(self.att.wait_durable()).await;
            }
            self.write_out().await?;
            if !self.att.session.has_ready(acks) {
                return Ok(());
            }
        }
    }

    /// Writes the buffer while still reading, so a client that only reads after its own writes
    /// complete cannot deadlock with us. While the socket stays full, every [`WRITE_CHECK`] it
    /// asks whether the client took anything (none for `write_timeout_s`: it is disconnected),
    /// whether the session was taken over or evicted, and whether the server is stopping.
    async fn write_out(&mut self) -> Result<(), Close> {
        let mut written = 0;
        let total = self.wbuf.len();
        let broker = &self.att.broker;
        let read_limit = broker.config.max_packet_size as usize + READ_CHUNK;
        let write_timeout = Duration::from_secs(broker.config.write_timeout_s);
        let mut eof = false;
        // Made the first time a write of this connection blocks (most never do) and kept:
        // re-arming a timer is cheaper than allocating and registering one per blocked write.
        let timer = &mut self.write_timer;
        let mut armed = false;
        let mut progressed = false;
        let mut stalled = Duration::ZERO;
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let rbuf = &mut self.rbuf;
        let unprocessed = &mut self.unprocessed_input;
        let att = &self.att;
        let result = poll_fn(|cx| loop {
            if written < total {
                match Pin::new(&mut *stream).poll_write(cx, &wbuf[written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(Close::silent("write failed")))
                    }
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        progressed = true;
                        continue;
                    }
                    Poll::Pending => {
                        if !eof && rbuf.len() < read_limit {
                            let mut chunk = [0u8; READ_CHUNK];
                            let mut rb = ReadBuf::new(&mut chunk);
                            if let Poll::Ready(r) = Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                                match r {
                                    Ok(()) if !rb.filled().is_empty() => {
                                        rbuf.extend_from_slice(rb.filled());
                                        *unprocessed = true;
                                        continue;
                                    }
                                    _ => eof = true,
                                }
                            }
                        }
                    }
                }
            } else {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Close::silent("write failed"))),
                    Poll::Pending => {}
                }
            }
            if !armed {
                armed = true;
                progressed = false;
                let at = tokio::time::Instant::now() + WRITE_CHECK;
                match timer {
                    Some(t) => t.as_mut().reset(at),
                    None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            let Some(t) = timer.as_mut() else {
                return Poll::Pending;
            };
            while t.as_mut().poll(cx).is_ready() {
                stalled = if std::mem::take(&mut progressed) {
                    Duration::ZERO
                } else {
                    stalled + WRITE_CHECK
                };
                if !write_timeout.is_zero() && stalled >= write_timeout {
                    att.broker.metrics.limit_hit(Limit::WriteTimeout);
                    return Poll::Ready(Err(Close::error(
                        ReasonCode::KEEP_ALIVE_TIMEOUT,
                        "write timeout: the client reads nothing",
                    )));
                }
                if let Some(close) = Close::lost(att.standing()) {
                    return Poll::Ready(Err(close));
                }
                if att.broker.shutdown.is_cancelled() {
                    return Poll::Ready(Err(Close::error(
                        ReasonCode::SERVER_SHUTTING_DOWN,
                        "server shutting down",
                    )));
                }
                t.as_mut().reset(tokio::time::Instant::now() + WRITE_CHECK);
            }
            return Poll::Pending;
        })
        .await;
        Metrics::add(&self.att.broker.metrics.bytes_sent, written as u64);
        LiveClient::count(&self.att.live.bytes_out, written as u64);
        self.wbuf.clear();
        if self.wbuf.capacity() > IDLE_BUFFER_KEEP {
            self.wbuf = BytesMut::new();
        }
        // Given up in the middle of the batch (write timeout, take-over, shutdown): the client
        // has part of a packet, and a DISCONNECT after it would read as garbage.
        result.map_err(|close| Close {
            notify: close.notify && (written == 0 || written >= total),
            ..close
        })
    }
}
