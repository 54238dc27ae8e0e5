//! The store state of one plugin instance and the host functions the WIT world imports.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "mqtt-plugin",
    // Guest calls are async so a long-running guest yields to the executor at every epoch tick
    // instead of holding a runtime thread; host functions stay plain and quick.
    exports: { default: async },
});

pub use switchyard::plugin::types as wit;

/// Entries a plugin may keep in its key-value store, and their size limit.
const KV_MAX_ENTRIES: usize = 1024;
const KV_MAX_VALUE: usize = 64 * 1024;

/// A value and when it expires.
type KvEntry = (Vec<u8>, Option<Instant>);

/// A plugin's key-value store: shared by its instances, kept across calls.
#[derive(Default)]
pub struct KvStore {
    entries: Mutex<HashMap<String, KvEntry>>,
}

impl KvStore {
    /// A value as the plugin last stored it (for the host's own inspection).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.entries.lock();
        let (value, expires) = entries.get(key)?;
        if expires.is_some_and(|e| e <= Instant::now()) {
            return None;
        }
        Some(value.clone())
    }
}

pub struct State {
    /// The first epoch tick the current guest call saw, and how long the call may run:
    /// checked at every tick, where the guest also yields to the executor. The clock is read
    /// only by calls that last past a tick; the call started at most one tick before that.
    pub first_tick: Option<Instant>,
    pub budget: Duration,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: Arc<str>,
    pub kv: Arc<KvStore>,
    /// The client of the running call, for `lookup-client`.
    pub current_client: Option<ClientRef>,
}

/// A client as hook calls pass it: a handle the guest keeps, and the record `lookup-client`
/// returns for it. Built once per connection; the guest fetches the record once per instance.
#[derive(Clone)]
pub struct ClientRef {
    pub handle: u64,
    pub info: Arc<wit::ClientInfo>,
}

impl ClientRef {
    pub fn new(info: wit::ClientInfo) -> Self {
        static HANDLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            handle: HANDLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            info: Arc::new(info),
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for State {}

impl switchyard::plugin::host::Host for State {
    fn log(&mut self, level: switchyard::plugin::host::Level, msg: String) {
        use switchyard::plugin::host::Level;
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{msg}"),
            Level::Debug => tracing::debug!(plugin, "{msg}"),
            Level::Info => tracing::info!(plugin, "{msg}"),
            Level::Warn => tracing::warn!(plugin, "{msg}"),
            Level::Error => tracing::error!(plugin, "{msg}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        let mut entries = self.kv.entries.lock();
        match entries.get(&key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => {
                entries.remove(&key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    fn lookup_client(&mut self, client: u64) -> Option<wit::ClientInfo> {
        match &self.current_client {
            Some(c) if c.handle == client => Some((*c.info).clone()),
            _ => None,
        }
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) {
        if value.len() > KV_MAX_VALUE || key.len() > 1024 {
            tracing::warn!(plugin = &*self.plugin, "kv-set refused: entry too large");
            return;
        }
        let mut entries = self.kv.entries.lock();
        if entries.len() >= KV_MAX_ENTRIES && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
            if entries.len() >= KV_MAX_ENTRIES {
                tracing::warn!(plugin = &*self.plugin, "kv-set refused: store full");
                return;
            }
        }
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms)));
        entries.insert(key, (value, expires));
    }
}
