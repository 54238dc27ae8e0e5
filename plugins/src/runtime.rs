//! One loaded plugin: the shared engine and its epoch ticker, compiling and linking a component
//! (of either contract version), and making instances (memory cap, tick budget, the instance
//! cap's permit). Guest calls are in `call`.

use crate::bindings::{v2, v3, wit};
use crate::breaker::Breaker;
use crate::compat;
use crate::convert::{interests_of, EVENT_QUEUE};
use crate::host::{ClientRef, KvStore, State};
use crate::pool::InstancePool;
use crate::settings::{LoadError, PluginSettings};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_core::hooks::HookSet;
use switchyard_core::log_limit::LogLimiter;
use switchyard_core::topic;
use tracing::warn;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

/// How often the epoch advances: how long a busy guest runs before it yields to the executor.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Component instances the engine's pool holds, for all plugins together.
pub const ENGINE_INSTANCES: usize = 256;
/// The WASI poll interface as wasmtime-wasi links it; its waits are replaced by traps. Bump it
/// with wasmtime-wasi: `sleeping_plugin_answers_every_connect_within_its_deadline` fails (the
/// sleeps turn into host-side time-outs) when this no longer names what is linked.
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// Why a fresh instance is not ready for calls.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceError {
    /// Instantiation failed (the engine's pool exhausted, out of memory or time).
    #[error("instantiation failed: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The call into the guest's `init` failed (trap, limit).
    #[error("trapped: {0:#}")]
    InitTrapped(wasmtime::Error),
    /// The guest's `init` returned an error: its own words.
    #[error("{0}")]
    InitRefused(String),
}

/// The engine shared by every plugin, with its epoch ticker.
fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(ENGINE_INSTANCES as u32)
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

/// A compiled plugin, ready to instantiate, for the contract version it was built against.
pub(crate) enum Pre {
    V3(v3::MqttPluginPre<State>),
    V2(v2::MqttPluginPre<State>),
}

/// An instance's exports.
pub(crate) enum Guest {
    V3(v3::MqttPlugin),
    V2(v2::MqttPlugin),
}

/// A guest may not wait: `poll` and `pollable.block` (what `std::thread::sleep` becomes on
/// wasm32-wasip2) trap instead. A wait happens outside guest code, where no epoch deadline can
/// interrupt it, and would hold an instance and a CONNECT for as long as the guest likes.
fn forbid_waiting(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    for name in ["poll", "[method]pollable.block"] {
        poll.func_new(name, |_, _, _, _| {
            Err(wasmtime::Error::msg(
                "plugins may not wait (poll, sleep): the contract forbids it",
            ))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Reads, compiles and links a component against the host's imports (both versions).
fn compile(path: &Path) -> Result<Pre, LoadError> {
    let link_err = |message: String| LoadError::Link {
        path: path.to_path_buf(),
        message,
    };
    let engine = engine().map_err(link_err)?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let component = Component::from_binary(engine, &bytes).map_err(|e| LoadError::Compile {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    let link = |e: wasmtime::Error| link_err(format!("{e:#}"));
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    forbid_waiting(&mut linker).map_err(link)?;
    v3::MqttPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link)?;
    v2::MqttPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(link)?;
    let pre = linker.instantiate_pre(&component).map_err(link)?;
    match v3::MqttPluginPre::new(pre.clone()) {
        Ok(p) => Ok(Pre::V3(p)),
        Err(current) => v2::MqttPluginPre::new(pre).map(Pre::V2).map_err(|_| {
            link_err(format!(
                "exports neither contract 0.3.0 nor 0.2.0 ({current:#})"
            ))
        }),
    }
}

/// A ready instance. Holds a permit of its plugin's instance cap for its whole life, so a call
/// on a warm instance touches no shared counter.
pub(crate) struct Warm {
    pub(crate) store: Store<State>,
    pub(crate) guest: Guest,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

pub struct WasmPlugin {
    pub(crate) name: Arc<str>,
    /// `plugin:` and the canonical path: what the hook chain knows it by.
    pub(crate) id: Arc<str>,
    /// Unique per load: answers cached for one version are never served for another.
    pub(crate) serial: u64,
    pub(crate) settings: PluginSettings,
    config_json: String,
    pre: Pre,
    pub(crate) kv: Arc<KvStore>,
    pub(crate) log: Arc<LogLimiter>,
    pub(crate) http: Option<Arc<crate::http_import::HttpAccess>>,
    pub(crate) pool: InstancePool<Warm>,
    /// The instance cap; idle instances are returned through `returned`.
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    pub(crate) returned: tokio::sync::Notify,
    pub(crate) waiting: AtomicUsize,
    pub(crate) interests: HookSet,
    topic_filters: Vec<String>,
    pub(crate) breaker: Breaker,
    pub(crate) failures: AtomicU64,
    pub(crate) host_failures: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Events on their way to the guest (bounded; see `EVENT_QUEUE`).
    pub(crate) events: OnceLock<tokio::sync::mpsc::Sender<(ClientRef, crate::call::Observed)>>,
    pub(crate) events_dropped: AtomicU64,
}

/// The hook id of the plugin at `path`.
pub fn plugin_id(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!("plugin:{}", canonical.display())
}

impl WasmPlugin {
    /// Compiles (on the blocking pool: it takes tens of milliseconds) and validates a plugin
    /// (its `init` must succeed) without registering it. `kv` carries a store over from the
    /// version this one replaces.
    pub async fn load(settings: PluginSettings) -> Result<Arc<Self>, LoadError> {
        Self::load_with(settings, None).await
    }

    pub(crate) async fn load_with(
        settings: PluginSettings,
        kv: Option<Arc<KvStore>>,
    ) -> Result<Arc<Self>, LoadError> {
        settings.validate()?;
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
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let name: Arc<str> = Arc::from(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
        );
        let kv = kv.unwrap_or_else(|| {
            Arc::new(KvStore::new(settings.kv_max_entries, settings.kv_max_bytes))
        });
        let mut plugin = WasmPlugin {
            name,
            id: Arc::from(plugin_id(&path)),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            config_json: settings.config.to_string(),
            pre: compiled,
            kv,
            log: Arc::new(LogLimiter::new(settings.log_per_s, settings.log_max_bytes)),
            http: crate::http_import::HttpAccess::new(
                &settings.allowed_hosts,
                settings.http_timeout_ms,
                settings.http_max_bytes,
            )
            .map(Arc::new),
            pool: InstancePool::new(settings.instances.min(settings.max_instances)),
            permits: Arc::new(tokio::sync::Semaphore::new(settings.max_instances)),
            returned: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            interests: HookSet::NONE,
            topic_filters: Vec::new(),
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_backoff_ms),
            ),
            failures: AtomicU64::new(0),
            host_failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            events: OnceLock::new(),
            events_dropped: AtomicU64::new(0),
            settings,
        };
        let init_error = |message: String| LoadError::Init {
            path: path.clone(),
            message,
        };
        let permit = plugin
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|e| init_error(e.to_string()))?;
        let (warm, registration) = plugin
            .instantiate(permit)
            .await
            .map_err(|e| init_error(e.to_string()))?;
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
                    plugin.run(crate::call::Call::Event(client, event)).await;
                }
            });
        }
        Ok(plugin)
    }

    /// A value from the plugin's key-value store.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key)
    }

    /// Events dropped because the plugin's queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the hook chain knows this plugin by (`plugin:` and its canonical path).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn priority(&self) -> i32 {
        self.settings.priority
    }

    /// The contract version the guest was built against.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::V3(_) => "0.3.0",
            Pre::V2(_) => "0.2.0",
        }
    }

    /// Guest calls since load (hook calls answered from a cache are not counted).
    pub fn calls(&self) -> u64 {
        self.pool.calls()
    }

    /// Calls the guest failed (trap, time or memory limit, a forbidden wait).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Calls the host could not run (no instance free in time, the engine's pool exhausted,
    /// the executor too busy): not held against the plugin.
    pub fn host_failures(&self) -> u64 {
        self.host_failures.load(Ordering::Relaxed)
    }

    /// Calls answered with `on_error` without running the guest, its breaker being open.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// `closed`, `open` or `half-open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.state()
    }

    /// Closes the breaker (SIGHUP, an operator).
    pub fn reset_breaker(&self) {
        self.breaker.reset();
    }

    /// Log lines the plugin wrote over its rate.
    pub fn log_dropped(&self) -> u64 {
        self.log.dropped()
    }

    pub(crate) fn tick_budget(&self, ms: u64) -> u32 {
        let ticks = ms / EPOCH_TICK.as_millis().max(1) as u64;
        ticks.clamp(1, u64::from(u32::MAX)) as u32
    }

    /// A fresh instance with its `init` done, holding `permit`.
    pub(crate) async fn instantiate(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(Warm, wit::Registration), InstanceError> {
        let engine = match &self.pre {
            Pre::V3(p) => p.engine(),
            Pre::V2(p) => p.engine(),
        };
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.settings.memory_mb as usize) << 20)
            .instances(64)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            ticks: 0,
            // Instantiation and init may take longer than a hook call.
            tick_budget: self.tick_budget(self.settings.timeout_ms.saturating_mul(10)),
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            plugin: self.name.clone(),
            kv: self.kv.clone(),
            log: self.log.clone(),
            current_client: None,
            http: self.http.clone(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        // At every epoch tick a running guest yields to the executor (it never holds a runtime
        // thread for longer than a tick) or, past its budget, is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.tick_budget {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        let config = self.config_json.as_str();
        // The same steps for either version; only the types differ.
        macro_rules! start {
            ($pre:expr, $guest:path, $registration:expr) => {{
                let b = $pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(InstanceError::Instantiate)?;
                let r = b
                    .call_init(&mut store, config)
                    .await
                    .map_err(InstanceError::InitTrapped)?
                    .map_err(InstanceError::InitRefused)?;
                ($guest(b), $registration(r))
            }};
        }
        let (guest, registration) = match &self.pre {
            Pre::V3(pre) => start!(pre, Guest::V3, std::convert::identity),
            Pre::V2(pre) => start!(pre, Guest::V2, compat::registration_v3),
        };
        store.data_mut().tick_budget = self.tick_budget(self.settings.timeout_ms);
        Ok((
            Warm {
                store,
                guest,
                _permit: permit,
            },
            registration,
        ))
    }

    pub(crate) fn wants_topic(&self, t: &str) -> bool {
        self.topic_filters.is_empty() || self.topic_filters.iter().any(|f| topic::matches(f, t))
    }
}
