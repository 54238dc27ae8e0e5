//! Authentication and authorization by an HTTP service (`[http_auth.authenticate]`,
//! `[http_auth.authorize]`): the broker asks a URL, with `${…}` templates in the URL
//! (percent-encoded), headers and body filled from the client and its operation, and maps the
//! answer:
//! - 200 with `{"result": "allow" | "deny" | "ignore", "attributes": {…}}` (attributes on allow,
//!   for later hooks); 204: allow; 401, 403: deny;
//! - any other status, a timeout, no service: `on_error` (deny by default: a CONNECT gets
//!   Server Unavailable, an operation Not Authorized).
//!
//! Authorize answers are kept per client, access and topic for `cache_ms`.
//!
//! Fields: `clientid`, `username`, `password`, `peerhost`, `peer` (`ip:port`), `listener`,
//! `protocol`, `cert_cn`; for authorize also `topic`, `action` (`publish`, `subscribe`,
//! `read`) and `qos`.

use crate::settings::OnError;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Hook, HookSet,
};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_core::template::Template;

/// Authorize answers kept at most; past it the cache starts over.
const CACHE_ENTRIES: usize = 65_536;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    pub authenticate: Option<HttpCall>,
    pub authorize: Option<HttpCall>,
    /// Place in the hook chain (lower first; the built-in password file and ACL are at 1000).
    #[serde(default = "default_priority")]
    pub priority: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    pub url: String,
    /// `post` (a JSON body) or `get` (the body's fields as the query).
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Field name → template; default: every field of the call.
    #[serde(default)]
    pub body: Option<BTreeMap<String, String>>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_error: OnError,
    /// Authorize only: how long an answer is kept per client, access and topic.
    #[serde(default)]
    pub cache_ms: u64,
}

fn default_priority() -> i32 {
    500
}
fn default_method() -> String {
    "post".into()
}
fn default_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, thiserror::Error)]
#[error("http_auth.{which}: {message}")]
pub struct HttpAuthError {
    which: &'static str,
    message: String,
}

/// One configured call, its templates parsed.
struct Prepared {
    url: Template,
    get: bool,
    headers: Vec<(String, Template)>,
    body: Option<Vec<(String, Template)>>,
    timeout: Duration,
    on_error: OnError,
    cache: Duration,
}

impl Prepared {
    fn new(which: &'static str, c: &HttpCall) -> Result<Self, HttpAuthError> {
        let err = |message: String| HttpAuthError { which, message };
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(err(format!(
                "url: expected http:// or https://, got {:?}",
                c.url
            )));
        }
        let get = match c.method.to_ascii_lowercase().as_str() {
            "get" => true,
            "post" => false,
            other => return Err(err(format!("method: expected get or post, not {other:?}"))),
        };
        let parse = |t: &str| Template::parse(t).map_err(err);
        Ok(Self {
            url: parse(&c.url)?,
            get,
            headers: c
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), parse(v)?)))
                .collect::<Result<_, HttpAuthError>>()?,
            body: match &c.body {
                Some(b) => Some(
                    b.iter()
                        .map(|(k, v)| Ok((k.clone(), parse(v)?)))
                        .collect::<Result<_, HttpAuthError>>()?,
                ),
                None => None,
            },
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            on_error: c.on_error,
            cache: Duration::from_millis(c.cache_ms),
        })
    }
}

/// The service's verdict, or `None` when there was none to be had (status, timeout, network).
async fn ask(http: &reqwest::Client, p: &Prepared, fields: &Value) -> Option<Verdict> {
    let url = p.url.render_escaped(fields, |s, out| {
        out.extend(percent_encoding::utf8_percent_encode(
            s,
            percent_encoding::NON_ALPHANUMERIC,
        ))
    });
    let body: serde_json::Map<String, Value> = match &p.body {
        Some(b) => b
            .iter()
            .map(|(k, t)| (k.clone(), Value::String(t.render(fields))))
            .collect(),
        None => fields.as_object().cloned().unwrap_or_default(),
    };
    let mut req = if p.get {
        let query: Vec<(String, String)> = body
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        http.get(&url).query(&query)
    } else {
        http.post(&url).json(&body)
    };
    for (name, t) in &p.headers {
        req = req.header(name, t.render(fields));
    }
    let resp = match tokio::time::timeout(p.timeout, req.timeout(p.timeout).send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(url = %url, error = %e, "http_auth: no answer");
            return None;
        }
        Err(_) => {
            tracing::warn!(url = %url, "http_auth: timed out");
            return None;
        }
    };
    match resp.status().as_u16() {
        204 => Some(Verdict::Allow(Vec::new())),
        401 | 403 => Some(Verdict::Deny),
        200 => {
            let v: Value = tokio::time::timeout(p.timeout, resp.json())
                .await
                .ok()?
                .ok()?;
            match v.get("result").and_then(Value::as_str) {
                Some("allow") => Some(Verdict::Allow(attributes(&v))),
                Some("deny") => Some(Verdict::Deny),
                Some("ignore") => Some(Verdict::Ignore),
                other => {
                    tracing::warn!(url = %url, result = ?other, "http_auth: 200 without a result of allow, deny or ignore");
                    None
                }
            }
        }
        status => {
            tracing::warn!(url = %url, status, "http_auth: unexpected status");
            None
        }
    }
}

fn attributes(v: &Value) -> Vec<(String, String)> {
    v.get("attributes")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

enum Verdict {
    Allow(Vec<(String, String)>),
    Deny,
    Ignore,
}

/// Who asks and what: the cache's key.
type CacheKey = (Arc<str>, Option<Arc<str>>, SocketAddr, u8, String);

pub struct HttpAuthHook {
    http: reqwest::Client,
    authenticate: Option<Prepared>,
    authorize: Option<Prepared>,
    cache: Mutex<HashMap<CacheKey, (AclDecision, Instant)>>,
}

fn client_fields(c: &ClientInfo) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("clientid".into(), json!(&*c.client_id));
    m.insert("username".into(), json!(c.username.as_deref()));
    m.insert("peerhost".into(), json!(c.peer_addr.ip().to_string()));
    m.insert("peer".into(), json!(c.peer_addr.to_string()));
    m.insert("listener".into(), json!(&*c.listener));
    let protocol = match c.protocol {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    };
    m.insert("protocol".into(), json!(protocol));
    m.insert("cert_cn".into(), json!(c.cert_common_name.as_deref()));
    m
}

impl HttpAuthHook {
    /// Checks the configuration and builds the hook; `None` when neither call is configured.
    pub fn new(config: &HttpAuthConfig) -> Result<Option<Self>, HttpAuthError> {
        let authenticate = config
            .authenticate
            .as_ref()
            .map(|c| Prepared::new("authenticate", c))
            .transpose()?;
        let authorize = config
            .authorize
            .as_ref()
            .map(|c| Prepared::new("authorize", c))
            .transpose()?;
        if authenticate.is_none() && authorize.is_none() {
            return Ok(None);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HttpAuthError {
                which: "client",
                message: e.to_string(),
            })?;
        Ok(Some(Self {
            http,
            authenticate,
            authorize,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    fn fallback_acl(on_error: OnError) -> AclDecision {
        match on_error {
            OnError::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
            OnError::Allow => AclDecision::Allow,
            OnError::Ignore => AclDecision::Ignore,
        }
    }
}

#[async_trait]
impl Hook for HttpAuthHook {
    fn name(&self) -> &str {
        "builtin:http-auth"
    }

    fn interests(&self) -> HookSet {
        let mut set = HookSet::NONE;
        if self.authenticate.is_some() {
            set = set | HookSet::AUTHENTICATE;
        }
        if self.authorize.is_some() {
            set = set | HookSet::AUTHORIZE;
        }
        set
    }

    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        let Some(p) = &self.authenticate else {
            return AuthDecision::Ignore;
        };
        let mut fields = client_fields(&c.client);
        let password = c
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        fields.insert("password".into(), json!(password));
        match ask(&self.http, p, &Value::Object(fields)).await {
            Some(Verdict::Allow(attrs)) => AuthDecision::Allow(attrs),
            Some(Verdict::Deny) => AuthDecision::Deny(if c.client.username.is_some() {
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
            } else {
                ReasonCode::NOT_AUTHORIZED
            }),
            Some(Verdict::Ignore) => AuthDecision::Ignore,
            None => match p.on_error {
                OnError::Deny => AuthDecision::Deny(ReasonCode::SERVER_UNAVAILABLE),
                OnError::Allow => AuthDecision::Allow(Vec::new()),
                OnError::Ignore => AuthDecision::Ignore,
            },
        }
    }

    async fn authorize(&self, c: &ClientInfo, a: Access, topic: &str, q: QoS) -> AclDecision {
        let Some(p) = &self.authorize else {
            return AclDecision::Ignore;
        };
        let (action, code) = match a {
            Access::Publish => ("publish", 0),
            Access::Subscribe => ("subscribe", 1),
            Access::Read => ("read", 2),
        };
        let key: CacheKey = (
            c.client_id.clone(),
            c.username.clone(),
            c.peer_addr,
            code,
            topic.to_string(),
        );
        if !p.cache.is_zero() {
            if let Some((d, at)) = self.cache.lock().get(&key) {
                if at.elapsed() < p.cache {
                    return *d;
                }
            }
        }
        let mut fields = client_fields(c);
        fields.insert("topic".into(), json!(topic));
        fields.insert("action".into(), json!(action));
        fields.insert("qos".into(), json!(q as u8));
        let decision = match ask(&self.http, p, &Value::Object(fields)).await {
            Some(Verdict::Allow(_)) => AclDecision::Allow,
            Some(Verdict::Deny) => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
            Some(Verdict::Ignore) => AclDecision::Ignore,
            // A failed question is never cached: the next one asks again.
            None => return Self::fallback_acl(p.on_error),
        };
        if !p.cache.is_zero() {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (decision, Instant::now()));
        }
        decision
    }
}
