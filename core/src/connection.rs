//! One MQTT connection: reads and decodes packets, drains the session's queue and enforces the
//! keep-alive, all in one task (`select!`), and writes every ready packet with one syscall.

use crate::broker::Broker;
use crate::hooks::{Access, AclDecision, ClientInfo, ConnectInfo, Event, HookSet};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::protocol::*;
use crate::session::{Inflight, InflightState, Session};
use crate::topic;
use bytes::BytesMut;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::{debug, info, warn};

/// How much encoded output to gather before writing; then we go back to reading.
const WRITE_BATCH: usize = 64 * 1024;
/// Buffers above this are given back when the connection goes idle.
const IDLE_BUFFER_KEEP: usize = 1024;
/// Smallest read: enough for control packets and small publishes, cheap to hold while idle.
const READ_MIN: usize = 64;
/// Largest read, reached by doubling while reads keep filling the buffer.
const READ_MAX: usize = 64 * 1024;
/// Scratch size for reads done while a write is blocked.
const READ_CHUNK: usize = 2048;
/// How long a publisher waits for a congested subscriber before giving up on it.
const BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection knows about the listener that accepted it.
pub struct ListenerContext {
    pub broker: Arc<Broker>,
    /// `kind:bind`, for logs and `ClientInfo::listener`.
    pub name: Arc<str>,
    pub allow_anonymous: bool,
}

/// Why a connection ends; decides the DISCONNECT we send and whether the will is published.
#[derive(Debug, Clone, Copy)]
struct Close {
    code: ReasonCode,
    /// Publish the will (anything but a normal DISCONNECT from the client).
    will: bool,
    /// Send a v5 DISCONNECT before closing.
    notify: bool,
    why: &'static str,
}

impl Close {
    fn error(code: ReasonCode, why: &'static str) -> Self {
        Self {
            code,
            will: true,
            notify: true,
            why,
        }
    }
    fn silent(why: &'static str) -> Self {
        Self {
            code: ReasonCode::UNSPECIFIED_ERROR,
            will: true,
            notify: false,
            why,
        }
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Self {
        Close::error(e.reason_code(), "invalid packet")
    }
}

/// Serves one accepted stream until it closes. Never panics on client input.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<Arc<str>>,
    ctx: Arc<ListenerContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The handshake and shut-down phases are boxed: only the connection and its main loop stay
    // in the task for the connection's lifetime, which keeps idle connections small.
    let Some(mut conn) = Box::pin(handshake(stream, peer, cert_cn, ctx)).await else {
        return;
    };
    let close = conn.run().await;
    Box::pin(conn.finish(close)).await;
}

/// Reads CONNECT (within the connect timeout) and turns the stream into a [`Connection`].
async fn handshake<S>(
    mut stream: S,
    peer: SocketAddr,
    cert_cn: Option<Arc<str>>,
    ctx: Arc<ListenerContext>,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let broker = ctx.broker.clone();
    let max_packet = broker.config.max_packet_size as usize;
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    let deadline = Duration::from_secs(broker.config.connect_timeout_s);
    let read = tokio::time::timeout(deadline, read_connect(&mut stream, &mut rbuf, max_packet));
    let (connect, len) = match read.await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return None,
        Ok(Err(DecodeError::UnsupportedProtocolVersion(level))) => {
            debug!(listener = %ctx.name, %peer, level, "unsupported protocol level");
            let mut out = BytesMut::new();
            let ack = Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                properties: Props::default(),
            });
            // A level we do not know gets the 3.1.1 answer (return code 0x01), which every
            // client generation can read.
            encode_packet(&ack, ProtocolVersion::V311, &mut out);
            let _ = stream.write_all(&out).await;
            return None;
        }
        Ok(Err(e)) => {
            info!(listener = %ctx.name, %peer, error = %e, "invalid CONNECT; closing");
            return None;
        }
        Err(_) => {
            debug!(listener = %ctx.name, %peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    Metrics::add(&broker.metrics.bytes_received, len as u64);
    Connection::accept(stream, *connect, peer, cert_cn, ctx, rbuf).await
}

/// The CONNECT packet and its size on the wire, or `None` if the peer went away first.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<(Box<Connect>, usize)>, DecodeError> {
    loop {
        let before = rbuf.len();
        if let Some(p) = decode_packet(rbuf, None, max_packet)? {
            match p {
                Packet::Connect(c) => return Ok(Some((c, before - rbuf.len()))),
                _ => return Err(DecodeError::FirstPacketNotConnect),
            }
        }
        rbuf.reserve(READ_MIN);
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

struct Connection<S> {
    stream: S,
    broker: Arc<Broker>,
    ctx: Arc<ListenerContext>,
    client: Arc<ClientInfo>,
    version: ProtocolVersion,
    session: Arc<Session>,
    generation: u64,
    /// The session epoch this connection attached at (wills compare it).
    epoch: u64,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Boxed: most connections have none, and it is large.
    will: Option<Box<LastWill>>,
    /// Keep-alive in force (the client's, or our Server Keep Alive); 0 disables it.
    keep_alive: u16,
    last_read: Instant,
    /// Outbound window: the client's Receive Maximum (v5) capped by our max_inflight.
    send_window: usize,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    client_max_packet: usize,
    /// Created on first use: most clients never send a topic alias. Boxed so an idle
    /// connection pays one pointer, not an empty map's 48 bytes.
    #[allow(clippy::box_collection)]
    topic_aliases: Option<Box<HashMap<u16, Arc<str>>>>,
    session_expiry: u32,
    /// Whether the client wants reason strings and user properties on errors (v5).
    problem_information: bool,
    /// Bytes were read while a write was blocked and still need decoding.
    unprocessed_input: bool,
    /// Size of the next read: grows while reads fill it, shrinks when they do not, so an idle
    /// connection holds a small buffer and a busy one reads in large batches.
    read_size: usize,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Validates and authenticates CONNECT, attaches the session and sends CONNACK.
    async fn accept(
        mut stream: S,
        connect: Connect,
        peer: SocketAddr,
        cert_cn: Option<Arc<str>>,
        ctx: Arc<ListenerContext>,
        rbuf: BytesMut,
    ) -> Option<Self> {
        let broker = ctx.broker.clone();
        let cfg = &broker.config;
        let version = connect.protocol;
        let v5 = version.is_v5();
        let mut ack_props = Properties::default();
        let refuse = |code: ReasonCode| {
            let mut out = BytesMut::new();
            let ack = Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: Props::default(),
            });
            encode_packet(&ack, version, &mut out);
            out
        };

        if v5 && connect.properties.authentication_method.is_some() {
            // No enhanced authentication method is supported (yet): say so per spec 4.12.
            let _ = stream
                .write_all(&refuse(ReasonCode::BAD_AUTHENTICATION_METHOD))
                .await;
            return None;
        }

        let mut client_id = connect.client_id.clone();
        if client_id.is_empty() {
            let allowed = match version {
                ProtocolVersion::V5 => true,
                ProtocolVersion::V311 => connect.clean_start,
                ProtocolVersion::V31 => false,
            };
            if !allowed {
                let _ = stream
                    .write_all(&refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID))
                    .await;
                return None;
            }
            client_id = generate_client_id();
            if v5 {
                ack_props.assigned_client_identifier = Some(client_id.clone());
            }
        }

        let mut info = ClientInfo {
            client_id: Arc::from(client_id.as_str()),
            username: connect.username.as_deref().map(Arc::from),
            peer_addr: peer,
            protocol: version,
            listener: ctx.name.clone(),
            cert_common_name: cert_cn,
            attributes: Vec::new(),
            extension: Default::default(),
        };

        let req = ConnectInfo {
            client: info.clone(),
            password: connect.password.clone(),
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            auth_method: None,
        };
        match broker.hooks.admit(req, ctx.allow_anonymous).await {
            Ok(attrs) => info.attributes = attrs,
            Err(code) => {
                info!(client_id = %info.client_id, listener = %ctx.name, %peer, reason = %code, "connection refused");
                let _ = stream.write_all(&refuse(code)).await;
                return None;
            }
        }

        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let session_expiry = requested_expiry.min(cfg.session_expiry_max_s);
        if v5 && session_expiry != requested_expiry {
            ack_props.session_expiry_interval = Some(session_expiry);
        }

        let mut keep_alive = connect.keep_alive;
        if keep_alive > cfg.max_keepalive_s || (keep_alive == 0 && cfg.max_keepalive_s < u16::MAX) {
            if !v5 {
                // A v3 client cannot be told another keep-alive; like Mosquitto, refuse it
                // rather than disconnect it later for following its own setting.
                info!(client_id = %client_id, listener = %ctx.name, %peer, keep_alive, "keep-alive above max_keepalive_s; refused");
                let _ = stream
                    .write_all(&refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID))
                    .await;
                return None;
            }
            keep_alive = cfg.max_keepalive_s;
            ack_props.server_keep_alive = Some(keep_alive);
        }

        if v5 {
            ack_props.receive_maximum = Some(cfg.max_inflight);
            ack_props.maximum_packet_size = Some(cfg.max_packet_size);
            ack_props.topic_alias_maximum = Some(cfg.topic_alias_max);
            if !cfg.retain_available {
                ack_props.retain_available = Some(0);
            }
            if !cfg.shared_subscriptions {
                ack_props.shared_subscription_available = Some(0);
            }
        }

        let client = Arc::new(info);
        let attached = broker.attach(&client.client_id, connect.clean_start, session_expiry);
        if broker.shutdown.is_cancelled() {
            // Attached after `begin_shutdown` woke everyone: wake ourselves to close with 0x8B.
            attached.session.wake.notify_one();
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            code: ReasonCode::SUCCESS,
            properties: ack_props.into(),
        });
        let send_window = if v5 {
            usize::from(
                connect
                    .properties
                    .receive_maximum
                    .unwrap_or(u16::MAX)
                    .min(cfg.max_inflight),
            )
        } else {
            usize::from(cfg.max_inflight)
        };
        Metrics::add(&broker.metrics.connections_total, 1);
        Metrics::add(&broker.metrics.clients_connected, 1);
        info!(
            client_id = %client.client_id,
            listener = %ctx.name,
            %peer,
            protocol = version.as_str(),
            session_present = attached.session_present,
            "client connected"
        );
        broker.hooks.emit(|| Event::ClientConnected(client.clone()));
        let mut conn = Connection {
            stream,
            broker: broker.clone(),
            ctx,
            client,
            version,
            session: attached.session,
            generation: attached.generation,
            epoch: attached.epoch,
            rbuf,
            wbuf: BytesMut::new(),
            will: connect.will.map(Box::new),
            keep_alive,
            last_read: Instant::now(),
            send_window: send_window.max(1),
            client_max_packet: connect
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            topic_aliases: None,
            session_expiry,
            problem_information: connect.properties.request_problem_information != Some(0),
            unprocessed_input: false,
            read_size: READ_MIN,
        };
        // Through `send`, so that it too respects the client's Maximum Packet Size.
        conn.send(&connack);
        if attached.session_present {
            conn.resend_inflight();
        }
        Some(conn)
    }

    /// The connection's main loop; returns why it ended.
    async fn run(&mut self) -> Close {
        let keep_alive = Duration::from_millis(u64::from(self.keep_alive) * 1500);
        let sleep = tokio::time::sleep(keep_alive.max(Duration::from_secs(1)));
        tokio::pin!(sleep);
        loop {
            if let Err(close) = self.flush().await {
                return close;
            }
            if self.unprocessed_input {
                self.unprocessed_input = false;
                if let Err(close) = Box::pin(self.process_input()).await {
                    return close;
                }
                continue;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_BUFFER_KEEP.max(self.read_size) {
                self.rbuf = BytesMut::new();
            }
            if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
                self.rbuf.reserve(self.read_size);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                biased;
                // Shutdown also arrives through the session's wake-up (`Broker::begin_shutdown`),
                // which saves every connection a cancellation future of its own.
                _ = self.session.wake.notified() => {
                    if self.broker.shutdown.is_cancelled() {
                        return Close::error(ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down");
                    }
                    if self.session.state.lock().owner != self.generation {
                        return Close::error(ReasonCode::SESSION_TAKEN_OVER, "session taken over");
                    }
                }
                read = self.stream.read_buf(&mut self.rbuf) => {
                    match read {
                        Ok(0) => return Close::silent("connection closed by client"),
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics.bytes_received, n as u64);
                            self.last_read = Instant::now();
                            if n >= spare {
                                self.read_size = (self.read_size * 2).min(READ_MAX);
                            } else if n < self.read_size / 4 {
                                self.read_size = (self.read_size / 2).max(READ_MIN);
                            }
                            // Boxed: packet handling is a large future, and keeping it inline
                            // would make every idle connection's task that large.
                            if let Err(close) = Box::pin(self.process_input()).await {
                                return close;
                            }
                        }
                        Err(_) => return Close::silent("socket error"),
                    }
                }
                _ = &mut sleep, if self.keep_alive > 0 => {
                    let idle = self.last_read.elapsed();
                    if idle >= keep_alive {
                        return Close::error(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep-alive timeout");
                    }
                    sleep.as_mut().reset((self.last_read + keep_alive).into());
                }
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    async fn process_input(&mut self) -> Result<(), Close> {
        let max = self.broker.config.max_packet_size as usize;
        while let Some(packet) = decode_packet(&mut self.rbuf, Some(self.version), max)? {
            self.handle(packet).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => {
                Metrics::add(&self.broker.metrics.messages_received, 1);
                self.on_publish(p).await
            }
            Packet::PubAck(r) => {
                let acked = self
                    .session
                    .state
                    .lock()
                    .take_inflight(r.packet_id, InflightState::AwaitingPubAck);
                if let Some(f) = acked {
                    let client_id = self.client.client_id.clone();
                    self.broker
                        .hooks
                        .emit(|| Event::MessageAcked(client_id, f.delivery.msg));
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let mut st = self.session.state.lock();
                let found = st.inflight.iter_mut().position(|f| {
                    f.packet_id == r.packet_id && f.state == InflightState::AwaitingPubRec
                });
                let code = match found {
                    Some(i) if r.code.is_error() => {
                        // The receiver refused the message: the exchange ends here.
                        st.inflight.remove(i);
                        return Ok(());
                    }
                    Some(i) => {
                        st.inflight[i].state = InflightState::AwaitingPubComp;
                        ReasonCode::SUCCESS
                    }
                    None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                };
                drop(st);
                self.send(&Packet::PubRel(PubResponse::new(r.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(r) => {
                let done = self
                    .session
                    .state
                    .lock()
                    .take_inflight(r.packet_id, InflightState::AwaitingPubComp);
                if let Some(f) = done {
                    let client_id = self.client.client_id.clone();
                    self.broker
                        .hooks
                        .emit(|| Event::MessageAcked(client_id, f.delivery.msg));
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let code = {
                    let mut st = self.session.state.lock();
                    match st.incoming_qos2.iter().position(|id| *id == r.packet_id) {
                        Some(i) => {
                            st.incoming_qos2.swap_remove(i);
                            ReasonCode::SUCCESS
                        }
                        None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    }
                };
                self.send(&Packet::PubComp(PubResponse::new(r.packet_id, code)));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
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

    async fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        let cfg = &self.broker.config;
        if self.version.is_v5() {
            if let Some(alias) = p.properties.topic_alias {
                if alias == 0 || alias > cfg.topic_alias_max {
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
            }
        }
        if p.topic.is_empty() {
            return Err(Close::error(ReasonCode::PROTOCOL_ERROR, "empty topic name"));
        }
        if topic::level_count(&p.topic) > cfg.max_topic_levels {
            return Err(Close::error(
                ReasonCode::TOPIC_NAME_INVALID,
                "too many topic levels",
            ));
        }
        if p.retain && !cfg.retain_available {
            return Err(Close::error(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain not supported",
            ));
        }
        let packet_id = p.packet_id;
        let qos = p.qos;
        if qos == QoS::ExactlyOnce {
            let st = self.session.state.lock();
            if st.incoming_qos2.contains(&packet_id) {
                // A resend of a message we already routed: acknowledge again, never route twice.
                drop(st);
                self.send(&Packet::PubRec(PubResponse::new(
                    packet_id,
                    ReasonCode::SUCCESS,
                )));
                return Ok(());
            }
            // Only v5 clients were told our Receive Maximum; v3 clients may use any window.
            if self.version.is_v5() && st.incoming_qos2.len() >= usize::from(cfg.max_inflight) {
                return Err(Close::error(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                ));
            }
        }

        let mut code = ReasonCode::SUCCESS;
        if self.broker.hooks.wants(HookSet::AUTHORIZE) {
            if let AclDecision::Deny(c) = self
                .broker
                .hooks
                .authorize(&self.client, Access::Publish, &p.topic, qos)
                .await
            {
                code = c;
            }
        }
        if code == ReasonCode::SUCCESS {
            let msg = Message::from_publish(p, self.client.client_id.clone());
            let routed = if self.broker.hooks.wants(HookSet::MESSAGE_PUBLISH) {
                self.broker.hooks.on_publish(&self.client, msg).await
            } else {
                Some(msg)
            };
            if let Some(msg) = routed {
                let msg = Arc::new(msg);
                let routed = self.broker.publish(msg.clone());
                let client = &self.client;
                self.broker
                    .hooks
                    .emit(|| Event::MessageAccepted(client.clone(), msg));
                if let Some(congested) = routed.congested {
                    self.wait_for_space(&congested).await;
                }
            } else {
                Metrics::add(&self.broker.metrics.publishes_denied, 1);
            }
        } else {
            Metrics::add(&self.broker.metrics.publishes_denied, 1);
            debug!(client_id = %self.client.client_id, listener = %self.ctx.name, reason = %code, "publish denied");
            // v3 has no way to say no: the message is dropped and acknowledged as usual.
            if !self.version.is_v5() {
                code = ReasonCode::SUCCESS;
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResponse::new(packet_id, code))),
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    self.session.state.lock().incoming_qos2.push(packet_id);
                }
                self.send(&Packet::PubRec(PubResponse::new(packet_id, code)));
            }
        }
        Ok(())
    }

    /// Backpressure: a subscriber's queue is filling up, so stop reading from this publisher
    /// until it drains (TCP pushes back on the client) instead of dropping what it sends. A
    /// subscriber that does not catch up within the timeout is marked slow and not waited for.
    async fn wait_for_space(&self, congested: &Arc<Session>) {
        if Arc::ptr_eq(congested, &self.session) {
            return;
        }
        let low = crate::session::low_water(self.broker.config.max_queued_messages);
        let notified = congested.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = congested.state.lock();
            if st.queue.len() <= low || st.owner == 0 || st.slow {
                return;
            }
        }
        if tokio::time::timeout(BACKPRESSURE_TIMEOUT, notified)
            .await
            .is_err()
        {
            congested.state.lock().slow = true;
            warn!(client_id = %congested.client_id, "slow subscriber: publishers no longer wait for it; its overflow is dropped");
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted = Vec::new();
        for (filter, options) in s.filters {
            let code = self.check_subscription(&filter, &options).await?;
            if !code.is_error() {
                let existed = self
                    .broker
                    .subscribe(&self.session, &filter, options, identifier);
                granted.push((filter, options, existed));
            }
            codes.push(code);
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes,
            properties: Props::default(),
        }));
        // Retained messages go out after the SUBACK, through the session queue.
        for (filter, options, existed) in granted {
            self.broker
                .deliver_retained(&self.session, &filter, options, identifier, existed);
            let client = self.client.clone();
            self.broker
                .hooks
                .emit(|| Event::SessionSubscribed(client, filter, options.qos));
        }
        Ok(())
    }

    /// The SUBACK code for one filter: the granted QoS, or why it was refused.
    async fn check_subscription(
        &self,
        filter: &str,
        options: &SubscriptionOptions,
    ) -> Result<ReasonCode, Close> {
        let cfg = &self.broker.config;
        let inner = match topic::parse_shared(filter) {
            Some(Err(())) => return Ok(ReasonCode::TOPIC_FILTER_INVALID),
            Some(Ok(_)) if !cfg.shared_subscriptions => {
                return Ok(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            }
            Some(Ok((_, inner))) => {
                if options.no_local {
                    return Err(Close::error(
                        ReasonCode::PROTOCOL_ERROR,
                        "No Local on a shared subscription",
                    ));
                }
                inner
            }
            None => filter,
        };
        if !topic::valid_topic_filter(inner) || topic::level_count(inner) > cfg.max_topic_levels {
            return Ok(ReasonCode::TOPIC_FILTER_INVALID);
        }
        if self.broker.hooks.wants(HookSet::AUTHORIZE) {
            if let AclDecision::Deny(code) = self
                .broker
                .hooks
                .authorize(&self.client, Access::Subscribe, filter, options.qos)
                .await
            {
                debug!(client_id = %self.client.client_id, listener = %self.ctx.name, filter, "subscribe denied");
                return Ok(if code.is_error() {
                    code
                } else {
                    ReasonCode::NOT_AUTHORIZED
                });
            }
        }
        Ok(ReasonCode(options.qos as u8))
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let existed = self.broker.unsubscribe(&self.session, &filter);
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
            if existed {
                let client = self.client.clone();
                self.broker
                    .hooks
                    .emit(|| Event::SessionUnsubscribed(client, filter));
            }
        }
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
            self.session_expiry = expiry.min(self.broker.config.session_expiry_max_s);
            self.session.state.lock().expiry_interval = self.session_expiry;
        }
        Err(Close {
            code: d.code,
            will: d.code == ReasonCode::DISCONNECT_WITH_WILL,
            notify: false,
            why: "client disconnected",
        })
    }

    /// Appends a control packet to the write buffer.
    fn send(&mut self, packet: &Packet) {
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
    fn resend_inflight(&mut self) {
        let session = self.session.clone();
        let st = session.state.lock();
        for f in &st.inflight {
            match f.state {
                InflightState::AwaitingPubComp => {
                    encode_packet(
                        &Packet::PubRel(PubResponse::new(f.packet_id, ReasonCode::SUCCESS)),
                        self.version,
                        &mut self.wbuf,
                    );
                }
                _ => {
                    let now = Instant::now();
                    encode_delivery(
                        &mut self.wbuf,
                        self.version,
                        &f.delivery,
                        f.packet_id,
                        true,
                        now,
                    );
                }
            }
        }
    }

    /// Moves queued deliveries into the write buffer as far as the inflight window allows.
    fn fill_from_queue(&mut self) {
        let session = self.session.clone();
        let mut st = session.state.lock();
        if st.owner != self.generation {
            return;
        }
        let now = Instant::now();
        let mut sent = 0u64;
        let mut dropped = 0u64;
        // Observers are told after the session lock is released.
        let observe = self.broker.hooks.wants(HookSet::MESSAGE_EVENTS);
        let mut delivered_msgs = Vec::new();
        let mut dropped_msgs = Vec::new();
        let low = crate::session::low_water(self.broker.config.max_queued_messages);
        let was_above = st.queue.len() > low;
        if self.wbuf.capacity() - self.wbuf.len() < 1024 && st.queue.len() > 4 {
            // One allocation for the whole batch instead of doubling up to it.
            let estimate = st
                .queue
                .front()
                .map_or(64, |d| d.msg.payload.len() + d.msg.topic.len() + 16);
            self.wbuf
                .reserve((estimate * st.queue.len()).min(WRITE_BATCH + 1024));
        }
        while self.wbuf.len() < WRITE_BATCH {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.send_window {
                break;
            }
            let Some(d) = st.queue.pop_front() else { break };
            if d.msg.is_expired(now) {
                dropped += 1;
                if observe {
                    dropped_msgs.push((d.msg, "expired"));
                }
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                st.allocate_packet_id()
            };
            let before = self.wbuf.len();
            encode_delivery(&mut self.wbuf, self.version, &d, packet_id, false, now);
            if self.wbuf.len() - before > self.client_max_packet {
                // Never send a client more than its Maximum Packet Size: the message is dropped.
                self.wbuf.truncate(before);
                dropped += 1;
                if observe {
                    dropped_msgs.push((d.msg, "larger than the client's maximum packet size"));
                }
                continue;
            }
            sent += 1;
            if observe {
                delivered_msgs.push(d.msg.clone());
            }
            if d.qos != QoS::AtMostOnce {
                let state = if d.qos == QoS::AtLeastOnce {
                    InflightState::AwaitingPubAck
                } else {
                    InflightState::AwaitingPubRec
                };
                st.inflight.push_back(Inflight {
                    packet_id,
                    delivery: d,
                    state,
                });
            }
        }
        let released = was_above && st.queue.len() <= low;
        if released {
            st.slow = false;
        }
        drop(st);
        if released {
            session.space.notify_waiters();
        }
        if sent > 0 {
            Metrics::add(&self.broker.metrics.messages_sent, sent);
        }
        if dropped > 0 {
            Metrics::add(&self.broker.metrics.messages_dropped, dropped);
        }
        let client_id = &self.client.client_id;
        for msg in delivered_msgs {
            self.broker
                .hooks
                .emit(|| Event::MessageDelivered(client_id.clone(), msg));
        }
        for (msg, why) in dropped_msgs {
            self.broker
                .hooks
                .emit(|| Event::MessageDropped(Some(client_id.clone()), msg, why));
        }
    }

    /// Writes everything that is ready: control packets and as many queued messages as fit.
    async fn flush(&mut self) -> Result<(), Close> {
        loop {
            self.fill_from_queue();
            if self.wbuf.is_empty() {
                return Ok(());
            }
            self.write_out().await?;
            let more = {
                let st = self.session.state.lock();
                !st.queue.is_empty()
                    && (st.inflight.len() < self.send_window
                        || st.queue.front().is_some_and(|d| d.qos == QoS::AtMostOnce))
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// Writes the buffer while still reading, so a client that only reads after its own writes
    /// complete cannot deadlock with us.
    async fn write_out(&mut self) -> Result<(), Close> {
        let mut written = 0;
        let total = self.wbuf.len();
        let read_limit = self.broker.config.max_packet_size as usize + READ_CHUNK;
        let mut eof = false;
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let rbuf = &mut self.rbuf;
        let unprocessed = &mut self.unprocessed_input;
        let result = poll_fn(|cx| {
            while written < total {
                match Pin::new(&mut *stream).poll_write(cx, &wbuf[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
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
                        return Poll::Pending;
                    }
                }
            }
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => Poll::Ready(Err(())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        Metrics::add(&self.broker.metrics.bytes_sent, written as u64);
        self.wbuf.clear();
        if self.wbuf.capacity() > IDLE_BUFFER_KEEP {
            self.wbuf = BytesMut::new();
        }
        result.map_err(|()| Close::silent("write failed"))
    }

    /// Ends the connection: DISCONNECT to v5 clients, will, session detach, events.
    async fn finish(mut self, close: Close) {
        let v5 = self.version.is_v5();
        let still_owner = self.session.state.lock().owner == self.generation;
        if close.notify && v5 {
            let mut props = Properties::default();
            if self.problem_information {
                props.reason_string = Some(close.why.to_string());
            }
            self.send(&Packet::Disconnect(Disconnect {
                code: close.code,
                properties: props.into(),
            }));
        }
        // Acknowledgements already in the buffer go out first, then the DISCONNECT (v5).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if !self.wbuf.is_empty() {
                let _ = self.stream.write_all(&self.wbuf).await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
        Metrics::add(&self.broker.metrics.clients_connected, u64::MAX); // wrapping -1
        let client_id = &self.client.client_id;
        info!(client_id = %client_id, listener = %self.ctx.name, peer = %self.client.peer_addr, reason = close.why, code = %close.code, "client disconnected");
        if close.will {
            if let Some(will) = self.will.take() {
                self.publish_will(*will).await;
            }
        }
        if still_owner {
            self.broker.detach(&self.session, self.generation);
        }
        let client = self.client.clone();
        self.broker
            .hooks
            .emit(|| Event::ClientDisconnected(client, close.why.to_string()));
    }

    async fn publish_will(&self, will: LastWill) {
        if self.broker.hooks.wants(HookSet::AUTHORIZE) {
            let d = self
                .broker
                .hooks
                .authorize(&self.client, Access::Publish, &will.topic, will.qos)
                .await;
            if let AclDecision::Deny(_) = d {
                warn!(client_id = %self.client.client_id, listener = %self.ctx.name, topic = %will.topic, "will message not authorized; dropped");
                return;
            }
        }
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let msg = Message::from_will(&will, self.client.client_id.clone());
        self.broker
            .schedule_will(&self.session, msg, delay, self.epoch);
    }
}

fn encode_delivery(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    d: &crate::session::Delivery,
    packet_id: u16,
    dup: bool,
    now: Instant,
) {
    let out = OutgoingPublish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: &d.msg.topic,
        packet_id,
        properties: &d.msg.properties,
        message_expiry: d.msg.remaining_expiry(now),
        subscription_identifiers: &d.subscription_ids,
        payload: &d.msg.payload,
    };
    encode_publish(&out, version, buf);
}

fn generate_client_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("switchyard-{n:016x}")
}

#[cfg(test)]
mod tests {
    /// Idle memory per connection is a budget (DESIGN.md: under 4 KB); the task's future is the
    /// largest part of it, and an unboxed await in `serve` can silently multiply it.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let broker = crate::broker::Broker::new(Default::default());
        let ctx = std::sync::Arc::new(super::ListenerContext {
            broker,
            name: "tcp:test".into(),
            allow_anonymous: true,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let fut = super::serve(stream, addr, None, ctx);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "serve() future is {size} bytes");
    }
}
