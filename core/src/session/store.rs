//! Where sessions live between connections. The broker asks its [`SessionStore`] which session
//! a CONNECT resumes or replaces; [`MemoryStore`] keeps them in a map. Given a journal
//! ([`MemoryStore::durable`]) it makes every persistent session (expiry above 0) durable: its
//! changes are appended to the journal and it is rebuilt after a restart. A clustered store
//! (sessions resumable on another node) would implement the same trait.

use super::{Durable, Session};
use crate::persist::record::Rec;
use crate::persist::Journal;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// What a CONNECT asks of the store.
#[derive(Debug, Clone, Copy)]
pub struct SessionClaim<'a> {
    pub client_id: &'a Arc<str>,
    /// The authenticated user name (`None`: anonymous).
    pub user: Option<&'a Arc<str>>,
    /// Resume an existing session (clean start not set) instead of starting afresh.
    pub resume: bool,
    /// Refuse when an existing session was created by another user (`mqtt.bind_sessions`).
    pub bound_to_user: bool,
    pub expiry_interval: u32,
}

/// The client id's session belongs to another user: neither resumed nor replaced.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session of this client id belongs to another user")]
pub struct SessionOwnedByOther;

pub struct Opened {
    pub session: Arc<Session>,
    /// An existing session was resumed (CONNACK Session Present).
    pub resumed: bool,
    /// The session this one replaced, to be ended by the caller.
    pub replaced: Option<Arc<Session>>,
}

pub trait SessionStore: Send + Sync + 'static {
    /// Resolves a CONNECT: the stored session when it may be resumed, else a new one stored in
    /// place of any other.
    fn open(&self, claim: &SessionClaim<'_>) -> Result<Opened, SessionOwnedByOther>;
    fn get(&self, client_id: &str) -> Option<Arc<Session>>;
    /// Forgets `session` if it is still the one stored for its client id.
    fn remove(&self, session: &Arc<Session>) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn sessions(&self) -> Vec<Arc<Session>>;
    /// Puts back a session rebuilt after a restart (before any client connects).
    fn restore(&self, session: Arc<Session>);
}

#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    journal: Option<Arc<Journal>>,
}

impl MemoryStore {
    /// A store whose persistent sessions are written to `journal`.
    pub fn durable(journal: Arc<Journal>) -> Self {
        Self {
            sessions: Mutex::default(),
            journal: Some(journal),
        }
    }

    fn create(&self, claim: &SessionClaim<'_>) -> Session {
        let client_id = claim.client_id.clone();
        let user = claim.user.cloned();
        match &self.journal {
            Some(journal) if claim.expiry_interval > 0 => {
                let sid = journal.new_session_id();
                journal.append(&Rec::Open {
                    sid,
                    client_id: &client_id,
                    user: user.as_deref(),
                    expiry: claim.expiry_interval,
                });
                let durable = Durable::new(sid, journal.clone());
                Session::new_durable(client_id, user, claim.expiry_interval, durable)
            }
            _ => Session::new(client_id, user, claim.expiry_interval),
        }
    }
}

impl SessionStore for MemoryStore {
    fn open(&self, claim: &SessionClaim<'_>) -> Result<Opened, SessionOwnedByOther> {
        let mut sessions = self.sessions.lock();
        let existing = sessions.get(claim.client_id).cloned();
        if let Some(existing) = &existing {
            if claim.bound_to_user && existing.owner_user() != claim.user {
                return Err(SessionOwnedByOther);
            }
            if claim.resume && !existing.has_ended() {
                return Ok(Opened {
                    session: existing.clone(),
                    resumed: true,
                    replaced: None,
                });
            }
        }
        let session = Arc::new(self.create(claim));
        sessions.insert(claim.client_id.clone(), session.clone());
        Ok(Opened {
            session,
            resumed: false,
            replaced: existing,
        })
    }

    fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    fn remove(&self, session: &Arc<Session>) -> bool {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
            true
        } else {
            false
        }
    }

    fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    fn restore(&self, session: Arc<Session>) {
        self.sessions
            .lock()
            .insert(session.client_id.clone(), session);
    }
}
