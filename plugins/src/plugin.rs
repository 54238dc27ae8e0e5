//! One loaded plugin: compile, pre-instantiate, a pool of warm instances, guarded calls, and
//! the mapping between the WIT world and the core's [`Hook`] trait.

use crate::host::{wit, KvStore, MqttPlugin, MqttPluginPre, State};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Hook, HookSet, MessageDecision,
};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_core::{topic, Message};
use tracing::{error, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

/// How often the epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(2);
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
            pool.total_component_instances(512)
                .total_core_instances(4096)
                .total_memories(512)
                .total_tables(1024)
                .max_memory_size(256 << 20);
            let mut config = Config::new();
            config
                .epoch_interruption(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            let engine = Engine::new(&config).map_err(|e| e.to_string())?;
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
    pool: Mutex<Vec<Warm>>,
    interests: HookSet,
    topic_filters: Vec<String>,
    consecutive_failures: AtomicU32,
    failures: AtomicU64,
    disabled: AtomicBool,
}

impl WasmPlugin {
    /// Compiles and validates a plugin (its `init` must succeed) without registering it.
    pub fn load(settings: PluginSettings) -> Result<Arc<Self>, LoadError> {
        let path = settings.path.clone();
        let engine = engine().map_err(|message| LoadError::Link {
            path: path.clone(),
            message,
        })?;
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let component = Component::from_binary(engine, &bytes).map_err(|e| LoadError::Compile {
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
        let link = |e: wasmtime::Error| LoadError::Link {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let mut linker: Linker<State> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;
        MqttPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link)?;
        let pre =
            MqttPluginPre::new(linker.instantiate_pre(&component).map_err(link)?).map_err(link)?;
        let name: Arc<str> = Arc::from(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
        );
        let config_json = settings.config.to_string();
        let mut plugin = WasmPlugin {
            name,
            settings,
            config_json,
            pre,
            kv: Arc::new(KvStore::default()),
            pool: Mutex::new(Vec::new()),
            interests: HookSet::NONE,
            topic_filters: Vec::new(),
            consecutive_failures: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
        };
        let (warm, registration) = plugin.instantiate().map_err(|message| LoadError::Init {
            path: path.clone(),
            message,
        })?;
        plugin.interests = interests_of(registration.hooks);
        plugin.topic_filters = registration.topic_filters;
        plugin.pool.lock().push(warm);
        Ok(Arc::new(plugin))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(&self) -> i32 {
        self.settings.priority
    }

    /// Failed calls since load.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    fn deadline_ticks(&self) -> u64 {
        (self.settings.timeout_ms / EPOCH_TICK.as_millis() as u64).max(1)
    }

    /// A fresh instance with its `init` done.
    fn instantiate(&self) -> Result<(Warm, wit::Registration), String> {
        let engine = self.pre.engine();
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.settings.memory_mb as usize) << 20)
            .instances(64)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            plugin: self.name.clone(),
            kv: self.kv.clone(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("{e:#}"))?;
        store.set_epoch_deadline(self.deadline_ticks());
        let registration = bindings
            .call_init(&mut store, &self.config_json)
            .map_err(|e| format!("{e:#}"))??;
        Ok((Warm { store, bindings }, registration))
    }

    /// Runs one guest call on a warm instance; any error throws the instance away.
    fn call<R>(
        &self,
        f: impl FnOnce(&MqttPlugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Option<R> {
        if self.is_disabled() {
            return None;
        }
        let warm = self.pool.lock().pop();
        let mut warm = match warm {
            Some(w) => w,
            None => match self.instantiate() {
                Ok((w, _)) => w,
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            },
        };
        warm.store.set_epoch_deadline(self.deadline_ticks());
        match f(&warm.bindings, &mut warm.store) {
            Ok(r) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let mut pool = self.pool.lock();
                if pool.len() < self.settings.instances.max(1) {
                    pool.push(warm);
                }
                Some(r)
            }
            Err(e) => {
                // A trapped instance cannot be entered again; it is dropped here.
                self.failed(&format!("{e:#}"));
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

    /// Runs `f` on the blocking pool: a guest may run up to its deadline.
    async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&MqttPlugin, &mut Store<State>) -> wasmtime::Result<R> + Send + 'static,
    ) -> Option<R> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.call(f))
            .await
            .ok()
            .flatten()
    }

    fn wants_topic(&self, t: &str) -> bool {
        self.topic_filters.is_empty() || self.topic_filters.iter().any(|f| topic::matches(f, t))
    }
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
    set
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
        match self.0.run(move |b, s| b.call_authenticate(s, &req)).await {
            Some(wit::AuthResult::Allow(attrs)) => AuthDecision::Allow(attrs),
            Some(wit::AuthResult::Deny(r)) => AuthDecision::Deny(reason_of(r)),
            Some(wit::AuthResult::Ignore) => AuthDecision::Ignore,
            None => match self.0.settings.on_error {
                OnError::Deny => AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                OnError::Allow => AuthDecision::Allow(Vec::new()),
                OnError::Ignore => AuthDecision::Ignore,
            },
        }
    }

    async fn authorize(&self, c: &ClientInfo, a: Access, t: &str, q: QoS) -> AclDecision {
        let client = client_of(c);
        let op = match a {
            Access::Publish => wit::Access::Publish,
            Access::Subscribe => wit::Access::Subscribe,
        };
        let topic = t.to_string();
        let qos = qos_of(q);
        match self
            .0
            .run(move |b, s| b.call_authorize(s, &client, op, &topic, qos))
            .await
        {
            Some(wit::AclResult::Allow) => AclDecision::Allow,
            Some(wit::AclResult::Deny(r)) => AclDecision::Deny(reason_of(r)),
            Some(wit::AclResult::Ignore) => AclDecision::Ignore,
            None => match self.0.settings.on_error {
                OnError::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                OnError::Allow => AclDecision::Allow,
                OnError::Ignore => AclDecision::Ignore,
            },
        }
    }

    async fn on_publish(&self, c: &ClientInfo, m: &Message) -> MessageDecision {
        if !self.0.wants_topic(&m.topic) {
            return MessageDecision::Pass;
        }
        let client = client_of(c);
        let msg = message_of(m);
        // A failing message hook never loses the message: it passes unchanged.
        match self
            .0
            .run(move |b, s| b.call_on_message_publish(s, &client, &msg))
            .await
        {
            Some(wit::MessageResult::Drop) => MessageDecision::Drop,
            Some(wit::MessageResult::Modify(patch)) => {
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
