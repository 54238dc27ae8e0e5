//! The one backpressure policy. A subscriber whose queue passes the high-water mark (half of
//! `max_queued_messages`, or `backpressure_queue_ms` of what it drained lately if that is less:
//! the queue's age, not its limit, bounds latency) makes the publisher that filled it stop
//! reading (TCP then pushes back on that client) until the queue drains below the low-water
//! mark, instead of dropping what it sends — but only while that subscriber keeps up. One that
//! takes nothing from its queue for a fifth of `backpressure_wait_ms`, or has not drained below
//! the low-water mark within `backpressure_wait_ms` of passing the high-water mark, is marked
//! slow: publishers stop
//! waiting for it, its QoS 0 overflow makes room and its QoS 1/2 overflow is dropped and counted
//! (`slow_subscriber = "drop"`) or its connection is closed (`"disconnect"`). So one congestion
//! episode of a stalled or trickling client holds publishers for at most that bound, and the
//! mark stays until the client has caught up (drained below the low-water mark).

use super::state::Stamp;
use super::Session;
use crate::config::{MqttConfig, SlowSubscriberPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backpressure {
    /// Per-session queue bound (online or offline).
    pub max_queued: usize,
    /// The most one congestion episode of one subscriber holds its publishers.
    pub max_wait: Duration,
    /// A congested subscriber that takes nothing from its queue for this long is slow.
    pub stall: Duration,
    pub policy: SlowSubscriberPolicy,
    /// How many milliseconds of its drain rate an online subscriber may have queued.
    pub queue_ms: usize,
}

/// The high-water mark never drops below this, whatever the drain rate: bursts of a quiet
/// subscriber are not held back.
const MIN_ONLINE_HIGH_WATER: usize = 1024;

/// What a wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The subscriber drained, went offline or was already marked slow.
    Released,
    /// This wait marked the subscriber slow (counted and logged once by the caller).
    MarkedSlow,
}

impl Backpressure {
    pub fn from_config(cfg: &MqttConfig) -> Self {
        let max_wait = Duration::from_millis(cfg.backpressure_wait_ms);
        Self {
            max_queued: cfg.max_queued_messages,
            max_wait,
            stall: max_wait / 5,
            policy: cfg.slow_subscriber,
            queue_ms: cfg.backpressure_queue_ms as usize,
        }
    }

    /// Queue length at which publishers to an online session that drains `rate` messages a
    /// millisecond start waiting for it.
    pub fn high_water(&self, rate: u32) -> usize {
        let by_time = (rate as usize)
            .saturating_mul(self.queue_ms)
            .max(MIN_ONLINE_HIGH_WATER);
        (self.max_queued / 2).max(1).min(by_time)
    }

    /// Queue length below which waiting publishers are released.
    pub fn low_water(&self, rate: u32) -> usize {
        self.high_water(rate) / 2
    }

    /// Holds the publisher (whose own session is `publisher`, if it has one) until `congested`
    /// drains, goes offline, or turns out not to keep up.
    pub async fn wait(
        &self,
        congested: &Arc<Session>,
        publisher: Option<&Arc<Session>>,
    ) -> WaitOutcome {
        if publisher.is_some_and(|p| Arc::ptr_eq(p, congested)) {
            return WaitOutcome::Released;
        }
        loop {
            let notified = congested.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut st = congested.state.lock();
                if st.queue.len() <= self.low_water(st.drain_rate)
                    || st.attached.is_none()
                    || st.slow
                    || st.ended
                {
                    return WaitOutcome::Released;
                }
                let now = Instant::now();
                let stamp = Stamp::at(now);
                let since = *st.congested_since.get_or_insert(stamp);
                // Draining before this episode began says nothing about keeping up now.
                let progress = st.last_drain.map_or(since, |d| d.latest(since));
                let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
                let episode_left = ms(self.max_wait).saturating_sub(since.ms_until(stamp));
                let stall_left = ms(self.stall).saturating_sub(progress.ms_until(stamp));
                let left = episode_left.min(stall_left);
                let deadline = now + Duration::from_millis(u64::from(left));
                if left == 0 {
                    st.slow = true;
                    let evict = self.policy == SlowSubscriberPolicy::Disconnect;
                    st.evicted = evict;
                    drop(st);
                    // Publishers waiting for it go on; its connection closes if so chosen.
                    congested.space.notify_waiters();
                    if evict {
                        congested.wake();
                    }
                    return WaitOutcome::MarkedSlow;
                }
                deadline
            };
            // Released by the drain: go on even if others have refilled the queue since, or
            // the publishers woken last would wait again and again.
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_ok()
            {
                return WaitOutcome::Released;
            }
        }
    }
}
