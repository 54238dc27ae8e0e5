//! Who may use the API and the dashboard: users of `[http] password_file` (HTTP Basic for
//! scripts, a login that sets a `SameSite=Strict` session cookie for the dashboard), API keys
//! (stored as SHA-256 hashes, shown once), and the legacy `[http] token`. No users and no
//! keys: nobody gets in.
//!
//! CSRF: a state-changing request carried by the cookie must echo the login's token in
//! `x-csrf-token`; one carried by Basic must carry that header at all (a cross-site page
//! cannot add a header without a CORS preflight, which this server never approves). A Bearer
//! key is never sent by a browser on its own.

use super::keys::ApiKeys;
use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use switchyard_core::auth::password::PasswordFile;
use switchyard_core::config::HttpConfig;

/// The cookie a dashboard login sets.
pub const SESSION_COOKIE: &str = "sy_session";
/// How long a verified Basic credential is remembered (PBKDF2 is slow on purpose).
const BASIC_CACHE: Duration = Duration::from_secs(60);

/// Who is asking.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Principal {
    /// A user name, or `key:NAME` / `token` for automation.
    pub name: String,
    /// `basic`, `session`, `api_key` or `token`.
    pub via: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("no users yet: create one with `switchyard passwd FILE USER` and set [http] password_file = \"FILE\"")]
    NoUsers,
    #[error("log in, or send HTTP Basic credentials or an API key (Authorization: Bearer)")]
    Missing,
    #[error("wrong user name, password or key")]
    Wrong,
    #[error("state-changing requests need the x-csrf-token header")]
    Csrf,
    #[error("too many failed logins from this address: wait a minute")]
    TooMany,
}

/// Failed password checks one address may make in [`FAILURE_WINDOW`] before it must wait.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

struct Login {
    user: String,
    csrf: String,
    expires: Instant,
}

pub struct Auth {
    password_path: Option<PathBuf>,
    /// The file as last read, with its modification time: re-read when it changes.
    users: Mutex<(Option<SystemTime>, Option<Arc<PasswordFile>>)>,
    token: String,
    pub keys: ApiKeys,
    logins: Mutex<HashMap<[u8; 32], Login>>,
    basic_ok: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// Failed password checks per address: (count, since).
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    ttl: Duration,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal in constant time: an answer's timing must not reveal a prefix.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `bytes` random bytes, URL-safe base64.
pub fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), raw.as_mut_slice());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

impl Auth {
    pub fn new(cfg: &HttpConfig) -> Result<Auth, String> {
        let password_path =
            (!cfg.password_file.is_empty()).then(|| PathBuf::from(&cfg.password_file));
        let keys_path = if !cfg.api_keys_file.is_empty() {
            Some(PathBuf::from(&cfg.api_keys_file))
        } else {
            password_path
                .as_ref()
                .map(|p| PathBuf::from(format!("{}.keys", p.display())))
        };
        let auth = Auth {
            password_path,
            users: Mutex::new((None, None)),
            token: cfg.token.clone(),
            keys: ApiKeys::open(keys_path)?,
            logins: Mutex::new(HashMap::new()),
            basic_ok: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(cfg.session_ttl_s.max(60)),
        };
        if let Some(path) = &auth.password_path {
            // A file that is there but broken stops the start, as the MQTT password file does.
            if path.exists() {
                PasswordFile::load(path).map_err(|e| format!("[http] password_file: {e}"))?;
            }
        }
        Ok(auth)
    }

    /// The password file as it is on disk now (re-read after a change); `None` without users.
    fn users(&self) -> Option<Arc<PasswordFile>> {
        let path = self.password_path.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.users.lock();
        if modified.is_none() {
            *cached = (None, None);
            return None;
        }
        if cached.0 != modified || cached.1.is_none() {
            match PasswordFile::load(path) {
                Ok(f) => *cached = (modified, Some(Arc::new(f))),
                Err(e) => {
                    // The last good file stays in force.
                    tracing::warn!(error = %e, "[http] password_file not reloaded");
                }
            }
        }
        cached.1.clone().filter(|f| f.user_count() > 0)
    }

    /// Whether anyone could log in: a user, an API key or the token.
    pub fn anyone(&self) -> bool {
        self.users().is_some() || !self.token.is_empty() || self.keys.count() > 0
    }

    /// Checks a user name and password (the login form, Basic) from `ip`. Past
    /// [`MAX_FAILURES`] failures in a minute the address is refused without a check, so
    /// passwords cannot be guessed at the speed of the machine.
    pub async fn verify_user(&self, user: &str, password: &str, ip: IpAddr) -> Result<(), Denied> {
        let users = self.users().ok_or(Denied::NoUsers)?;
        let now = Instant::now();
        if let Some((count, since)) = self.failures.lock().get(&ip) {
            if *count >= MAX_FAILURES && now.duration_since(*since) < FAILURE_WINDOW {
                return Err(Denied::TooMany);
            }
        }
        if users.verify(user, password.as_bytes()).await {
            return Ok(());
        }
        let mut failures = self.failures.lock();
        failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        let entry = failures.entry(ip).or_insert((0, now));
        entry.0 += 1;
        tracing::warn!(user, peer = %ip, listener = "http", failures = entry.0, "failed login");
        Err(Denied::Wrong)
    }

    /// Starts a dashboard session: the cookie value and its CSRF token.
    pub fn login(&self, user: &str) -> (String, String) {
        let token = random_token(32);
        let csrf = random_token(24);
        let mut logins = self.logins.lock();
        let now = Instant::now();
        logins.retain(|_, l| l.expires > now);
        logins.insert(
            digest(token.as_bytes()),
            Login {
                user: user.to_string(),
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        (token, csrf)
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            self.logins.lock().remove(&digest(token.as_bytes()));
        }
    }

    /// The session of the request's cookie: its user and CSRF token.
    pub fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let logins = self.logins.lock();
        let l = logins.get(&digest(token.as_bytes()))?;
        (l.expires > Instant::now()).then(|| (l.user.clone(), l.csrf.clone()))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Who sent this request, if anyone may.
    pub async fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Result<Principal, Denied> {
        let changes = !matches!(*method, Method::GET | Method::HEAD);
        if let Some(value) = header(headers, "authorization") {
            if let Some(b64) = value.strip_prefix("Basic ") {
                let principal = self.basic(b64.trim(), ip).await?;
                if changes && header(headers, "x-csrf-token").is_none() {
                    return Err(Denied::Csrf);
                }
                return Ok(principal);
            }
            if let Some(presented) = value.strip_prefix("Bearer ") {
                let presented = presented.trim();
                if !self.token.is_empty() && same(presented.as_bytes(), self.token.as_bytes()) {
                    return Ok(Principal {
                        name: "token".into(),
                        via: "token",
                    });
                }
                if let Some(name) = self.keys.find(presented) {
                    return Ok(Principal {
                        name: format!("key:{name}"),
                        via: "api_key",
                    });
                }
                return Err(Denied::Wrong);
            }
            return Err(Denied::Wrong);
        }
        if let Some((user, csrf)) = self.session(headers) {
            if changes {
                let sent = header(headers, "x-csrf-token").unwrap_or("");
                if !same(sent.as_bytes(), csrf.as_bytes()) {
                    return Err(Denied::Csrf);
                }
            }
            return Ok(Principal {
                name: user,
                via: "session",
            });
        }
        if !self.anyone() {
            return Err(Denied::NoUsers);
        }
        Err(Denied::Missing)
    }

    async fn basic(&self, b64: &str, ip: IpAddr) -> Result<Principal, Denied> {
        let key = digest(b64.as_bytes());
        let now = Instant::now();
        if let Some((user, until)) = self.basic_ok.lock().get(&key) {
            if *until > now {
                return Ok(Principal {
                    name: user.clone(),
                    via: "basic",
                });
            }
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Denied::Wrong)?;
        let text = String::from_utf8(raw).map_err(|_| Denied::Wrong)?;
        let (user, password) = text.split_once(':').ok_or(Denied::Wrong)?;
        self.verify_user(user, password, ip).await?;
        let mut cache = self.basic_ok.lock();
        cache.retain(|_, (_, until)| *until > now);
        cache.insert(key, (user.to_string(), now + BASIC_CACHE));
        Ok(Principal {
            name: user.to_string(),
            via: "basic",
        })
    }
}
