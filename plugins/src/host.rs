//! The store state of one plugin instance and the host functions the WIT world imports (for
//! both contract versions): the log (rate-limited), the clock, the key-value store (with a
//! quota), the client lookup.

use crate::bindings::{v2, v3, wit};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_core::log_limit::LogLimiter;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use v3::switchyard::plugin::host::KvError;

/// A value and when it expires.
type KvEntry = (Vec<u8>, Option<Instant>);

/// A plugin's key-value store: shared by its instances, kept across calls and hot swaps.
pub struct KvStore {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<KvInner>,
}

#[derive(Default)]
struct KvInner {
    entries: HashMap<String, KvEntry>,
    /// Bytes of keys and values held.
    bytes: usize,
}

impl KvInner {
    fn remove(&mut self, key: &str) {
        if let Some((v, _)) = self.entries.remove(key) {
            self.bytes -= key.len() + v.len();
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, e))| e.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
    }
}

impl KvStore {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            inner: Mutex::new(KvInner::default()),
        }
    }

    /// A value as the plugin last stored it, unless expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock();
        match inner.entries.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => {
                inner.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Stores an entry within the quota (entries, and bytes of keys and values).
    pub fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) -> Result<(), KvError> {
        let size = key.len() + value.len();
        if size > self.max_bytes {
            return Err(KvError::TooLarge);
        }
        let mut inner = self.inner.lock();
        // Whether the entry fits once the old value under the same key is gone.
        let fits = |i: &KvInner| {
            let old = i.entries.get(&key).map(|(v, _)| key.len() + v.len());
            let entries = i.entries.len() - usize::from(old.is_some());
            entries < self.max_entries && i.bytes - old.unwrap_or(0) + size <= self.max_bytes
        };
        if !fits(&inner) {
            inner.drop_expired(Instant::now());
            if !fits(&inner) {
                return Err(KvError::QuotaExceeded);
            }
        }
        inner.remove(&key);
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms)));
        inner.bytes += size;
        inner.entries.insert(key, (value, expires));
        Ok(())
    }

    /// (entries, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.entries.len(), inner.bytes)
    }
}

pub struct State {
    /// Epoch ticks the current call's guest code has run (the epoch callback fires only while
    /// guest code runs, so a call that waits for the executor is not charged for it), and how
    /// many it may run.
    pub ticks: u32,
    pub tick_budget: u32,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: Arc<str>,
    pub kv: Arc<KvStore>,
    pub log: Arc<LogLimiter>,
    /// The client of the running call, for `lookup-client`.
    pub current_client: Option<ClientRef>,
    /// What `http-fetch` may reach; `None`: nothing.
    pub http: Option<Arc<crate::http_import::HttpAccess>>,
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

impl State {
    fn write_log(&self, level: tracing::Level, msg: &str) {
        let Some(admitted) = self.log.admit(msg) else {
            return;
        };
        let plugin = &*self.plugin;
        let (line, dropped) = (admitted.line, admitted.dropped_before);
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, dropped, "{line}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, dropped, "{line}"),
            tracing::Level::INFO => tracing::info!(plugin, dropped, "{line}"),
            tracing::Level::WARN => tracing::warn!(plugin, dropped, "{line}"),
            tracing::Level::ERROR => tracing::error!(plugin, dropped, "{line}"),
        }
    }

    fn lookup(&self, client: u64) -> Option<&wit::ClientInfo> {
        match &self.current_client {
            Some(c) if c.handle == client => Some(&c.info),
            _ => None,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl v3::switchyard::plugin::types::Host for State {}

impl v3::switchyard::plugin::host::Host for State {
    fn log(&mut self, level: v3::switchyard::plugin::host::Level, msg: String) {
        use v3::switchyard::plugin::host::Level;
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.write_log(level, &msg);
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) -> Result<(), KvError> {
        self.kv.set(key, value, ttl_ms)
    }

    fn lookup_client(&mut self, client: u64) -> Option<wit::ClientInfo> {
        self.lookup(client).cloned()
    }

    async fn http_fetch(
        &mut self,
        req: v3::switchyard::plugin::host::HttpRequest,
    ) -> Result<v3::switchyard::plugin::host::HttpResponse, v3::switchyard::plugin::host::HttpError>
    {
        match self.http.clone() {
            Some(http) => http.fetch(req).await,
            None => Err(v3::switchyard::plugin::host::HttpError::NotAllowed),
        }
    }
}

impl v2::switchyard::plugin::types::Host for State {}

impl v2::switchyard::plugin::host::Host for State {
    fn log(&mut self, level: v2::switchyard::plugin::host::Level, msg: String) {
        use v2::switchyard::plugin::host::Level as Old;
        use v3::switchyard::plugin::host::{Host, Level};
        let level = match level {
            Old::Trace => Level::Trace,
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        };
        Host::log(self, level, msg);
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.get(&key)
    }

    /// 0.2.0 has no error result: a refused entry is logged (within the log's limits).
    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) {
        if let Err(e) = self.kv.set(key, value, ttl_ms) {
            self.write_log(tracing::Level::WARN, &format!("kv-set refused: {e:?}"));
        }
    }

    fn lookup_client(&mut self, client: u64) -> Option<v2::switchyard::plugin::types::ClientInfo> {
        self.lookup(client).map(crate::compat::client_v2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_quota_counts_entries_and_bytes_and_expired_entries_make_room() {
        let kv = KvStore::new(2, 100);
        assert_eq!(
            kv.set("k".into(), vec![0; 200], None),
            Err(KvError::TooLarge)
        );
        kv.set("a".into(), vec![0; 40], None).unwrap();
        kv.set("b".into(), vec![0; 40], Some(0)).unwrap();
        // Two entries held, but "b" has expired: it makes room.
        kv.set("c".into(), vec![0; 40], None).unwrap();
        assert_eq!(kv.usage(), (2, 82));
        assert_eq!(
            kv.set("d".into(), vec![0; 1], None),
            Err(KvError::QuotaExceeded)
        );
        // Replacing an entry is not growth.
        kv.set("a".into(), vec![1; 50], None).unwrap();
        assert_eq!(kv.get("a"), Some(vec![1; 50]));
        assert_eq!(
            kv.set("c".into(), vec![0; 60], None),
            Err(KvError::QuotaExceeded)
        );
        assert_eq!(
            kv.get("c"),
            Some(vec![0; 40]),
            "a refused replacement keeps the old value"
        );
    }
}
