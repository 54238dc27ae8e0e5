//! Clients, sessions, subscriptions, topics, retained messages, publishing and bans.

use super::{ApiError, ApiResult, Body, Params, Segments, Shared};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::broker::live::LiveClient;
use switchyard_core::broker::DiscardError;
use switchyard_core::clock::unix_ms;
use switchyard_core::guard::bans::BanKey;
use switchyard_core::hooks::ClientInfo;
use switchyard_core::message::Message;
use switchyard_core::protocol::{Properties, ProtocolVersion, QoS};
use switchyard_core::topic;

/// Most rows one page may hold.
const MAX_LIMIT: usize = 1000;

#[derive(serde::Deserialize, Default)]
pub struct ClientQuery {
    /// Substring of the client id.
    clientid: Option<String>,
    username: Option<String>,
    /// Substring of the listener's name (`tcp:0.0.0.0:1883`).
    listener: Option<String>,
    /// Prefix of the peer's address.
    ip: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

/// Page `page` (from 1) of `limit` items, each made a row by `row`, with the paging facts.
/// Only the page's rows are built: a million clients cost a filter, not a million documents.
fn paged<T>(
    items: Vec<T>,
    page: Option<usize>,
    limit: Option<usize>,
    row: impl Fn(&T) -> Value,
) -> Value {
    let limit = limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let page = page.unwrap_or(1).max(1);
    let total = items.len();
    let data: Vec<Value> = items
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(row)
        .collect();
    json!({ "data": data, "page": page, "limit": limit, "total": total })
}

fn protocol_name(p: ProtocolVersion) -> &'static str {
    match p {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

fn client_row(l: &LiveClient) -> Value {
    let c = &l.client;
    json!({
        "clientid": &*c.client_id,
        "username": c.username.as_deref(),
        "listener": &*c.listener,
        "peer": c.peer_addr.to_string(),
        "protocol": protocol_name(c.protocol),
        "keep_alive": l.keep_alive,
        "connected_at_ms": unix_ms(l.connected_at),
        "bytes_in": LiveClient::get(&l.bytes_in),
        "bytes_out": LiveClient::get(&l.bytes_out),
        "messages_in": LiveClient::get(&l.messages_in),
        "messages_out": LiveClient::get(&l.messages_out),
    })
}

pub async fn list(State(api): State<Shared>, Params(q): Params<ClientQuery>) -> ApiResult {
    let contains = |have: Option<&str>, want: &Option<String>| match want {
        None => true,
        Some(w) => have.is_some_and(|h| h.contains(w.as_str())),
    };
    let mut clients = api.broker.live.list();
    clients.retain(|l| {
        let c = &l.client;
        contains(Some(&c.client_id), &q.clientid)
            && contains(c.username.as_deref(), &q.username)
            && contains(Some(&c.listener), &q.listener)
            && q.ip
                .as_ref()
                .is_none_or(|ip| c.peer_addr.ip().to_string().starts_with(ip.as_str()))
    });
    Ok(Json(paged(clients, q.page, q.limit, |l| client_row(l))))
}

pub async fn detail(State(api): State<Shared>, Segments(id): Segments<String>) -> ApiResult {
    let live = api
        .broker
        .live
        .get(&id)
        .ok_or_else(|| ApiError::not_found("no client connected with this id"))?;
    let mut row = client_row(&live);
    let s = live.session.inspect();
    row["subscriptions"] = json!(s.subscriptions);
    row["queued"] = json!(s.queued);
    row["inflight"] = json!(s.inflight);
    row["session_expiry_s"] = json!(s.expiry_interval_s);
    Ok(Json(row))
}

pub async fn kick(State(api): State<Shared>, Segments(id): Segments<String>) -> ApiResult {
    if api.broker.kick(&id) {
        tracing::info!(client_id = %id, listener = "http", "client kicked by an operator");
        Ok(Json(json!({ "kicked": id })))
    } else {
        Err(ApiError::not_found("no client connected with this id"))
    }
}

#[derive(serde::Deserialize)]
pub struct SessionQuery {
    /// `online`, `offline` or absent (both).
    state: Option<String>,
    clientid: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

pub async fn sessions(State(api): State<Shared>, Params(q): Params<SessionQuery>) -> ApiResult {
    let want_online = match q.state.as_deref() {
        None | Some("") => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(_) => return Err(ApiError::bad("state: online or offline")),
    };
    let mut sessions = api.broker.sessions_by_id();
    sessions.retain(|s| {
        want_online.is_none_or(|w| s.is_connected() == w)
            && q.clientid
                .as_ref()
                .is_none_or(|c| s.client_id.contains(c.as_str()))
    });
    Ok(Json(paged(sessions, q.page, q.limit, |s| {
        json!(s.inspect())
    })))
}

pub async fn session(State(api): State<Shared>, Segments(id): Segments<String>) -> ApiResult {
    let s = api
        .broker
        .session(&id)
        .ok_or_else(|| ApiError::not_found("no session with this client id"))?;
    Ok(Json(json!(s.inspect())))
}

pub async fn discard(State(api): State<Shared>, Segments(id): Segments<String>) -> ApiResult {
    match api.broker.discard_session(&id) {
        Ok(()) => Ok(Json(json!({ "discarded": id }))),
        Err(e @ DiscardError::NotFound) => Err(ApiError::not_found(e.to_string())),
        Err(e @ DiscardError::Online) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
    }
}

#[derive(serde::Deserialize)]
pub struct SubscriptionQuery {
    clientid: Option<String>,
    /// Exact filter.
    filter: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

pub async fn subscriptions(
    State(api): State<Shared>,
    Params(q): Params<SubscriptionQuery>,
) -> ApiResult {
    let sessions = match &q.clientid {
        Some(id) => api.broker.session(id).into_iter().collect(),
        None => api.broker.sessions_by_id(),
    };
    // Rows as they are; JSON only for the page asked for.
    let mut rows = Vec::new();
    for s in sessions.iter().map(|s| s.inspect()) {
        let client_id: Arc<str> = s.client_id.into();
        for sub in s.subscriptions {
            if q.filter.as_ref().is_none_or(|f| *f == sub.filter) {
                rows.push((client_id.clone(), sub, s.connected));
            }
        }
    }
    Ok(Json(paged(rows, q.page, q.limit, |(id, sub, online)| {
        json!({
            "clientid": &**id, "filter": sub.filter, "qos": sub.qos,
            "no_local": sub.no_local, "retain_as_published": sub.retain_as_published,
            "online": online,
        })
    })))
}

#[derive(serde::Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
    limit: Option<usize>,
}

pub async fn topics(State(api): State<Shared>, Params(q): Params<PageQuery>) -> ApiResult {
    let filters: Vec<(String, usize)> = api.broker.topic_filters().into_iter().collect();
    Ok(Json(paged(
        filters,
        q.page,
        q.limit,
        |(filter, n)| json!({ "filter": filter, "subscribers": n }),
    )))
}

fn message_json(m: &Message) -> Value {
    let text = std::str::from_utf8(&m.payload).ok();
    json!({
        "topic": &*m.topic,
        "qos": m.qos as u8,
        "retain": m.retain,
        "payload": text,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        "bytes": m.payload.len(),
        "received_at_ms": unix_ms(m.received_at),
    })
}

#[derive(serde::Deserialize)]
pub struct RetainedQuery {
    filter: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

pub async fn retained_list(
    State(api): State<Shared>,
    Params(q): Params<RetainedQuery>,
) -> ApiResult {
    let filter = q.filter.unwrap_or_else(|| "#".to_string());
    if !topic::valid_topic_filter(&filter) || topic::parse_shared(&filter).is_some() {
        return Err(ApiError::bad("filter: not a valid topic filter"));
    }
    let mut found = api.broker.retained_matching(&filter);
    found.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(Json(paged(found, q.page, q.limit, |m| message_json(m))))
}

#[derive(serde::Deserialize)]
pub struct TopicQuery {
    topic: String,
}

pub async fn retained_get(State(api): State<Shared>, Params(q): Params<TopicQuery>) -> ApiResult {
    api.broker
        .retained_get(&q.topic)
        .map(|m| Json(message_json(&m)))
        .ok_or_else(|| ApiError::not_found("no retained message on this topic"))
}

pub async fn retained_delete(
    State(api): State<Shared>,
    Params(q): Params<TopicQuery>,
) -> ApiResult {
    if api.broker.delete_retained(&q.topic) {
        Ok(Json(json!({ "deleted": q.topic })))
    } else {
        Err(ApiError::not_found("no retained message on this topic"))
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PublishProperties {
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProperties,
}

pub async fn publish(
    State(api): State<Shared>,
    axum::Extension(who): axum::Extension<super::auth::Principal>,
    Body(req): Body<PublishRequest>,
) -> ApiResult {
    let broker = &api.broker;
    if !topic::publishable(&req.topic, broker.config.max_topic_levels) {
        return Err(ApiError::bad(
            "topic: not a valid topic name (no wildcards, not $..., within max_topic_levels)",
        ));
    }
    let qos = QoS::from_u8(req.qos).ok_or_else(|| ApiError::bad("qos: 0, 1 or 2"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = match req.encoding.as_deref() {
        None | Some("utf8") => req.payload.into_bytes(),
        Some("base64") => b64
            .decode(&req.payload)
            .map_err(|_| ApiError::bad("payload: not base64"))?,
        Some(_) => return Err(ApiError::bad("encoding: utf8 or base64")),
    };
    if payload.len() > broker.config.max_packet_size as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload: larger than max_packet_size",
        ));
    }
    let mut msg = Message::new(req.topic.as_str(), payload, qos, req.retain);
    let p = req.properties;
    if let Some(t) = &p.response_topic {
        if !topic::valid_topic_name(t) {
            return Err(ApiError::bad("properties.response_topic: not a topic name"));
        }
    }
    if p.payload_format_indicator.is_some_and(|f| f > 1) {
        return Err(ApiError::bad("properties.payload_format_indicator: 0 or 1"));
    }
    let correlation_data = match p.correlation_data {
        Some(c) => Some(
            b64.decode(&c)
                .map_err(|_| ApiError::bad("properties.correlation_data: not base64"))?
                .into(),
        ),
        None => None,
    };
    let props = Properties {
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        user_properties: p.user_properties,
        ..Properties::default()
    };
    msg.properties = props.into();
    if let Some(s) = p.message_expiry_interval {
        msg.expires_at = Instant::now().checked_add(Duration::from_secs(u64::from(s)));
    }
    let publisher = Arc::new(ClientInfo::internal(
        Arc::from(format!("$api:{}", who.name)),
        Some(Arc::from(who.name.as_str())),
        "http",
    ));
    let queued = broker.publish_as(&publisher, msg);
    tracing::info!(client_id = %publisher.client_id, listener = "http", topic = %req.topic, queued, "published by an operator");
    Ok(Json(json!({ "topic": req.topic, "queued": queued })))
}

pub async fn bans(State(api): State<Shared>) -> ApiResult {
    let bans = api.broker.guard.bans.list(Instant::now());
    Ok(Json(json!({ "data": bans })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// `clientid`, `username` or `ip`.
    kind: String,
    value: String,
    /// Absent: until lifted.
    duration_s: Option<u64>,
}

pub async fn ban(
    State(api): State<Shared>,
    Body(b): Body<NewBan>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = BanKey::from_parts(&b.kind, &b.value)
        .filter(|_| !b.value.is_empty())
        .ok_or_else(|| ApiError::bad("kind: clientid, username or ip, with a value"))?;
    let until = match b.duration_s {
        Some(s) => Some(
            Instant::now()
                .checked_add(Duration::from_secs(s))
                .ok_or_else(|| ApiError::bad("duration_s: too large"))?,
        ),
        None => None,
    };
    // In force even when it cannot be saved: kicking still happens, the answer says why.
    let saved = api.broker.guard.bans.add(key.clone(), until);
    // Banned now means out now: the connections it names are kicked.
    let mut kicked = Vec::new();
    for l in api.broker.live.list() {
        let c = &l.client;
        let hit = match &key {
            BanKey::ClientId(id) => *c.client_id == **id,
            BanKey::User(u) => c.username.as_deref() == Some(u.as_str()),
            BanKey::Ip(ip) => c.peer_addr.ip() == *ip,
        };
        if hit && l.session.kick(l.id) {
            kicked.push(c.client_id.to_string());
        }
    }
    tracing::info!(listener = "http", ban = %key, kicked = kicked.len(), "ban added by an operator");
    if let Err(e) = saved {
        tracing::error!(listener = "http", ban = %key, error = %e, "a ban is in force but not saved");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the ban is in force, but will not outlive a restart: {e}"),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "kind": b.kind, "value": b.value, "duration_s": b.duration_s, "kicked": kicked }),
        ),
    ))
}

pub async fn unban(
    State(api): State<Shared>,
    Segments((kind, value)): Segments<(String, String)>,
) -> ApiResult {
    let key = BanKey::from_parts(&kind, &value)
        .ok_or_else(|| ApiError::bad("kind: clientid, username or ip"))?;
    match api.broker.guard.bans.remove(&key) {
        Ok(true) => Ok(Json(json!({ "lifted": key.to_string() }))),
        Ok(false) => Err(ApiError::not_found(
            "no ban set by an operator or flapping detection for this key (bans_file entries stay)",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the ban is lifted, but would come back after a restart: {e}"),
        )),
    }
}
