//! Broker configuration: the `[[listener]]`, `[mqtt]`, `[auth]` and `[[acl]]` tables of the TOML
//! file. Every key has a default and unknown keys are rejected by serde.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
    WsJson,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
            Self::WsJson => "ws-json",
        }
    }
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss | Self::WsJson)
    }
    pub fn needs_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// HTTP path of WebSocket listeners; see [`ListenerConfig::path`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Require and verify client certificates signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Overrides `[mqtt] allow_anonymous` for this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
}

fn default_max_connections() -> usize {
    1_000_000
}

impl ListenerConfig {
    /// The HTTP path of the upgrade: as configured, else `/mqtt` for MQTT over WebSocket (what
    /// mqtt.js and Paho use) and `/` for `ws-json`, whose browser clients open
    /// `ws://host:port` with no path.
    pub fn path(&self) -> &str {
        match (&self.path, self.kind) {
            (Some(p), _) => p,
            (None, ListenerKind::WsJson) => "/",
            (None, _) => "/mqtt",
        }
    }

    pub fn new(kind: ListenerKind, bind: SocketAddr) -> Self {
        Self {
            kind,
            bind,
            path: None,
            cert: None,
            key: None,
            client_ca: None,
            max_connections: default_max_connections(),
            allow_anonymous: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub allow_anonymous: bool,
    pub max_packet_size: u32,
    /// Receive Maximum we grant to clients, and the outbound window we use with v3 clients.
    pub max_inflight: u16,
    /// Bound on each session's queue of messages waiting to be sent.
    pub max_queued_messages: usize,
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold; more are refused with Quota Exceeded.
    pub max_subscriptions: usize,
    /// Retained messages the broker keeps, by count and by bytes of topics and payloads; a
    /// new retained topic past either is routed but not retained (replacing one always works).
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub session_expiry_max_s: u32,
    pub retain_available: bool,
    pub shared_subscriptions: bool,
    pub sys_interval_s: u64,
    pub max_keepalive_s: u16,
    /// Topic Alias Maximum we grant to v5 clients.
    pub topic_alias_max: u16,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout_s: u64,
    /// A client that takes no bytes we write for this long is disconnected (0: never).
    pub write_timeout_s: u64,
    /// The most one congested subscriber holds its publishers back: past this (or after a
    /// fifth of it without draining anything) it is slow and publishers stop waiting for it.
    pub backpressure_wait_ms: u64,
    /// An online subscriber whose queue holds more than this many milliseconds of its recent
    /// drain rate (at least 1,024 messages, at most half of `max_queued_messages`) holds its
    /// publishers back: latency is bounded by time, not by the queue limit.
    pub backpressure_queue_ms: u64,
    /// What happens to a slow subscriber's QoS 1/2 overflow: dropped and counted, or the
    /// client is disconnected (its session, if persistent, keeps the queue).
    pub slow_subscriber: SlowSubscriberPolicy,
    /// A persistent session belongs to the user name that created it: a client authenticated
    /// as anyone else may neither resume nor replace it (CONNACK 0x87).
    pub sessions_bound_to_user: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            max_packet_size: 1_048_576,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_topic_levels: 128,
            max_subscriptions: 1000,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1 << 30,
            session_expiry_max_s: 7 * 24 * 3600,
            retain_available: true,
            shared_subscriptions: true,
            sys_interval_s: 10,
            max_keepalive_s: 65_535,
            topic_alias_max: 64,
            connect_timeout_s: 10,
            write_timeout_s: 30,
            backpressure_wait_ms: 500,
            backpressure_queue_ms: 3,
            slow_subscriber: SlowSubscriberPolicy::Drop,
            sessions_bound_to_user: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriberPolicy {
    #[default]
    Drop,
    Disconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    Publish,
    Subscribe,
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Written by `switchyard passwd FILE USER`; empty means no password file.
    pub password_file: PathBuf,
    /// More `[[acl]]` rules in a TOML file of their own, appended after the inline ones.
    pub acl_file: PathBuf,
    /// What happens when no ACL rule matches.
    pub acl_default: Permission,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_file: PathBuf::new(),
            acl_file: PathBuf::new(),
            acl_default: Permission::Allow,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub permission: Permission,
    pub action: AclAction,
    /// A topic filter; `%u` is replaced by the user name, `%c` by the client id.
    pub topic: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub client: Option<String>,
}

/// What the core needs to run: listeners, protocol limits, built-in auth and ACL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default, rename = "acl")]
    pub acl: Vec<AclRule>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub persistence: PersistenceConfig,
}

/// How long acknowledged state lasts: the `[persistence]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PersistMode {
    /// Everything in memory: a restart forgets sessions, queues and retained messages.
    Off,
    /// Written as it happens, fsync'd every `flush_interval_ms`: a crash loses at most that.
    Periodic,
    /// A PUBACK / PUBREC leaves only once what it promises is fsync'd (group commit).
    Sync,
}

/// Where and how persistent sessions, their queues and retained messages are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Created if missing; one broker per folder (it is locked).
    pub dir: PathBuf,
    pub mode: PersistMode,
    /// `periodic`: how often the journal is fsync'd.
    pub flush_interval_ms: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data"),
            mode: PersistMode::Sync,
            flush_interval_ms: 100,
        }
    }
}

/// What one client, one address or the crowd may take: the `[limits]` table. Every limit is
/// counted in `/metrics` (`switchyard_limit_hits_total`) when it bites; 0 turns one off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions held in all, online and offline; a new one past it is refused (0x97).
    pub max_sessions: usize,
    /// Filters in one SUBSCRIBE; the rest are answered 0x97 (v3: 0x80).
    pub max_filters_per_subscribe: usize,
    /// Open connections from one address, all listeners together.
    pub max_connections_per_ip: usize,
    /// New connections a second per listener; more wait in the kernel's accept queue.
    pub max_connection_rate: u64,
    /// PUBLISH packets a second per client; past it v5 QoS 1/2 get 0x97 Quota Exceeded (PUBACK
    /// has no 0x96), other publishes are dropped.
    pub max_publish_rate: u64,
    /// Publish payload bytes a second per client, answered like `max_publish_rate`.
    pub max_publish_bytes_rate: u64,
    /// Flapping detection: a client id that ends more than this many connections within
    /// `flapping_window_s` is refused for `flapping_ban_s`.
    pub flapping_max_connects: u32,
    /// The same for a user name and for an address: off by default, since many devices may
    /// share one user or sit behind one NAT address.
    pub flapping_max_connects_per_user: u32,
    pub flapping_max_connects_per_ip: u32,
    pub flapping_window_s: u64,
    pub flapping_ban_s: u64,
    /// `[[ban]]` tables (`clientid`, `username` or `ip`); read at start and on SIGHUP.
    pub bans_file: PathBuf,
    /// Overload protection: resident memory in MB (0: 80% of the machine's) and messages
    /// queued in all sessions (0: no limit) past which new connections are refused and QoS 0
    /// is shed.
    pub overload_memory_mb: u64,
    pub overload_queued_messages: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1_000_000,
            max_filters_per_subscribe: 100,
            max_connections_per_ip: 1000,
            max_connection_rate: 5000,
            max_publish_rate: 10_000,
            max_publish_bytes_rate: 10 << 20,
            flapping_max_connects: 15,
            flapping_max_connects_per_user: 0,
            flapping_max_connects_per_ip: 0,
            flapping_window_s: 60,
            flapping_ban_s: 300,
            bans_file: PathBuf::new(),
            overload_memory_mb: 0,
            overload_queued_messages: 10_000_000,
        }
    }
}

/// The operators' HTTP endpoint: `/health` and `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Bearer token required for everything but the open endpoints. Empty: those endpoints
    /// answer only clients on this machine (loopback).
    pub token: String,
    /// `/health` and `/metrics` need no token (load balancers, Prometheus).
    pub open_metrics: bool,
    /// Connections served at once; more are closed at accept (counted).
    pub max_connections: usize,
    /// Users of the API and the dashboard, in the `switchyard passwd` format. Empty: nobody
    /// can log in (the API answers 401 and the dashboard says how to add the first user).
    pub password_file: String,
    /// Where API keys are kept (hashed). Empty: next to `password_file`, as `FILE.keys`.
    pub api_keys_file: String,
    /// How long a dashboard login lasts, in seconds.
    pub session_ttl_s: u64,
    /// PEM certificate chain and key: with both, the endpoint speaks HTTPS only and the
    /// dashboard's cookie is `Secure`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 18083)),
            token: String::new(),
            open_metrics: true,
            max_connections: 64,
            password_file: String::new(),
            api_keys_file: String::new(),
            session_ttl_s: 43_200,
            cert: None,
            key: None,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            listeners: default_listeners(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            acl: Vec::new(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            persistence: PersistenceConfig::default(),
        }
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![
        ListenerConfig::new(ListenerKind::Tcp, SocketAddr::from(([0, 0, 0, 0], 1883))),
        ListenerConfig::new(ListenerKind::Ws, SocketAddr::from(([0, 0, 0, 0], 8083))),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl CoreConfig {
    /// Checks what serde cannot: values that depend on each other.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        for (i, l) in self.listeners.iter().enumerate() {
            if l.kind.needs_tls() && (l.cert.is_none() || l.key.is_none()) {
                return Err(err(format!(
                    "listener[{i}] ({}): `cert` and `key` are required for kind \"{}\"",
                    l.bind,
                    l.kind.as_str()
                )));
            }
            if l.kind.is_websocket() && !l.path().starts_with('/') {
                return Err(err(format!(
                    "listener[{i}].path: must start with '/', got {:?}",
                    l.path()
                )));
            }
            if l.client_ca.is_some() && !l.kind.needs_tls() {
                return Err(err(format!(
                    "listener[{i}].client_ca: only valid for tls and wss listeners"
                )));
            }
        }
        if self.http.cert.is_some() != self.http.key.is_some() {
            return Err(err(
                "http: `cert` and `key` go together (both for HTTPS, neither for HTTP)".into(),
            ));
        }
        let m = &self.mqtt;
        if m.max_packet_size < 16 || m.max_packet_size > 268_435_460 {
            return Err(err(format!(
                "mqtt.max_packet_size: must be between 16 and 268435460, got {}",
                m.max_packet_size
            )));
        }
        if m.max_inflight == 0 {
            return Err(err("mqtt.max_inflight: must be at least 1".into()));
        }
        if m.max_queued_messages == 0 {
            return Err(err("mqtt.max_queued_messages: must be at least 1".into()));
        }
        if m.max_subscriptions == 0 {
            return Err(err("mqtt.max_subscriptions: must be at least 1".into()));
        }
        if !(1..=crate::topic::MAX_TOPIC_LEVELS).contains(&m.max_topic_levels) {
            return Err(err(format!(
                "mqtt.max_topic_levels: must be between 1 and {}, got {}",
                crate::topic::MAX_TOPIC_LEVELS,
                m.max_topic_levels
            )));
        }
        let p = &self.persistence;
        if p.mode != PersistMode::Off && p.dir.as_os_str().is_empty() {
            return Err(err("persistence.dir: must name a folder".into()));
        }
        if p.mode == PersistMode::Periodic && !(1..=60_000).contains(&p.flush_interval_ms) {
            return Err(err(format!(
                "persistence.flush_interval_ms: must be between 1 and 60000, got {}",
                p.flush_interval_ms
            )));
        }
        for (i, r) in self.acl.iter().enumerate() {
            let probe = r.topic.replace("%u", "u").replace("%c", "c");
            if !crate::topic::valid_topic_filter(&probe) {
                return Err(err(format!(
                    "acl[{i}].topic: invalid topic filter {:?}",
                    r.topic
                )));
            }
        }
        Ok(())
    }
}
