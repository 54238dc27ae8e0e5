//! One loaded plugin at run time: the shared engine and its epoch ticker, compiling and
//! linking a component, warm instances, and guarded guest calls (deadline, memory cap,
//! failure counting and disabling).

use crate::convert::{interests_of, EVENT_QUEUE};
use crate::host::{wit, ClientRef, KvStore, MqttPlugin, MqttPluginPre, State};
use crate::pool::InstancePool;
use crate::settings::{LoadError, PluginSettings};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_core::hooks::HookSet;
use switchyard_core::topic;
use tracing::{error, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

/// How often the epoch advances: how long a busy guest runs before it yields to the executor.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Consecutive failed calls after which a plugin is disabled.
const DISABLE_AFTER: u32 = 5;

/// The engine shared by every plugin, with its epoch ticker.
/// Why a fresh instance is not ready for calls.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceError {
    /// Instantiation trapped, ran out of memory or time.
    #[error("instantiation failed: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The call into the guest's `init` failed (trap, limit).
    #[error("trapped: {0:#}")]
    InitTrapped(wasmtime::Error),
    /// The guest's `init` returned an error: its own words.
    #[error("{0}")]
    InitRefused(String),
}

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
    pub(crate) name: Arc<str>,
    pub(crate) settings: PluginSettings,
    config_json: String,
    pre: MqttPluginPre<State>,
    kv: Arc<KvStore>,
    pool: InstancePool<Warm>,
    pub(crate) interests: HookSet,
    topic_filters: Vec<String>,
    consecutive_failures: AtomicU32,
    failures: AtomicU64,
    disabled: AtomicBool,
    /// Client events on their way to the guest (bounded; see `EVENT_QUEUE`).
    pub(crate) events: OnceLock<tokio::sync::mpsc::Sender<(ClientRef, String)>>,
    pub(crate) events_dropped: AtomicU64,
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
        let (warm, registration) = plugin.instantiate().await.map_err(|e| LoadError::Init {
            path: path.clone(),
            message: e.to_string(),
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
    async fn instantiate(&self) -> Result<(Warm, wit::Registration), InstanceError> {
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
                .map_err(InstanceError::Instantiate)?;
            let registration = bindings
                .call_init(&mut store, &self.config_json)
                .await
                .map_err(InstanceError::InitTrapped)?
                .map_err(InstanceError::InitRefused)?;
            Ok::<_, InstanceError>((bindings, registration))
        };
        let (bindings, registration) = started.await?;
        store.data_mut().budget = self.deadline();
        Ok((Warm { store, bindings }, registration))
    }

    /// Runs one guest call on a warm instance under the deadline; any error or timeout throws
    /// the instance away (a trapped or interrupted instance cannot be entered again).
    pub(crate) async fn run(&self, call: Call<'_>) -> Option<Reply> {
        if self.is_disabled() {
            return None;
        }
        let warm = self.pool.take();
        let mut warm = match warm {
            Some(w) => w,
            None => match self.instantiate().await {
                Ok((w, _)) => w,
                Err(e) => {
                    self.failed(&e.to_string());
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

    pub(crate) fn wants_topic(&self, t: &str) -> bool {
        self.topic_filters.is_empty() || self.topic_filters.iter().any(|f| topic::matches(f, t))
    }
}

/// One guest call, with its arguments (the topic of an authorize borrowed: it runs per publish).
pub(crate) enum Call<'a> {
    ClientEvent(ClientRef, String),
    Authenticate(wit::ConnectRequest),
    Authorize(&'a ClientRef, wit::Access, &'a str, wit::Qos),
    Publish(ClientRef, wit::Message),
}

pub(crate) enum Reply {
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
