//! A token bucket: `rate` tokens a second, holding at most one second's worth, so a client may
//! burst up to its rate and then sustain it. Owned by one task (no lock).

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when `rate` is 0 (no limit): callers keep an `Option` and pay nothing.
    pub fn new(rate: u64) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many (a request larger than the bucket is allowed
    /// once it is full, so nothing is refused forever).
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = (n as f64).min(self.rate);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes one token, returning how long to wait first when there is none.
    pub fn take_or_wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_its_rate_then_sustains_it() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10).unwrap();
        assert!((0..10).all(|_| b.try_take(1, t0)));
        assert!(!b.try_take(1, t0), "the burst is one second's worth");
        assert!(
            b.try_take(1, t0 + Duration::from_millis(100)),
            "refilled at the rate"
        );
        assert!(TokenBucket::new(0).is_none(), "0 means no limit");
    }

    #[test]
    fn waits_are_spread_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100).unwrap();
        for _ in 0..100 {
            assert_eq!(b.take_or_wait(t0), None);
        }
        let w = b.take_or_wait(t0).unwrap();
        assert!(
            w > Duration::from_millis(5) && w < Duration::from_millis(15),
            "{w:?}"
        );
    }
}
