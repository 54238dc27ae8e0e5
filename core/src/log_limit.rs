//! Bounds what an extension (a plugin's `log`, a rule's `print`) can write to the broker's log:
//! at most `per_s` lines a second, each cut to `max_bytes`. Lines over the rate are dropped and
//! counted; the count is reported with the next line that gets through, so an operator sees
//! that something was held back without the flood itself.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct LogLimiter {
    per_s: u32,
    max_bytes: usize,
    /// Start of the current one-second window and lines written in it.
    window: Mutex<(Instant, u32)>,
    /// Dropped since the last line that got through.
    pending_drops: AtomicU64,
    dropped_total: AtomicU64,
}

/// A line that may be written, and how many were dropped before it.
pub struct Admitted<'a> {
    pub line: &'a str,
    pub dropped_before: u64,
}

impl LogLimiter {
    pub fn new(per_s: u32, max_bytes: usize) -> Self {
        Self {
            per_s,
            max_bytes,
            window: Mutex::new((Instant::now(), 0)),
            pending_drops: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
        }
    }

    /// `Some` with the (truncated) line when it may be written now; `None` when it is over the
    /// rate (counted).
    pub fn admit<'a>(&self, line: &'a str) -> Option<Admitted<'a>> {
        {
            let mut w = self.window.lock();
            let now = Instant::now();
            if now.duration_since(w.0) >= Duration::from_secs(1) {
                *w = (now, 0);
            }
            if w.1 >= self.per_s {
                drop(w);
                self.pending_drops.fetch_add(1, Ordering::Relaxed);
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            w.1 += 1;
        }
        Some(Admitted {
            line: truncate(line, self.max_bytes),
            dropped_before: self.pending_drops.swap(0, Ordering::Relaxed),
        })
    }

    /// Lines dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_rate_are_dropped_and_reported_with_the_next_one() {
        let limiter = LogLimiter::new(3, 8);
        for _ in 0..3 {
            assert!(limiter.admit("x").is_some());
        }
        assert!(limiter.admit("x").is_none());
        assert!(limiter.admit("x").is_none());
        assert_eq!(limiter.dropped(), 2);
        // A new window: the next line carries the count of what was held back.
        limiter.window.lock().0 -= Duration::from_secs(2);
        let next = limiter.admit("a long line").expect("new window");
        assert_eq!(next.dropped_before, 2);
        assert_eq!(next.line, "a long l");
        assert_eq!(limiter.admit("y").map(|a| a.dropped_before), Some(0));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
