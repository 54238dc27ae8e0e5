//! A plugin's circuit breaker. Closed: calls run. After `threshold` consecutive failures of the
//! guest it opens: calls do not run (they get the plugin's `on_error` answer) until the back-off
//! has passed; then one call runs as a probe (half-open). A probe that succeeds closes the
//! breaker; one that fails opens it again with the back-off doubled, up to [`MAX_BACKOFF`].
//! Failures of the host (no instance free in time, the pool exhausted, an executor too busy to
//! run the guest) are never reported here: they say nothing about the plugin.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Call,
    /// The one call that tests an open breaker; report its outcome with `probe = true`.
    Probe,
    /// Open: do not call the guest.
    Reject,
}

pub struct Breaker {
    threshold: u32,
    base_backoff: Duration,
    /// Read on every call: the only shared state the closed path touches.
    state: AtomicU8,
    consecutive: AtomicU32,
    open: Mutex<OpenState>,
}

struct OpenState {
    until: Instant,
    backoff: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, backoff: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base_backoff: backoff,
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            open: Mutex::new(OpenState {
                until: Instant::now(),
                backoff,
            }),
        }
    }

    pub fn admit(&self) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Call,
            HALF_OPEN => Admission::Reject,
            _ => {
                let open = self.open.lock();
                if Instant::now() >= open.until
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Admission::Probe
                } else {
                    Admission::Reject
                }
            }
        }
    }

    pub fn success(&self, probe: bool) {
        if probe {
            let mut open = self.open.lock();
            open.backoff = self.base_backoff;
            self.consecutive.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("plugin breaker closed after a successful probe");
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            // Read first: a store on every call would bounce the line between cores.
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Reports a failure of the guest; returns true when this failure opened the breaker.
    pub fn failure(&self, probe: bool) -> bool {
        let mut open = self.open.lock();
        if probe {
            open.backoff = (open.backoff * 2).min(MAX_BACKOFF);
            open.until = Instant::now() + open.backoff;
            self.state.store(OPEN, Ordering::Release);
            return true;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold && self.state.load(Ordering::Acquire) == CLOSED {
            open.backoff = self.base_backoff;
            open.until = Instant::now() + open.backoff;
            self.state.store(OPEN, Ordering::Release);
            return true;
        }
        false
    }

    /// The probe never reached the guest (a failure of the host): open again, ready for the
    /// next call to probe, with the back-off unchanged.
    pub fn probe_abandoned(&self) {
        let mut open = self.open.lock();
        open.until = Instant::now();
        self.state.store(OPEN, Ordering::Release);
    }

    /// Closes the breaker (SIGHUP, an operator).
    pub fn reset(&self) {
        let mut open = self.open.lock();
        open.backoff = self.base_backoff;
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.store(CLOSED, Ordering::Release);
    }

    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CLOSED => "closed",
            OPEN => "open",
            _ => "half-open",
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// The back-off the breaker waits (or would wait) before its next probe.
    pub fn backoff(&self) -> Duration {
        self.open.lock().backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expire(b: &Breaker) {
        b.open.lock().until = Instant::now() - Duration::from_millis(1);
    }

    #[test]
    fn opens_after_the_threshold_and_a_success_in_between_starts_over() {
        let b = Breaker::new(3, Duration::from_secs(2));
        assert!(!b.failure(false));
        assert!(!b.failure(false));
        b.success(false);
        assert!(!b.failure(false));
        assert!(!b.failure(false));
        assert_eq!(b.admit(), Admission::Call);
        assert!(b.failure(false), "third in a row opens it");
        assert_eq!(b.state(), "open");
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn one_probe_after_the_backoff_doubles_on_failure_and_closes_on_success() {
        let b = Breaker::new(1, Duration::from_secs(2));
        b.failure(false);
        expire(&b);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        assert_eq!(b.state(), "half-open");
        b.probe_abandoned();
        assert_eq!(
            b.admit(),
            Admission::Probe,
            "a probe the host dropped is retried"
        );
        b.failure(true);
        assert_eq!(b.backoff(), Duration::from_secs(4));
        assert_eq!(
            b.admit(),
            Admission::Reject,
            "open again for the doubled back-off"
        );
        expire(&b);
        assert_eq!(b.admit(), Admission::Probe);
        b.success(true);
        assert_eq!(b.state(), "closed");
        assert_eq!(b.backoff(), Duration::from_secs(2));
        assert_eq!(b.admit(), Admission::Call);
    }

    #[test]
    fn backoff_is_capped_and_reset_closes() {
        let b = Breaker::new(1, Duration::from_secs(40));
        b.failure(false);
        for _ in 0..3 {
            expire(&b);
            assert_eq!(b.admit(), Admission::Probe);
            b.failure(true);
        }
        assert_eq!(b.backoff(), MAX_BACKOFF);
        b.reset();
        assert_eq!(b.admit(), Admission::Call);
    }
}
