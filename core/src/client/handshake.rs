//! The start of an MQTT connection: CONNECT within the connect timeout, its checks,
//! authentication, the session attach and CONNACK.

use super::connection::{Connection, READ_MIN};
use super::enhanced_auth;
use super::outbound::OutAliases;
use super::pipeline::Attachment;
use super::ListenerContext;
use crate::guard::Refusal;
use crate::hooks::{Admission, AuthStep, ClientInfo, ConnectFacts, ConnectInfo, Event};
use crate::metrics::{Limit, Metrics};
use crate::protocol::*;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

/// Serves one accepted stream until it closes. Never panics on client input.
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert_cn: Option<Arc<str>>,
    ctx: Arc<ListenerContext>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The handshake and shut-down phases are boxed: only the connection and its main loop stay
    // in the task for the connection's lifetime, which keeps idle connections small. Not an
    // `async fn`: its arguments would keep their place in the future after being moved out.
    let handshake = Box::pin(handshake(stream, peer, cert_cn, ctx));
    async move {
        let Some(mut conn) = handshake.await else {
            return;
        };
        let close = conn.run().await;
        Box::pin(conn.finish(close)).await;
    }
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
    let started = Instant::now();
    let deadline = Duration::from_secs(broker.config.connect_timeout_s);
    let read = tokio::time::timeout(deadline, read_connect(&mut stream, &mut rbuf, max_packet));
    let (connect, len) = match read.await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return None,
        Ok(Err(DecodeError::UnsupportedProtocolVersion(level))) => {
            debug!(listener = %ctx.name, %peer, level, "unsupported protocol level");
            // A level we do not know gets the 3.1.1 answer (return code 0x01), which every
            // client generation can read.
            refuse(
                &mut stream,
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ProtocolVersion::V311,
            )
            .await;
            return None;
        }
        Ok(Err(e)) => {
            info!(listener = %ctx.name, %peer, error = %e, "invalid CONNECT; closing");
            return None;
        }
        Err(_) => {
            broker.metrics.limit_hit(Limit::HandshakeTimeout);
            debug!(listener = %ctx.name, %peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    Metrics::add(&broker.metrics.bytes_received, len as u64);
    accept(stream, *connect, peer, cert_cn, ctx, rbuf, started).await
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

/// How long a refusal may take to go out before the socket is simply closed.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Sends a CONNACK refusing the connection and closes the stream. Flushed: over TLS and
/// WebSocket the bytes can stay in the stream's own buffer after the write, and the client
/// would see only a closed socket instead of its reason code. Bounded, as a client that does
/// not read must not hold the task.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, code: ReasonCode, version: ProtocolVersion) {
    let ack = refusal(code, version);
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(&ack).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// An encoded CONNACK refusing the connection.
fn refusal(code: ReasonCode, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties: Props::default(),
    });
    encode_packet(&ack, version, &mut out);
    out
}

/// Validates and authenticates CONNECT, attaches the session and sends CONNACK.
async fn accept<S>(
    mut stream: S,
    connect: Connect,
    peer: SocketAddr,
    cert_cn: Option<Arc<str>>,
    ctx: Arc<ListenerContext>,
    rbuf: BytesMut,
    accepted_at: Instant,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let broker = ctx.broker.clone();
    let cfg = &broker.config;
    let version = connect.protocol;
    let v5 = version.is_v5();
    let mut ack_props = Properties::default();

    // A will is published later, from the broker's own context: held to the same topic limits
    // as a PUBLISH now, while the client can still be told.
    if let Some(will) = &connect.will {
        if crate::topic::level_count(&will.topic) > cfg.max_topic_levels {
            info!(listener = %ctx.name, %peer, "will topic has too many levels; refused");
            refuse(&mut stream, ReasonCode::TOPIC_NAME_INVALID, version).await;
            return None;
        }
        // `$` topics are the broker's, for a will as for a PUBLISH (the sessions fuzz target
        // found a retained will on `$SYS/x` being stored and sent to `$SYS/#` subscribers).
        if will.topic.starts_with('$') {
            info!(listener = %ctx.name, %peer, topic = %will.topic, "will on a $ topic; refused");
            refuse(&mut stream, ReasonCode::NOT_AUTHORIZED, version).await;
            return None;
        }
    }

    let mut client_id = connect.client_id.clone();
    if client_id.is_empty() {
        let allowed = match version {
            ProtocolVersion::V5 => true,
            ProtocolVersion::V311 => connect.clean_start,
            ProtocolVersion::V31 => false,
        };
        if !allowed {
            refuse(
                &mut stream,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                version,
            )
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

    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry = requested_expiry.min(cfg.session_expiry_max_s);
    let facts = ConnectFacts {
        keep_alive: connect.keep_alive,
        clean_start: connect.clean_start,
        session_expiry,
        at: std::time::SystemTime::now(),
    };
    // Every CONNACK from here on is announced, refusals included.
    let connack_event = |info: &ClientInfo, code: ReasonCode| {
        broker.hooks.emit(|| Event::ClientConnack {
            client: Arc::new(info.clone()),
            facts,
            code,
        });
    };

    // The door: bans (flapping or listed) and the session limit, before any authentication
    // work is spent on the client.
    let refused = match broker.guard.admit_client(
        &client_id,
        connect.username.as_deref(),
        peer.ip(),
        &broker.metrics,
    ) {
        Err(Refusal::Banned(who)) => Some((ReasonCode::BANNED, format!("banned ({who})"))),
        Err(_) => Some((ReasonCode::SERVER_BUSY, "refused".to_string())),
        Ok(()) => {
            let max = broker.guard.limits.max_sessions;
            let new_session = connect.clean_start || broker.session(&client_id).is_none();
            (max > 0 && new_session && broker.session_count() >= max).then(|| {
                broker.metrics.limit_hit(Limit::Sessions);
                let code = if v5 {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::SERVER_UNAVAILABLE
                };
                (code, "max_sessions reached".to_string())
            })
        }
    };
    if let Some((code, why)) = refused {
        info!(client_id = %client_id, listener = %ctx.name, %peer, reason = %why, "connection refused");
        refuse(&mut stream, code, version).await;
        connack_event(&info, code);
        return None;
    }

    // Enhanced authentication is v5 only; a v3 CONNECT has no properties to name a method.
    let auth = match &connect.properties.authentication_method {
        Some(method) if v5 => Some(AuthStep {
            method: method.clone(),
            data: connect.properties.authentication_data.clone(),
            state: Vec::new(),
        }),
        _ => None,
    };
    let req = ConnectInfo {
        client: info.clone(),
        password: connect.password.clone(),
        clean_start: connect.clean_start,
        keep_alive: connect.keep_alive,
        auth,
    };
    let mut rbuf = rbuf;
    let admitted = if req.auth.is_some() {
        let method = req.auth.as_ref().map(|a| a.method.clone());
        let deadline = tokio::time::Instant::from_std(accepted_at)
            + Duration::from_secs(cfg.connect_timeout_s);
        enhanced_auth::exchange(&mut stream, &mut rbuf, &ctx, req, deadline)
            .await
            .map(|a| {
                ack_props.authentication_method = method;
                ack_props.authentication_data = a.auth_data;
                a.attributes
            })
    } else {
        match broker.hooks.admit(&req, ctx.allow_anonymous).await {
            Ok(Admission::Admit { attributes, .. }) => Ok(attributes),
            Ok(Admission::Challenge { .. }) => Err(Some(ReasonCode::NOT_AUTHORIZED)),
            Err(code) => Err(Some(code)),
        }
    };
    if let Ok(_) | Err(Some(_)) = &admitted {
        let code = match &admitted {
            Err(Some(code)) => *code,
            _ => ReasonCode::SUCCESS,
        };
        broker.hooks.emit(|| Event::AuthnComplete {
            client: Arc::new(info.clone()),
            code,
        });
    }
    match admitted {
        Ok(attrs) => info.attributes = attrs,
        Err(Some(code)) => {
            info!(client_id = %info.client_id, listener = %ctx.name, %peer, reason = %code, "connection refused");
            refuse(&mut stream, code, version).await;
            connack_event(&info, code);
            return None;
        }
        // The client went away, or its enhanced authentication ran out of time.
        Err(None) => {
            debug!(client_id = %info.client_id, listener = %ctx.name, %peer, "closed during authentication");
            return None;
        }
    }

    if v5 && session_expiry != requested_expiry {
        ack_props.session_expiry_interval = Some(session_expiry);
    }

    let mut keep_alive = connect.keep_alive;
    if keep_alive > cfg.max_keepalive_s || (keep_alive == 0 && cfg.max_keepalive_s < u16::MAX) {
        // The server's limit applies. A v5 client is told (Server Keep Alive); a v3 client
        // cannot be, so it is accepted, as Mosquitto does, and disconnected only when silent
        // for 1.5 × max_keepalive_s.
        keep_alive = cfg.max_keepalive_s;
        if v5 {
            ack_props.server_keep_alive = Some(keep_alive);
        } else {
            debug!(client_id = %client_id, listener = %ctx.name, %peer, asked = connect.keep_alive, keep_alive, "v3 keep-alive above max_keepalive_s; the server's limit applies");
        }
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
    let (att, session_present) = match Attachment::open(&broker, client.clone(), facts) {
        Ok(opened) => opened,
        Err(e) => {
            info!(client_id = %client.client_id, listener = %ctx.name, %peer, user = client.username.as_deref(), error = %e, "connection refused");
            refuse(&mut stream, ReasonCode::NOT_AUTHORIZED, version).await;
            connack_event(&client, ReasonCode::NOT_AUTHORIZED);
            return None;
        }
    };
    connack_event(&client, ReasonCode::SUCCESS);
    let connack = Packet::ConnAck(ConnAck {
        session_present,
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
    // The client's maximum, capped by ours: the map keeps each aliased topic alive, and a
    // client asking for 65535 aliases must not make the broker pin that many topic names.
    let out_aliases = match connect.properties.topic_alias_maximum {
        Some(max) if v5 && max > 0 && cfg.topic_alias_max > 0 => {
            Some(Box::new(OutAliases::new(max.min(cfg.topic_alias_max))))
        }
        _ => None,
    };
    let mut conn = Connection {
        stream,
        att,
        ctx,
        version,
        rbuf,
        wbuf: BytesMut::new(),
        topics: TopicCache::default(),
        will: connect.will.map(Box::new),
        keep_alive,
        last_read: Instant::now(),
        send_window: send_window.max(1),
        client_max_packet: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        topic_aliases: None,
        out_aliases,
        session_expiry,
        problem_information: connect.properties.request_problem_information != Some(0),
        unprocessed_input: false,
        read_size: READ_MIN,
        write_timer: None,
    };
    // Through `send`, so that it too respects the client's Maximum Packet Size.
    conn.send(&connack);
    if session_present {
        conn.resend_inflight();
    }
    Some(conn)
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
