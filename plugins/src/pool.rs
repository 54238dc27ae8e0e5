//! Warm plugin instances, kept per thread.
//!
//! One shared list made every call take the same lock and move an instance that the other
//! core touched last: under load the lock's cache line and the instance's memory bounced
//! between cores on every call. Here each thread has its own shard (padded to a cache line),
//! so an instance is normally reused by the thread that used it before; a thread whose shard
//! is empty takes one from another shard before anyone instantiates a new one.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct InstancePool<T> {
    shards: Box<[CachePadded<Shard<T>>]>,
    per_shard: usize,
}

struct Shard<T> {
    idle: Mutex<Vec<T>>,
    /// Calls started by this shard's threads: a shared counter would be one more contended
    /// cache line per call.
    calls: AtomicU64,
}

/// Which shard the current thread uses; threads take numbers in turn.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

impl<T> InstancePool<T> {
    /// Keeps about `capacity` idle instances in all (rounded up to a multiple of the shard
    /// count), spread over one shard per core.
    pub fn new(capacity: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = cores.clamp(1, capacity.max(1));
        Self {
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(Shard {
                        idle: Mutex::new(Vec::new()),
                        calls: AtomicU64::new(0),
                    })
                })
                .collect(),
            per_shard: capacity.max(1).div_ceil(shards),
        }
    }

    fn local(&self) -> usize {
        thread_slot() % self.shards.len()
    }

    /// Counts a call, on this thread's shard.
    pub fn count_call(&self) {
        self.shards[self.local()]
            .calls
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An idle instance, preferably one this thread used last.
    pub fn take(&self) -> Option<T> {
        let home = self.local();
        (0..self.shards.len())
            .map(|i| (home + i) % self.shards.len())
            .find_map(|i| self.shards[i].idle.lock().pop())
    }

    /// Returns an instance after a successful call; beyond the shard's share it is dropped.
    /// Returns whether it was kept.
    pub fn put(&self, item: T) -> bool {
        let mut idle = self.shards[self.local()].idle.lock();
        if idle.len() < self.per_shard {
            idle.push(item);
            return true;
        }
        false
    }

    pub fn calls(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.calls.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_come_back_to_the_thread_that_used_them_and_are_shared_when_short() {
        let pool = InstancePool::new(4);
        pool.put(1);
        // Same thread: its own instance back.
        assert_eq!(pool.take(), Some(1));
        pool.put(1);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Another thread with an empty shard still finds one.
                let got = pool.take();
                assert_eq!(got, Some(1));
                assert_eq!(pool.take(), None);
                pool.count_call();
            });
        });
        pool.count_call();
        assert_eq!(pool.calls(), 2, "calls are counted on every shard");
    }

    #[test]
    fn idle_instances_are_bounded() {
        let pool = InstancePool::new(2);
        for i in 0..10 {
            pool.put(i);
        }
        let mut kept = 0;
        while pool.take().is_some() {
            kept += 1;
        }
        assert!(kept <= 2, "kept {kept}");
        assert!(kept >= 1);
    }
}
