//! One loaded plugin: compile, pre-instantiate, a pool of warm instances, guarded calls, and
//! the mapping between the WIT world and the core's [`Hook`] trait.

use crate::host::{wit, ClientRef, KvStore, MqttPlugin, MqttPluginPre, State};
use crate::pool::InstancePool;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Event, Hook, HookSet,
    MessageDecision,
};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_core::{topic, Message};
use tracing::{error, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

/// How often the epoch advances: how long a busy guest runs before it yields to the executor.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Consecutive failed calls after which a plugin is disabled.
const DISABLE_AFTER: u32 = 5;

/// What a failed call (trap, timeout, memory exhaustion) means for authenticate/authorize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: refuse the client or the operation.
    #[default]
    Deny,
    Allow,
    /// Let the next hook decide.
    Ignore,
}

/// A `[[plugin]]` table of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    pub path: PathBuf,
    /// Place in the hook chain; lower runs first. Built-in password file and ACL are at 1000.
    #[serde(default)]
    pub priority: i32,
    /// Handed to the plugin's `init` as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default)]
    pub on_error: OnError,
    /// Warm instances kept for concurrent calls.
    #[serde(default = "default_instances")]
    pub instances: usize,
    /// Remember each client's authorize answers for this long (0: ask the plugin every time).
    #[serde(default)]
    pub authorize_cache_ms: u64,
}

impl PluginSettings {
    /// Defaults for a plugin found in `plugins_dir` without a `[[plugin]]` entry.
    pub fn for_path(path: PathBuf) -> Self {
        Self {
            path,
            priority: 0,
            config: empty_object(),
            timeout_ms: default_timeout_ms(),
            memory_mb: default_memory_mb(),
            on_error: OnError::default(),
            instances: default_instances(),
            authorize_cache_ms: 0,
        }
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_memory_mb() -> u64 {
    16
}
fn default_instances() -> usize {
    4
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {path}: not a valid component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("plugin {path}: cannot link: {message}")]
    Link { path: PathBuf, message: String },
    #[error("plugin {path}: init failed: {message}")]
    Init { path: PathBuf, message: String },
}

/// The engine shared by every plugin, with its epoch ticker.
fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(256)
                .total_core_instances(2048)
                .total_memories(256)
                .total_tables(512)
                .max_memory_size(256 << 20);
            let mut config = Config::new();
            config
                .epoch_interruption(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            // The pool reserves its address space up front; where that is refused (a low
            // `ulimit -v`, some sandboxes, valgrind) plugins still run, allocated on demand.
            let engine = match Engine::new(&config) {
                Ok(engine) => engine,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "plugin instance pool unavailable; allocating instances on demand");
                    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                    Engine::new(&config).map_err(|e| e.to_string())?
                }
            };
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Reads, compiles and links a component against the host's imports.
fn compile(path: &std::path::Path) -> Result<MqttPluginPre<State>, LoadError> {
    let engine = engine().map_err(|message| LoadError::Link {
        path: path.to_path_buf(),
        message,
    })?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let component = Component::from_binary(engine, &bytes).map_err(|e| LoadError::Compile {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    let link = |e: wasmtime::Error| LoadError::Link {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    };
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    MqttPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link)?;
    MqttPluginPre::new(linker.instantiate_pre(&component).map_err(link)?).map_err(link)
}

struct Warm {
    store: Store<State>,
    bindings: MqttPlugin,
}

pub struct WasmPlugin {
    name: Arc<str>,
    settings: PluginSettings,
    config_json: String,
    pre: MqttPluginPre<State>,
    kv: Arc<KvStore>,
    pool: InstancePool<Warm>,
    interests: HookSet,
    topic_filters: Vec<String>,
    consecutive_failures: AtomicU32,
    failures: AtomicU64,
    disabled: AtomicBool,
    /// Client events on their way to the guest (bounded; see `EVENT_QUEUE`).
    events: OnceLock<tokio::sync::mpsc::Sender<(ClientRef, String)>>,
    events_dropped: AtomicU64,
}

impl WasmPlugin {
    /// Compiles (on the blocking pool: it takes tens of milliseconds) and validates a plugin
    /// (its `init` must succeed) without registering it.
    pub async fn load(settings: PluginSettings) -> Result<Arc<Self>, LoadError> {
        let path = settings.path.clone();
        let compiled = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || compile(&path))
                .await
                .map_err(|e| LoadError::Link {
                    path: settings.path.clone(),
                    message: format!("compiler task failed: {e}"),
                })??
        };
        let name: Arc<str> = Arc::from(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
        );
        let config_json = settings.config.to_string();
        let pool = InstancePool::new(settings.instances);
        let mut plugin = WasmPlugin {
            name,
            settings,
            config_json,
            pre: compiled,
            kv: Arc::new(KvStore::default()),
            pool,
            interests: HookSet::NONE,
            topic_filters: Vec::new(),
            consecutive_failures: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
            events: OnceLock::new(),
            events_dropped: AtomicU64::new(0),
        };
        let (warm, registration) =
            plugin
                .instantiate()
                .await
                .map_err(|message| LoadError::Init {
                    path: path.clone(),
                    message,
                })?;
        plugin.interests = interests_of(registration.hooks);
        plugin.topic_filters = registration.topic_filters;
        plugin.pool.put(warm);
        let plugin = Arc::new(plugin);
        if plugin.interests.contains(HookSet::CLIENT_EVENTS)
            || plugin.interests.contains(HookSet::MESSAGE_EVENTS)
        {
            // Events are observed, never awaited by the routing path: a queue and one worker.
            let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
            let _ = plugin.events.set(tx);
            let weak = Arc::downgrade(&plugin);
            tokio::spawn(async move {
                while let Some((client, event)) = rx.recv().await {
                    let Some(plugin) = weak.upgrade() else { return };
                    plugin.run(Call::ClientEvent(client, event)).await;
                }
            });
        }
        Ok(plugin)
    }

    /// A value from the plugin's key-value store.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key)
    }

    /// Client events dropped because the plugin's queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(&self) -> i32 {
        self.settings.priority
    }

    /// Guest calls since load (hook calls answered from a cache are not counted).
    pub fn calls(&self) -> u64 {
        self.pool.calls()
    }

    /// Failed calls since load.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms.max(1))
    }

    /// A fresh instance with its `init` done.
    async fn instantiate(&self) -> Result<(Warm, wit::Registration), String> {
        let engine = self.pre.engine();
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.settings.memory_mb as usize) << 20)
            .instances(64)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            first_tick: None,
            // Instantiation and init may take longer than a hook call.
            budget: self.deadline() * 10,
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            plugin: self.name.clone(),
            kv: self.kv.clone(),
            current_client: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        // At every epoch tick a running guest yields to the executor (it never holds a runtime
        // thread for longer than a tick) or, past its budget, is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            let first = *s.first_tick.get_or_insert_with(std::time::Instant::now);
            if first.elapsed() + EPOCH_TICK > s.budget {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        let started = async {
            let bindings = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let registration = bindings
                .call_init(&mut store, &self.config_json)
                .await
                .map_err(|e| format!("{e:#}"))??;
            Ok::<_, String>((bindings, registration))
        };
        let (bindings, registration) = started.await?;
        store.data_mut().budget = self.deadline();
        Ok((Warm { store, bindings }, registration))
    }

    /// Runs one guest call on a warm instance under the deadline; any error or timeout throws
    /// the instance away (a trapped or interrupted instance cannot be entered again).
    async fn run(&self, call: Call<'_>) -> Option<Reply> {
        if self.is_disabled() {
            return None;
        }
        let warm = self.pool.take();
        let mut warm = match warm {
            Some(w) => w,
            None => match self.instantiate().await {
                Ok((w, _)) => w,
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            },
        };
        let outcome = {
            let Warm { store, bindings } = &mut warm;
            store.data_mut().first_tick = None;
            store.set_epoch_deadline(1);
            invoke(bindings, store, &call).await
        };
        match outcome {
            Ok(r) => {
                // Read first: a store on every call would bounce the line between cores.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                self.pool.put(warm);
                Some(r)
            }
            Err(e) => {
                let interrupted = matches!(
                    e.downcast_ref::<wasmtime::Trap>(),
                    Some(wasmtime::Trap::Interrupt)
                );
                if interrupted {
                    self.failed(&format!(
                        "interrupted after {} ms",
                        self.settings.timeout_ms
                    ));
                } else {
                    self.failed(&format!("{e:#}"));
                }
                None
            }
        }
    }

    fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        warn!(plugin = &*self.name, error = why, "plugin call failed");
        if n >= DISABLE_AFTER && !self.disabled.swap(true, Ordering::Relaxed) {
            error!(plugin = &*self.name, failures = n, on_error = ?self.settings.on_error, "plugin disabled after repeated failures; its hooks now follow on_error");
        }
    }

    fn wants_topic(&self, t: &str) -> bool {
        self.topic_filters.is_empty() || self.topic_filters.iter().any(|f| topic::matches(f, t))
    }
}

/// One guest call, with its arguments (the topic of an authorize borrowed: it runs per publish).
enum Call<'a> {
    ClientEvent(ClientRef, String),
    Authenticate(wit::ConnectRequest),
    Authorize(&'a ClientRef, wit::Access, &'a str, wit::Qos),
    Publish(ClientRef, wit::Message),
}

enum Reply {
    Done,
    Auth(wit::AuthResult),
    Acl(wit::AclResult),
    Message(wit::MessageResult),
}

async fn invoke(b: &MqttPlugin, s: &mut Store<State>, call: &Call<'_>) -> wasmtime::Result<Reply> {
    // The call's client is what `lookup-client` answers while the call runs.
    s.data_mut().current_client = match call {
        Call::ClientEvent(c, _) | Call::Publish(c, _) => Some(c.clone()),
        Call::Authorize(c, ..) => Some((*c).clone()),
        Call::Authenticate(_) => None,
    };
    let reply = match call {
        Call::ClientEvent(client, event) => b
            .call_on_client_event(&mut *s, client.handle, event)
            .await
            .map(|()| Reply::Done),
        Call::Authenticate(req) => b.call_authenticate(&mut *s, req).await.map(Reply::Auth),
        Call::Authorize(client, op, topic, qos) => b
            .call_authorize(&mut *s, client.handle, *op, topic, *qos)
            .await
            .map(Reply::Acl),
        Call::Publish(client, msg) => b
            .call_on_message_publish(&mut *s, client.handle, msg)
            .await
            .map(Reply::Message),
    };
    s.data_mut().current_client = None;
    reply
}

fn interests_of(hooks: wit::HookSet) -> HookSet {
    let mut set = HookSet::NONE;
    if hooks.contains(wit::HookSet::AUTHENTICATE) {
        set = set | HookSet::AUTHENTICATE;
    }
    if hooks.contains(wit::HookSet::AUTHORIZE) {
        set = set | HookSet::AUTHORIZE;
    }
    if hooks.contains(wit::HookSet::MESSAGE_PUBLISH) {
        set = set | HookSet::MESSAGE_PUBLISH;
    }
    if hooks.contains(wit::HookSet::CLIENT_EVENTS) {
        set = set | HookSet::CLIENT_EVENTS;
    }
    if hooks.contains(wit::HookSet::MESSAGE_EVENTS) {
        set = set | HookSet::MESSAGE_EVENTS;
    }
    set
}

/// Client events waiting for a plugin, at most this many; more are counted and dropped.
const EVENT_QUEUE: usize = 1024;

/// Authorize answers remembered per connection and plugin, at most this many.
const DECISION_CACHE_ENTRIES: usize = 256;

/// (plugin, publish?, topic or filter)
type DecisionKey = (Arc<str>, bool, String);

/// What the host keeps per connection: the client as guests see it (built once, not per
/// call) and, when enabled, recent authorize answers.
struct GuestClient {
    client: ClientRef,
    decisions: Mutex<HashMap<DecisionKey, (AclDecision, std::time::Instant)>>,
}

fn guest_client(c: &ClientInfo) -> Arc<GuestClient> {
    if let Some(any) = c.extension.get() {
        if let Ok(g) = any.clone().downcast::<GuestClient>() {
            return g;
        }
    }
    let g = Arc::new(GuestClient {
        client: ClientRef::new(client_of(c)),
        decisions: Mutex::new(HashMap::new()),
    });
    let _ = c.extension.set(g.clone());
    g
}

fn cached_client(c: &ClientInfo) -> ClientRef {
    guest_client(c).client.clone()
}

/// The receiving client of a message event: only its id is known where the event is raised.
fn receiver(client_id: &str) -> ClientRef {
    ClientRef::new(wit::ClientInfo {
        client_id: client_id.to_string(),
        username: None,
        peer_addr: String::new(),
        protocol: wit::ProtocolVersion::V5,
        listener: String::new(),
        cert_common_name: None,
        attributes: Vec::new(),
    })
}

fn client_of(c: &ClientInfo) -> wit::ClientInfo {
    wit::ClientInfo {
        client_id: c.client_id.to_string(),
        username: c.username.as_deref().map(str::to_string),
        peer_addr: c.peer_addr.to_string(),
        protocol: match c.protocol {
            ProtocolVersion::V31 => wit::ProtocolVersion::V3,
            ProtocolVersion::V311 => wit::ProtocolVersion::V311,
            ProtocolVersion::V5 => wit::ProtocolVersion::V5,
        },
        listener: c.listener.to_string(),
        cert_common_name: c.cert_common_name.as_deref().map(str::to_string),
        attributes: c.attributes.clone(),
    }
}

fn qos_of(q: QoS) -> wit::Qos {
    match q {
        QoS::AtMostOnce => wit::Qos::AtMostOnce,
        QoS::AtLeastOnce => wit::Qos::AtLeastOnce,
        QoS::ExactlyOnce => wit::Qos::ExactlyOnce,
    }
}

fn qos_from(q: wit::Qos) -> QoS {
    match q {
        wit::Qos::AtMostOnce => QoS::AtMostOnce,
        wit::Qos::AtLeastOnce => QoS::AtLeastOnce,
        wit::Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn reason_of(r: wit::DenyReason) -> ReasonCode {
    match r {
        wit::DenyReason::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        wit::DenyReason::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        wit::DenyReason::Banned => ReasonCode::BANNED,
        wit::DenyReason::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
        wit::DenyReason::TopicInvalid => ReasonCode::TOPIC_NAME_INVALID,
        wit::DenyReason::Unspecified => ReasonCode::UNSPECIFIED_ERROR,
    }
}

fn message_of(m: &Message) -> wit::Message {
    wit::Message {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: qos_of(m.qos),
        retain: m.retain,
        user_properties: m.properties.user_properties.clone(),
        content_type: m.properties.content_type.clone(),
        response_topic: m.properties.response_topic.clone(),
        correlation_data: m.properties.correlation_data.as_ref().map(|b| b.to_vec()),
        message_expiry: m.properties.message_expiry_interval,
    }
}

/// A loaded plugin as a link of the hook chain.
pub struct PluginHook(pub Arc<WasmPlugin>);

impl PluginHook {
    /// Queues an event for the plugin's event worker; a full queue drops it (counted).
    fn send_event(
        &self,
        tx: &tokio::sync::mpsc::Sender<(ClientRef, String)>,
        client: ClientRef,
        event: String,
    ) {
        if tx.try_send((client, event)).is_err() {
            self.0.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The plugin's answer, or the `on_error` answer and `false` when the call failed (a
    /// failed call's answer is never cached).
    async fn authorize_uncached(
        &self,
        client: &ClientRef,
        a: Access,
        t: &str,
        q: QoS,
    ) -> (AclDecision, bool) {
        let op = match a {
            Access::Publish => wit::Access::Publish,
            Access::Subscribe | Access::Read => wit::Access::Subscribe,
        };
        let qos = qos_of(q);
        match self.0.run(Call::Authorize(client, op, t, qos)).await {
            Some(Reply::Acl(wit::AclResult::Allow)) => (AclDecision::Allow, true),
            Some(Reply::Acl(wit::AclResult::Deny(r))) => (AclDecision::Deny(reason_of(r)), true),
            Some(Reply::Acl(wit::AclResult::Ignore)) => (AclDecision::Ignore, true),
            _ => {
                let d = match self.0.settings.on_error {
                    OnError::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                    OnError::Allow => AclDecision::Allow,
                    OnError::Ignore => AclDecision::Ignore,
                };
                (d, false)
            }
        }
    }
}

impl WasmPlugin {
    /// This plugin as a hook for `HookChain::register`.
    pub fn hook(self: &Arc<Self>) -> Arc<dyn Hook> {
        Arc::new(PluginHook(self.clone()))
    }
}

#[async_trait]
impl Hook for PluginHook {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn interests(&self) -> HookSet {
        self.0.interests
    }

    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        let req = wit::ConnectRequest {
            client: client_of(&c.client),
            password: c.password.as_ref().map(|p| p.to_vec()),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
        };
        match self.0.run(Call::Authenticate(req)).await {
            Some(Reply::Auth(wit::AuthResult::Allow(attrs))) => AuthDecision::Allow(attrs),
            Some(Reply::Auth(wit::AuthResult::Deny(r))) => AuthDecision::Deny(reason_of(r)),
            Some(Reply::Auth(wit::AuthResult::Ignore)) => AuthDecision::Ignore,
            _ => match self.0.settings.on_error {
                OnError::Deny => AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                OnError::Allow => AuthDecision::Allow(Vec::new()),
                OnError::Ignore => AuthDecision::Ignore,
            },
        }
    }

    async fn authorize(&self, c: &ClientInfo, a: Access, t: &str, q: QoS) -> AclDecision {
        if a == Access::Read {
            // Contract 0.2.0 has no read check: a plugin decided at subscribe time.
            return AclDecision::Ignore;
        }
        let ttl = self.0.settings.authorize_cache_ms;
        let guest = guest_client(c);
        if ttl == 0 {
            return self.authorize_uncached(&guest.client, a, t, q).await.0;
        }
        let key = (self.0.name.clone(), a == Access::Publish, t.to_string());
        if let Some((d, at)) = guest.decisions.lock().get(&key) {
            if at.elapsed() < Duration::from_millis(ttl) {
                return *d;
            }
        }
        let (decision, answered) = self.authorize_uncached(&guest.client, a, t, q).await;
        if answered {
            let mut cache = guest.decisions.lock();
            if cache.len() >= DECISION_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (decision, std::time::Instant::now()));
        }
        decision
    }
    fn on_event(&self, e: &Event) {
        let Some(tx) = self.0.events.get() else {
            return;
        };
        let (client, event) = match e {
            Event::ClientConnected(c) => (c, "connected".to_string()),
            Event::ClientDisconnected(c, why) => (c, format!("disconnected:{why}")),
            Event::SessionSubscribed(c, f, _) => (c, format!("subscribed:{f}")),
            Event::SessionUnsubscribed(c, f) => (c, format!("unsubscribed:{f}")),
            Event::MessageDelivered(to, m) => {
                return self.send_event(tx, receiver(to), format!("delivered:{}", m.topic))
            }
            Event::MessageAcked(to, m) => {
                return self.send_event(tx, receiver(to), format!("acked:{}", m.topic))
            }
            Event::MessageDropped(to, m, why) => {
                let to = to.as_deref().unwrap_or("");
                return self.send_event(tx, receiver(to), format!("dropped:{}:{why}", m.topic));
            }
            Event::MessageAccepted(..) => return,
        };
        self.send_event(tx, cached_client(client), event);
    }

    async fn on_publish(&self, c: &ClientInfo, m: &Message) -> MessageDecision {
        if !self.0.wants_topic(&m.topic) {
            return MessageDecision::Pass;
        }
        let client = cached_client(c);
        let msg = message_of(m);
        // A failing message hook never loses the message: it passes unchanged.
        match self.0.run(Call::Publish(client, msg)).await {
            Some(Reply::Message(wit::MessageResult::Drop)) => MessageDecision::Drop,
            Some(Reply::Message(wit::MessageResult::Modify(patch))) => {
                let mut changed = m.clone();
                if let Some(t) = patch.topic.filter(|t| topic::valid_topic_name(t)) {
                    changed.topic = t.into();
                }
                if let Some(p) = patch.payload {
                    changed.payload = p.into();
                }
                if let Some(q) = patch.qos {
                    changed.qos = qos_from(q);
                }
                if let Some(r) = patch.retain {
                    changed.retain = r;
                }
                if let Some(props) = patch.user_properties {
                    changed.properties.user_properties = props;
                }
                MessageDecision::Modify(Box::new(changed))
            }
            _ => MessageDecision::Pass,
        }
    }
}
