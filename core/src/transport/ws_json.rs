//! The `ws-json` listener: the plain JSON pub/sub protocol many web apps already speak, bridged
//! onto the same topics, retained messages, auth and ACL as MQTT clients.
//!
//! Client → server: `{"type":"subscribe","topic":F}`, `{"type":"unsubscribe","topic":F}`,
//! `{"type":"publish","topic":T,"data":D,"qos":0,"retain":false}`, optionally first
//! `{"type":"connect","username":U,"password":P}`. Server → client: `{"type":"success",...}`,
//! `{"type":"error","msg":...}` and `{"type":"message","topic":T,"data":D}`.

use crate::connection::ListenerContext;
use crate::hooks::{Access, AclDecision, ClientInfo, ConnectInfo, Event, HookSet};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::protocol::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use crate::topic;
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

type Reply = Result<Value, String>;

struct Credentials {
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
}

fn parse_query(query: &str) -> Credentials {
    let mut c = Credentials {
        username: None,
        password: None,
        client_id: None,
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "username" => c.username = Some(v),
            "password" => c.password = Some(v),
            "clientId" | "client_id" => c.client_id = Some(v),
            _ => {}
        }
    }
    c
}

/// Payload → JSON `data`: JSON stays JSON, other UTF-8 becomes a string, binary becomes base64.
fn payload_to_data(payload: &[u8]) -> (Value, bool) {
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        return (v, false);
    }
    match std::str::from_utf8(payload) {
        Ok(s) => (Value::String(s.to_string()), false),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            true,
        ),
    }
}

/// JSON `data` → payload: a string is sent as its text, anything else as its JSON encoding.
fn data_to_payload(data: &Value) -> Bytes {
    match data {
        Value::String(s) => Bytes::from(s.clone().into_bytes()),
        Value::Null => Bytes::new(),
        other => Bytes::from(other.to_string().into_bytes()),
    }
}

pub(crate) async fn serve<S>(
    mut ws: WebSocketStream<S>,
    peer: SocketAddr,
    query: String,
    ctx: Arc<ListenerContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let broker = ctx.broker.clone();
    let mut creds = parse_query(&query);
    let mut session_parts = None;
    let shutdown = broker.shutdown.clone();
    loop {
        let wake = async {
            match &session_parts {
                Some((session, _, _)) => {
                    let session: &Arc<crate::session::Session> = session;
                    session.wake.notified().await
                }
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake => {
                if let Some((session, generation, _)) = &session_parts {
                    if !forward_deliveries(&mut ws, session, *generation, &broker).await {
                        break;
                    }
                }
                continue;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
            Some(Ok(WsMessage::Text(t))) => t.to_string(),
            Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
        };
        Metrics::add(&broker.metrics.bytes_received, text.len() as u64);
        let request: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                if send(
                    &mut ws,
                    json!({"type": "error", "msg": "frame is not a JSON object"}),
                )
                .await
                .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let kind = request
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if session_parts.is_none() {
            if kind == "connect" {
                let s = |k: &str| request.get(k).and_then(Value::as_str).map(str::to_string);
                creds.username = s("username").or(creds.username.take());
                creds.password = s("password").or(creds.password.take());
                creds.client_id = s("clientId").or(creds.client_id.take());
            }
            match authenticate(&ctx, peer, &creds).await {
                Ok(client) => {
                    let attached = broker.attach(&client.client_id, true, 0);
                    info!(client_id = %client.client_id, listener = %ctx.name, %peer, "ws-json client connected");
                    Metrics::add(&broker.metrics.clients_connected, 1);
                    Metrics::add(&broker.metrics.connections_total, 1);
                    broker.hooks.emit(|| Event::ClientConnected(client.clone()));
                    session_parts = Some((attached.session, attached.generation, client));
                }
                Err(code) => {
                    let _ = send(&mut ws, json!({"type": "error", "msg": format!("connection refused: {}", code.describe())})).await;
                    let _ = ws.close(None).await;
                    return;
                }
            }
            if kind == "connect" {
                if send(&mut ws, json!({"type": "success", "op": "connect"}))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        }
        let Some((session, _, client)) = &session_parts else {
            break;
        };
        let reply = match kind.as_str() {
            "subscribe" => subscribe(&ctx, session, client, &request).await,
            "unsubscribe" => unsubscribe(&ctx, session, &request),
            "publish" => publish(&ctx, client, &request).await,
            "ping" => Ok(json!({"type": "pong"})),
            "connect" => Err("already connected".to_string()),
            other => Err(format!("unknown type {other:?}")),
        };
        let reply = reply.unwrap_or_else(|msg| json!({"type": "error", "msg": msg}));
        if send(&mut ws, reply).await.is_err() {
            break;
        }
        // Retained messages from a subscribe are waiting in the queue.
        if let Some((session, generation, _)) = &session_parts {
            if !forward_deliveries(&mut ws, session, *generation, &broker).await {
                break;
            }
        }
    }
    if let Some((session, generation, client)) = session_parts {
        Metrics::add(&broker.metrics.clients_connected, u64::MAX);
        broker.detach(&session, generation);
        info!(client_id = %client.client_id, listener = %ctx.name, %peer, "ws-json client disconnected");
        broker
            .hooks
            .emit(|| Event::ClientDisconnected(client, "closed".into()));
    }
    let _ = ws.close(None).await;
}

async fn send<S>(ws: &mut WebSocketStream<S>, v: Value) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .map_err(|_| ())
}

async fn authenticate(
    ctx: &ListenerContext,
    peer: SocketAddr,
    creds: &Credentials,
) -> Result<Arc<ClientInfo>, ReasonCode> {
    let broker = &ctx.broker;
    let client_id = match &creds.client_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            use rand::Rng;
            format!("ws-json-{:016x}", rand::rng().random::<u64>())
        }
    };
    let mut info = ClientInfo {
        client_id: Arc::from(client_id.as_str()),
        username: creds.username.as_deref().map(Arc::from),
        peer_addr: peer,
        protocol: ProtocolVersion::V311,
        listener: ctx.name.clone(),
        cert_common_name: None,
        attributes: Vec::new(),
        extension: Default::default(),
    };
    let req = ConnectInfo {
        client: info.clone(),
        password: creds
            .password
            .as_ref()
            .map(|p| Bytes::from(p.clone().into_bytes())),
        clean_start: true,
        keep_alive: 0,
        auth_method: None,
    };
    info.attributes = broker.hooks.admit(req, ctx.allow_anonymous).await?;
    Ok(Arc::new(info))
}

fn topic_field(request: &Value) -> Result<&str, String> {
    request
        .get("topic")
        .and_then(Value::as_str)
        .ok_or_else(|| "missing string field \"topic\"".to_string())
}

fn qos_field(request: &Value) -> Result<QoS, String> {
    match request.get("qos") {
        None | Some(Value::Null) => Ok(QoS::AtMostOnce),
        Some(v) => v
            .as_u64()
            .and_then(|q| QoS::from_u8(u8::try_from(q).ok()?))
            .ok_or_else(|| "qos must be 0, 1 or 2".to_string()),
    }
}

async fn authorized(
    ctx: &ListenerContext,
    client: &ClientInfo,
    access: Access,
    topic: &str,
    qos: QoS,
) -> bool {
    let hooks = &ctx.broker.hooks;
    !hooks.wants(HookSet::AUTHORIZE)
        || !matches!(
            hooks.authorize(client, access, topic, qos).await,
            AclDecision::Deny(_)
        )
}

async fn subscribe(
    ctx: &ListenerContext,
    session: &Arc<crate::session::Session>,
    client: &Arc<ClientInfo>,
    request: &Value,
) -> Reply {
    let filter = topic_field(request)?;
    let qos = qos_field(request)?;
    let inner = match topic::parse_shared(filter) {
        Some(Ok((_, inner))) => inner,
        Some(Err(())) => return Err(format!("invalid topic filter {filter:?}")),
        None => filter,
    };
    if !topic::valid_topic_filter(inner) {
        return Err(format!("invalid topic filter {filter:?}"));
    }
    if !authorized(ctx, client, Access::Subscribe, filter, qos).await {
        return Err(format!("not authorized to subscribe to {filter:?}"));
    }
    let options = SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendOnSubscribe,
    };
    let existed = ctx.broker.subscribe(session, filter, options, None);
    ctx.broker
        .deliver_retained(session, filter, options, None, existed);
    let c = client.clone();
    ctx.broker
        .hooks
        .emit(|| Event::SessionSubscribed(c, filter.to_string(), qos));
    Ok(json!({"type": "success", "op": "subscribe", "topic": filter}))
}

fn unsubscribe(
    ctx: &ListenerContext,
    session: &Arc<crate::session::Session>,
    request: &Value,
) -> Reply {
    let filter = topic_field(request)?;
    if !ctx.broker.unsubscribe(session, filter) {
        return Err(format!("not subscribed to {filter:?}"));
    }
    Ok(json!({"type": "success", "op": "unsubscribe", "topic": filter}))
}

async fn publish(ctx: &ListenerContext, client: &Arc<ClientInfo>, request: &Value) -> Reply {
    let topic_name = topic_field(request)?;
    if !topic::valid_topic_name(topic_name) {
        return Err(format!("invalid topic name {topic_name:?}"));
    }
    let qos = qos_field(request)?;
    let retain = request
        .get("retain")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let payload = data_to_payload(request.get("data").unwrap_or(&Value::Null));
    let broker = &ctx.broker;
    Metrics::add(&broker.metrics.messages_received, 1);
    if !authorized(ctx, client, Access::Publish, topic_name, qos).await {
        Metrics::add(&broker.metrics.publishes_denied, 1);
        return Err(format!("not authorized to publish to {topic_name:?}"));
    }
    let mut msg = Message::new(topic_name, payload, qos, retain);
    msg.publisher = Some(client.client_id.clone());
    if broker.hooks.wants(HookSet::MESSAGE_PUBLISH) {
        match broker.hooks.on_publish(client, msg).await {
            Some(m) => msg = m,
            None => {
                Metrics::add(&broker.metrics.publishes_denied, 1);
                return Err("message dropped by a hook".into());
            }
        }
    }
    broker.publish(Arc::new(msg));
    Ok(json!({"type": "success", "op": "publish", "topic": topic_name}))
}

/// Sends every queued delivery as a `message` frame. JSON clients have no acknowledgements, so
/// messages are handed over at most once.
async fn forward_deliveries<S>(
    ws: &mut WebSocketStream<S>,
    session: &Arc<crate::session::Session>,
    generation: u64,
    broker: &crate::broker::Broker,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let batch: Vec<_> = {
        let mut st = session.state.lock();
        if st.owner != generation {
            return false;
        }
        st.queue.drain(..).collect()
    };
    let now = std::time::Instant::now();
    for d in batch {
        if d.msg.is_expired(now) {
            continue;
        }
        let (data, binary) = payload_to_data(&d.msg.payload);
        let mut frame = json!({"type": "message", "topic": &*d.msg.topic, "data": data});
        if binary {
            frame["encoding"] = json!("base64");
        }
        if d.retain {
            frame["retain"] = json!(true);
        }
        let text = frame.to_string();
        Metrics::add(&broker.metrics.bytes_sent, text.len() as u64);
        Metrics::add(&broker.metrics.messages_sent, 1);
        if ws.feed(WsMessage::Text(text.into())).await.is_err() {
            return false;
        }
    }
    if ws.flush().await.is_err() {
        return false;
    }
    debug!(client_id = %session.client_id, "ws-json deliveries flushed");
    true
}
