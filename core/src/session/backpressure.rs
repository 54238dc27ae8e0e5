//! The one backpressure policy. A subscriber whose queue passes the high-water mark makes the
//! publisher that filled it stop reading (TCP then pushes back on that client) until the queue
//! drains below the low-water mark, instead of dropping what it sends. A subscriber that does
//! not catch up within the timeout is marked slow: publishers stop waiting for it and its
//! overflow is dropped and counted, so one stalled client cannot hold everyone back for long.

use super::Session;
use crate::config::MqttConfig;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How long a publisher waits for a congested subscriber before giving up on it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Backpressure {
    /// Per-session queue bound (online or offline).
    pub max_queued: usize,
    pub timeout: Duration,
}

impl Backpressure {
    pub fn from_config(cfg: &MqttConfig) -> Self {
        Self {
            max_queued: cfg.max_queued_messages,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Queue length at which publishers to an online session start waiting for it.
    pub fn high_water(&self) -> usize {
        (self.max_queued / 2).max(1)
    }

    /// Queue length below which waiting publishers are released.
    pub fn low_water(&self) -> usize {
        self.max_queued / 4
    }

    /// Holds the publisher (whose own session is `publisher`, if it has one) until `congested`
    /// drains, goes offline, or the timeout marks it slow.
    pub async fn wait(&self, congested: &Arc<Session>, publisher: Option<&Arc<Session>>) {
        if publisher.is_some_and(|p| Arc::ptr_eq(p, congested)) {
            return;
        }
        let notified = congested.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = congested.state.lock();
            if st.queue.len() <= self.low_water() || st.attached.is_none() || st.slow || st.ended {
                return;
            }
        }
        if tokio::time::timeout(self.timeout, notified).await.is_err() {
            congested.state.lock().slow = true;
            warn!(client_id = %congested.client_id, "slow subscriber: publishers no longer wait for it; its overflow is dropped");
        }
    }
}
