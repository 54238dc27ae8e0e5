//! The connections attached now, for operators: who, from where, since when, and how much
//! traffic each one moved. Touched at connect and disconnect only; the counters are the
//! connection's own atomics, bumped once per read, write batch and publish.

use crate::hooks::ClientInfo;
use crate::session::{AttachId, Session};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// One attached connection.
pub struct LiveClient {
    pub client: Arc<ClientInfo>,
    pub session: Arc<Session>,
    pub id: AttachId,
    pub keep_alive: u16,
    pub connected_at: SystemTime,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
}

impl LiveClient {
    pub fn new(
        client: Arc<ClientInfo>,
        session: Arc<Session>,
        id: AttachId,
        keep_alive: u16,
        connected_at: SystemTime,
    ) -> Self {
        Self {
            client,
            session,
            id,
            keep_alive,
            connected_at,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
        }
    }

    /// Adds `n`. Each counter has one writer, the connection's own task, so a plain load and
    /// store do: no locked read-modify-write on the message path.
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Client id → the connection attached under it.
#[derive(Default)]
pub struct LiveClients {
    map: Mutex<HashMap<Arc<str>, Arc<LiveClient>>>,
}

impl LiveClients {
    /// Registers `live`, replacing the connection it took over.
    pub fn insert(&self, live: Arc<LiveClient>) {
        self.map.lock().insert(live.client.client_id.clone(), live);
    }

    /// Forgets the connection `id` of `client_id`, unless a newer one replaced it already.
    pub fn remove(&self, client_id: &str, id: AttachId) {
        let mut map = self.map.lock();
        if map.get(client_id).is_some_and(|l| l.id == id) {
            map.remove(client_id);
        }
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<LiveClient>> {
        self.map.lock().get(client_id).cloned()
    }

    /// Every attached connection, sorted by client id.
    pub fn list(&self) -> Vec<Arc<LiveClient>> {
        let mut all: Vec<_> = self.map.lock().values().cloned().collect();
        all.sort_by(|a, b| a.client.client_id.cmp(&b.client.client_id));
        all
    }
}
