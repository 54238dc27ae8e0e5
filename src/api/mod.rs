//! The HTTP endpoint on `[http] bind`: `/health` and `/metrics` for machines, the JSON API
//! under `/api/v1` (described by `openapi.json`, served at `/api/v1/openapi.json`), and the
//! dashboard at `/`.
//!
//! - this module: the accept loop (at most `max_connections`, HTTPS with `cert` and `key`,
//!   10 s for a TLS handshake and for a request head, a minute per connection), the router,
//!   the authentication layer, errors as JSON;
//! - [`auth`]: users, logins, CSRF; [`keys`]: API keys;
//! - [`clients`]: clients, sessions, subscriptions, topics, retained messages, publish, bans;
//! - [`extensions`]: rules, sinks, plugins;
//! - [`stats`]: metrics as JSON and their 15-minute history, the redacted configuration;
//! - [`dashboard`]: the embedded dashboard files.

pub mod auth;
mod clients;
mod dashboard;
mod extensions;
pub mod keys;
mod stats;

use auth::{Auth, Denied, Principal};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
pub use stats::redact;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::config::{HttpConfig, ListenerKind};
use switchyard_core::metrics::Limit;
use switchyard_core::transport::TlsAcceptor;
use switchyard_core::Broker;
use switchyard_plugins::PluginManager;
use switchyard_rules::RuleEngine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// The OpenAPI 3 description of `/api/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler reaches.
pub struct Api {
    pub broker: Arc<Broker>,
    pub plugins: Arc<PluginManager>,
    pub rules: Arc<RuleEngine>,
    pub auth: Auth,
    pub history: stats::History,
    pub config: HttpConfig,
    /// The configuration as the API shows it, secrets redacted.
    pub effective_config: serde_json::Value,
    /// MQTT listeners: kind, address, path (the dashboard's topic explorer picks a WebSocket).
    pub listeners: Vec<(ListenerKind, SocketAddr, String)>,
    /// Set when `[http]` has `cert` and `key`: every connection is HTTPS.
    pub tls: Option<TlsAcceptor>,
}

pub type Shared = Arc<Api>;

/// An error answer: a status and `{"error": "..."}` (with `details` for rule errors).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
    pub fn bad(what: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if !self.details.is_empty() {
            body["details"] = serde_json::json!(self.details);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        let status = match d {
            Denied::Csrf => StatusCode::FORBIDDEN,
            Denied::TooMany => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, d.to_string())
    }
}

pub type ApiResult<T = Json<serde_json::Value>> = Result<T, ApiError>;

/// HTTPS for the endpoint when `[http]` names a certificate and key; fails on files that do
/// not load.
pub fn load_tls(config: &HttpConfig) -> Result<Option<TlsAcceptor>, String> {
    let (true, Some(cert), Some(key)) = (config.enabled, &config.cert, &config.key) else {
        return Ok(None);
    };
    let name = format!("http:{}", config.bind);
    switchyard_core::transport::tls_acceptor(&name, cert, key, None)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Builds the API's state; fails on a broken password or API key file.
pub fn prepare(
    broker: Arc<Broker>,
    plugins: Arc<PluginManager>,
    rules: Arc<RuleEngine>,
    config: HttpConfig,
    effective_config: serde_json::Value,
    listeners: Vec<(ListenerKind, SocketAddr, String)>,
    tls: Option<TlsAcceptor>,
) -> Result<Shared, String> {
    Ok(Arc::new(Api {
        tls,
        auth: Auth::new(&config)?,
        history: stats::History::default(),
        broker,
        plugins,
        rules,
        config,
        effective_config,
        listeners,
    }))
}

/// Serves until the broker shuts down.
pub async fn run(listener: TcpListener, api: Shared) {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if api.tls.is_some() { "https" } else { "http" };
        info!(listener = %format!("{scheme}:{addr}"), "listening");
    }
    tokio::spawn(stats::sample(api.clone()));
    let router = router(api.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(
        api.config.max_connections.max(1),
    ));
    let broker = api.broker.clone();
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            broker.metrics.limit_hit(Limit::Http);
            debug!(%peer, "http: max_connections reached; closed");
            continue;
        };
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let tls = api.tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return serve_connection(stream, service, peer).await;
            };
            // A client that never finishes its handshake holds a slot for 10 s at most.
            match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, service, peer).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "https: handshake failed"),
                Err(_) => debug!(%peer, "https: no handshake within 10 s"),
            }
        });
    }
}

/// One HTTP/1.1 connection: 10 s for each request head, a minute in all.
async fn serve_connection<S>(stream: S, service: Router, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if tokio::time::timeout(Duration::from_secs(60), conn)
        .await
        .is_err()
    {
        debug!(%peer, "http connection closed after a minute");
    }
}

fn router(api: Shared) -> Router {
    let protected = Router::new()
        .route("/clients", get(clients::list))
        .route(
            "/clients/{clientid}",
            get(clients::detail).delete(clients::kick),
        )
        .route("/sessions", get(clients::sessions))
        .route(
            "/sessions/{clientid}",
            get(clients::session).delete(clients::discard),
        )
        .route("/subscriptions", get(clients::subscriptions))
        .route("/topics", get(clients::topics))
        .route("/retained", get(clients::retained_list))
        .route(
            "/retained/message",
            get(clients::retained_get).delete(clients::retained_delete),
        )
        .route("/publish", post(clients::publish))
        .route("/bans", get(clients::bans).post(clients::ban))
        .route("/bans/{kind}/{value}", delete(clients::unban))
        .route("/rules", get(extensions::rules))
        .route("/rules/reload", post(extensions::rules_reload))
        .route("/rules/test", post(extensions::rules_test))
        .route("/rules/files", get(extensions::rule_files))
        .route(
            "/rules/files/{name}",
            get(extensions::rule_file_get)
                .put(extensions::rule_file_put)
                .delete(extensions::rule_file_delete),
        )
        .route("/rules/enabled/{rule}", put(extensions::rule_enabled))
        .route("/sinks", get(extensions::sinks))
        .route("/plugins", get(extensions::plugins))
        .route("/plugins/{name}/reload", post(extensions::plugin_reload))
        .route(
            "/plugins/{name}/reset-breaker",
            post(extensions::plugin_reset),
        )
        .route("/metrics", get(stats::metrics))
        .route("/metrics/history", get(stats::history))
        .route("/config", get(stats::config))
        .route("/listeners", get(stats::listeners))
        .route("/api-keys", get(keys_list).post(keys_create))
        .route("/api-keys/{id}", delete(keys_revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_login,
        ));
    let open = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/auth", get(auth_status));
    let legacy = Router::new()
        .route("/rules", get(legacy_status))
        .route("/plugins", get(legacy_status))
        .route("/bans", get(legacy_status));
    let machines = Router::new()
        .route("/health", get(stats::health))
        .route("/metrics", get(stats::prometheus));
    let machines = if api.config.open_metrics {
        machines
    } else {
        machines.route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_login,
        ))
    };
    Router::new()
        .nest("/api/v1", protected.merge(open))
        .merge(legacy)
        .merge(machines)
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(api)
}

/// Every answer: no caching of API data, no framing by other sites, no content sniffing.
async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The peer's address, which the accept loop put on every request.
fn peer_ip(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

async fn require_login(State(api): State<Shared>, mut req: Request, next: Next) -> Response {
    let ip = peer_ip(&req);
    match api.auth.check(req.method(), req.headers(), ip).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(denied) => {
            let mut res = ApiError::from(denied).into_response();
            if res.status() == StatusCode::UNAUTHORIZED {
                // No `Basic` challenge: a browser would pop its own login box over the
                // dashboard's.
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"switchyard\""),
                );
            }
            res
        }
    }
}

/// `/rules`, `/plugins`, `/bans` as before the API: with `[http] token` unset, served to this
/// machine without credentials; otherwise as the API.
async fn legacy_status(
    State(api): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> ApiResult {
    let loopback_open = api.config.token.is_empty() && peer.ip().is_loopback();
    if !loopback_open {
        api.auth
            .check(req.method(), req.headers(), peer.ip())
            .await?;
    }
    let name = req.uri().path().trim_start_matches('/');
    if name == "bans" {
        let bans = api.broker.guard.bans.list(std::time::Instant::now());
        return Ok(Json(serde_json::json!({ "bans": bans })));
    }
    api.broker
        .status_of(name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("not loaded"))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(
    State(api): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(form): Body<LoginForm>,
) -> ApiResult<Response> {
    api.auth
        .verify_user(&form.username, &form.password, peer.ip())
        .await?;
    let (token, csrf) = api.auth.login(&form.username);
    info!(user = %form.username, "dashboard login");
    let body = Json(serde_json::json!({ "username": form.username, "csrf_token": csrf }));
    let ttl = api.auth.ttl().as_secs();
    Ok(with_session_cookie(body, &token, ttl, api.tls.is_some()))
}

async fn logout(State(api): State<Shared>, req: Request) -> Response {
    api.auth.logout(req.headers());
    let body = Json(serde_json::json!({ "logged_out": true }));
    with_session_cookie(body, "", 0, api.tls.is_some())
}

/// `body` with the dashboard's session cookie set to `value` for `max_age_s` (0: cleared);
/// `secure` over HTTPS, so the browser never sends it in clear.
fn with_session_cookie(
    body: impl IntoResponse,
    value: &str,
    max_age_s: u64,
    secure: bool,
) -> Response {
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        auth::SESSION_COOKIE,
        if secure { "; Secure" } else { "" }
    );
    let mut res = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Whether users exist, and who the cookie belongs to: the dashboard's first question.
async fn auth_status(State(api): State<Shared>, req: Request) -> Json<serde_json::Value> {
    let session = api.auth.session(req.headers());
    Json(serde_json::json!({
        "users_configured": api.auth.anyone(),
        // Whether a file is configured, not where: this answer needs no login.
        "password_file_configured": !api.config.password_file.is_empty(),
        "username": session.as_ref().map(|s| &s.0),
        "csrf_token": session.as_ref().map(|s| &s.1),
    }))
}

async fn keys_list(State(api): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": api.auth.keys.list() }))
}

#[derive(serde::Deserialize)]
struct NewKey {
    name: String,
}

async fn keys_create(
    State(api): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    Body(new): Body<NewKey>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if new.name.is_empty() || new.name.len() > 64 {
        return Err(ApiError::bad("name: 1 to 64 characters"));
    }
    let (stored, key) = api
        .auth
        .keys
        .create(&new.name, &who.name)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": stored.id, "name": stored.name, "created_ms": stored.created_ms,
            "created_by": stored.created_by, "key": key,
        })),
    ))
}

async fn keys_revoke(State(api): State<Shared>, Segments(id): Segments<String>) -> ApiResult {
    match api.auth.keys.revoke(&id) {
        Ok(true) => Ok(Json(serde_json::json!({ "revoked": id }))),
        Ok(false) => Err(ApiError::not_found("no such key")),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// `Json`, `Query` and `Path` whose rejections answer as every other error: JSON, 400.
pub struct Body<T>(pub T);
pub struct Params<T>(pub T);
pub struct Segments<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Segments<T>
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Segments(p.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}
