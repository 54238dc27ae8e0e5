//! What operators see of a session and the one thing they may do to its connection: a
//! snapshot of its state for the HTTP API, and a kick.

use super::Session;
use crate::session::AttachId;

/// A session as the HTTP API shows it: one lock, copied out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionSnapshot {
    pub client_id: String,
    pub connected: bool,
    pub expiry_interval_s: u32,
    /// Filter and granted QoS, sorted by filter.
    pub subscriptions: Vec<SubscriptionView>,
    pub queued: usize,
    pub inflight: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionView {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
}

impl Session {
    pub fn inspect(&self) -> SessionSnapshot {
        let st = self.state.lock();
        let mut subscriptions: Vec<SubscriptionView> = st
            .subscriptions
            .iter()
            .map(|(filter, s)| SubscriptionView {
                filter: filter.clone(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        SessionSnapshot {
            client_id: self.client_id.to_string(),
            connected: st.attached.is_some(),
            expiry_interval_s: st.expiry_interval,
            subscriptions,
            queued: st.queue.len(),
            inflight: st.inflight.len(),
        }
    }

    /// The filters this session is subscribed to.
    pub fn filters(&self) -> Vec<String> {
        self.state.lock().subscriptions.keys().cloned().collect()
    }

    /// Asks the connection attached as `id` to close (an operator's kick); the session stays.
    /// Returns false if `id` no longer owns it.
    pub fn kick(&self, id: AttachId) -> bool {
        let mut st = self.state.lock();
        if st.attached != Some(id) {
            return false;
        }
        st.kicked = true;
        drop(st);
        self.wake.notify_one();
        true
    }
}
