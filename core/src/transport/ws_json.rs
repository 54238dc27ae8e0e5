//! The `ws-json` listener: the plain JSON pub/sub protocol many web apps already speak, bridged
//! onto the same topics, retained messages, auth and ACL as MQTT clients.
//!
//! Client → server: `{"type":"subscribe","topic":F}`, `{"type":"unsubscribe","topic":F}`,
//! `{"type":"publish","topic":T,"data":D,"qos":0,"retain":false}`, optionally first
//! `{"type":"connect","username":U,"password":P}`. Server → client: `{"type":"success",...}`,
//! `{"type":"error","msg":...}` and `{"type":"message","topic":T,"data":D}`.

//!
//! Only the framing lives here: every operation goes through the client pipeline
//! ([`crate::client::pipeline`]), so JSON clients get the same validation, authorization, hooks,
//! rules, events and backpressure as MQTT clients.

use crate::broker::live::LiveClient;
use crate::broker::Broker;
use crate::client::pipeline::{PublishRefused, SubscribeRefused};
use crate::client::{Attachment, ListenerContext};
use crate::hooks::{Admission, ClientInfo, ConnectInfo};
use crate::message::Message;
use crate::metrics::{Limit, Metrics};
use crate::protocol::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use crate::session::{Acks, Delivery, Outlet, Standing};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// The reply frame, `None` when the operation already replied itself.
type Reply = Result<Option<Value>, String>;

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
    let mut att: Option<Attachment> = None;
    let shutdown = broker.shutdown.clone();
    // Until a first request opens the session, the connect timeout runs, as for CONNECT.
    let unopened = tokio::time::sleep(std::time::Duration::from_secs(
        broker.config.connect_timeout_s,
    ));
    tokio::pin!(unopened);
    let why = loop {
        let wake = async {
            match &att {
                Some(a) => a.session.notified().await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break "server shutting down",
            _ = &mut unopened, if att.is_none() => {
                broker.metrics.limit_hit(Limit::HandshakeTimeout);
                break "no request within the connect timeout";
            }
            _ = wake => {
                if let Some(a) = &att {
                    match a.standing() {
                        Standing::Owner => {}
                        Standing::TakenOver => break "session taken over",
                        Standing::Evicted => break "slow subscriber: its queue overflowed",
                        Standing::Kicked => break "kicked by an operator",
                    }
                    if !forward_deliveries(&mut ws, a).await {
                        break "write failed";
                    }
                }
                continue;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break "closed",
            Some(Ok(WsMessage::Text(t))) => t.to_string(),
            Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
        };
        Metrics::add(&broker.metrics.bytes_received, text.len() as u64);
        if let Some(a) = &att {
            LiveClient::count(&a.live.bytes_in, text.len() as u64);
        }
        let request: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let error = json!({"type": "error", "msg": "frame is not a JSON object"});
                if send(&mut ws, &broker, error).await.is_err() {
                    break "write failed";
                }
                continue;
            }
        };
        let kind = request
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if att.is_none() {
            if kind == "connect" {
                let s = |k: &str| request.get(k).and_then(Value::as_str).map(str::to_string);
                creds.username = s("username").or(creds.username.take());
                creds.password = s("password").or(creds.password.take());
                creds.client_id = s("clientId").or(creds.client_id.take());
            }
            match open(&ctx, peer, &creds).await {
                Ok(a) => att = Some(a),
                Err(code) => {
                    let _ = send(&mut ws, &broker, json!({"type": "error", "msg": format!("connection refused: {}", code.describe())})).await;
                    let _ = ws.close(None).await;
                    return;
                }
            }
            if kind == "connect" {
                if send(
                    &mut ws,
                    &broker,
                    json!({"type": "success", "op": "connect"}),
                )
                .await
                .is_err()
                {
                    break "write failed";
                }
                continue;
            }
        }
        let Some(a) = &att else {
            break "closed";
        };
        let reply = match kind.as_str() {
            "subscribe" => subscribe(a, &request, &mut ws).await,
            "unsubscribe" => unsubscribe(a, &request),
            "publish" => publish(a, &request).await,
            "ping" => Ok(Some(json!({"type": "pong"}))),
            "connect" => Err("already connected".to_string()),
            other => Err(format!("unknown type {other:?}")),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(msg) => Some(json!({"type": "error", "msg": msg})),
        };
        if let Some(reply) = reply {
            if send(&mut ws, &broker, reply).await.is_err() {
                break "write failed";
            }
        }
        // Retained messages from a subscribe are waiting in the queue.
        if !forward_deliveries(&mut ws, a).await {
            break "write failed";
        }
    };
    if let Some(a) = att {
        debug!(client_id = %a.client.client_id, listener = %ctx.name, %peer, reason = why, "ws-json client disconnected");
        a.close(why);
    }
    // The close frame is a courtesy: a peer that does not read cannot hold the task.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
}

async fn send<S>(ws: &mut WebSocketStream<S>, broker: &Broker, v: Value) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within_write_timeout(broker, ws.send(WsMessage::Text(v.to_string().into()))).await
}

/// Authenticates the client and attaches it to a fresh session (JSON clients have no
/// persistent sessions).
async fn open(
    ctx: &ListenerContext,
    peer: SocketAddr,
    creds: &Credentials,
) -> Result<Attachment, ReasonCode> {
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
        auth: None,
    };
    info.attributes = match broker.hooks.admit(&req, ctx.allow_anonymous).await? {
        Admission::Admit { attributes, .. } => attributes,
        // No AUTH packets in JSON framing: a hook that would challenge cannot be answered.
        Admission::Challenge { .. } => return Err(ReasonCode::NOT_AUTHORIZED),
    };
    let facts = crate::hooks::ConnectFacts {
        keep_alive: 0,
        clean_start: true,
        session_expiry: 0,
        at: std::time::SystemTime::now(),
    };
    let (att, _) =
        Attachment::open(broker, Arc::new(info), facts).map_err(|_| ReasonCode::NOT_AUTHORIZED)?;
    Ok(att)
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

/// Subscribes, replies, then lets the retained messages follow the reply (as MQTT's SUBACK).
async fn subscribe<S>(a: &Attachment, request: &Value, ws: &mut WebSocketStream<S>) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let filter = topic_field(request)?;
    let options = SubscriptionOptions {
        qos: qos_field(request)?,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendOnSubscribe,
    };
    let grant = match a.check_subscribe(filter, &options).await {
        Ok(grant) => grant,
        Err(SubscribeRefused::Code(ReasonCode::NOT_AUTHORIZED)) => {
            return Err(format!("not authorized to subscribe to {filter:?}"))
        }
        Err(SubscribeRefused::Code(code)) => {
            return Err(format!(
                "subscribe to {filter:?} refused: {}",
                code.describe()
            ))
        }
        Err(SubscribeRefused::Protocol(why)) => return Err(why.to_string()),
    };
    let granted = a.subscribe(filter.to_string(), options, None, grant);
    let ok = json!({"type": "success", "op": "subscribe", "topic": filter});
    let sent = send(ws, &a.broker, ok).await;
    a.complete_subscribe(granted).await;
    match sent {
        Ok(()) => Ok(None),
        Err(()) => Err("write failed".into()),
    }
}

fn unsubscribe(a: &Attachment, request: &Value) -> Reply {
    let filter = topic_field(request)?;
    if !a.unsubscribe(filter) {
        return Err(format!("not subscribed to {filter:?}"));
    }
    Ok(Some(
        json!({"type": "success", "op": "unsubscribe", "topic": filter}),
    ))
}

async fn publish(a: &Attachment, request: &Value) -> Reply {
    let topic_name = topic_field(request)?;
    // The framing's own check, as MQTT's decoder makes it; the pipeline checks the rest.
    if !crate::topic::valid_topic_name(topic_name) {
        return Err(format!("invalid topic name {topic_name:?}"));
    }
    let qos = qos_field(request)?;
    let retain = request
        .get("retain")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let payload = data_to_payload(request.get("data").unwrap_or(&Value::Null));
    let mut msg = Message::new(topic_name, payload, qos, retain);
    msg.publisher = Some(a.client.client_id.clone());
    match a.publish(msg).await {
        Ok(()) => Ok(Some(
            json!({"type": "success", "op": "publish", "topic": topic_name}),
        )),
        Err(PublishRefused::Denied(_)) => {
            Err(format!("not authorized to publish to {topic_name:?}"))
        }
        Err(PublishRefused::Dropped) => Err("message dropped by a hook".into()),
        Err(PublishRefused::Invalid(_, why)) => Err(format!("{why}: {topic_name:?}")),
    }
}

/// Collects deliveries as `message` frames.
#[derive(Default)]
struct JsonOutlet {
    frames: Vec<String>,
    bytes: usize,
}

/// Bytes of frames gathered before they are written.
const JSON_BATCH: usize = 64 * 1024;

impl Outlet for JsonOutlet {
    fn has_room(&self) -> bool {
        self.bytes < JSON_BATCH
    }

    fn put(&mut self, d: &Delivery, _packet_id: u16, _dup: bool, _now: Instant) -> bool {
        let (data, binary) = payload_to_data(&d.msg.payload);
        let mut frame = json!({"type": "message", "topic": &*d.msg.topic, "data": data});
        if binary {
            frame["encoding"] = json!("base64");
        }
        if d.retain {
            frame["retain"] = json!(true);
        }
        let text = frame.to_string();
        self.bytes += text.len();
        self.frames.push(text);
        true
    }

    fn put_release(&mut self, _packet_id: u16) {}
}

/// Sends what the session holds as `message` frames. JSON clients have no acknowledgements,
/// so messages are handed over at most once; draining releases held-back publishers.
async fn forward_deliveries<S>(ws: &mut WebSocketStream<S>, a: &Attachment) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut out = JsonOutlet::default();
        a.fill(Acks::None, &mut out);
        if out.frames.is_empty() {
            return true;
        }
        Metrics::add(&a.broker.metrics.bytes_sent, out.bytes as u64);
        LiveClient::count(&a.live.bytes_out, out.bytes as u64);
        let write = async {
            for text in out.frames {
                ws.feed(WsMessage::Text(text.into())).await?;
            }
            ws.flush().await
        };
        if within_write_timeout(&a.broker, write).await.is_err() {
            return false;
        }
    }
}

/// Runs a write, failing it when the client takes nothing for `write_timeout_s` (counted).
async fn within_write_timeout<F, E>(broker: &Broker, write: F) -> Result<(), ()>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let secs = broker.config.write_timeout_s;
    if secs == 0 {
        return write.await.map_err(|_| ());
    }
    match tokio::time::timeout(std::time::Duration::from_secs(secs), write).await {
        Ok(r) => r.map_err(|_| ()),
        Err(_) => {
            broker.metrics.limit_hit(Limit::WriteTimeout);
            Err(())
        }
    }
}
