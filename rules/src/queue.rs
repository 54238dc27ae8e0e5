//! The bounded queues between routing and the rule workers: one per worker, and an item's key
//! (its publisher's client id) picks the queue, so one publisher's messages are evaluated by
//! one worker, in the order they were accepted, and reach each sink in that order.
//!
//! A channel that wakes a blocked receiver on every send costs the routing thread a futex call
//! per message whenever the workers keep up, which is most of the time. Here a worker that
//! found work naps for a moment and looks again instead of blocking, so under load producers
//! only push; a worker parks (and needs a wake-up) only after a nap found nothing to do.
//!
//! With `overflow = "backpressure"` a producer that finds its queue full waits
//! ([`WorkQueue::push_waiting`]) for a worker to make room instead of dropping the item.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a busy worker waits for the next batch: the extra latency rules see under load.
const NAP: Duration = Duration::from_micros(300);

pub struct WorkQueue<T> {
    parts: Box<[Partition<T>]>,
    closed: AtomicBool,
}

struct Partition<T> {
    items: ArrayQueue<T>,
    thread: OnceLock<Thread>,
    parked: AtomicBool,
    /// Producers waiting for room (backpressure); workers only notify when there are some.
    waiting: AtomicUsize,
    room: Notify,
}

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    Full(T),
    Closed(T),
}

impl<T> WorkQueue<T> {
    /// `capacity` is shared out evenly between the `workers` queues.
    pub fn new(capacity: usize, workers: usize) -> Self {
        let workers = workers.max(1);
        let per_worker = capacity.div_ceil(workers).max(1);
        Self {
            parts: (0..workers)
                .map(|_| Partition {
                    items: ArrayQueue::new(per_worker),
                    thread: OnceLock::new(),
                    parked: AtomicBool::new(false),
                    waiting: AtomicUsize::new(0),
                    room: Notify::new(),
                })
                .collect(),
            closed: AtomicBool::new(false),
        }
    }

    fn part(&self, key: u64) -> &Partition<T> {
        &self.parts[(key % self.parts.len() as u64) as usize]
    }

    /// Adds an item to the queue of `key` without ever waiting; gives it back when that queue
    /// is full or everything is closed.
    pub fn push(&self, key: u64, item: T) -> Result<(), Refused<T>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Refused::Closed(item));
        }
        let part = self.part(key);
        part.items.push(item).map_err(Refused::Full)?;
        // Pairs with the fence in `serve`: either we see the worker parked, or it sees the item.
        fence(Ordering::SeqCst);
        if part.parked.load(Ordering::Relaxed) && part.parked.swap(false, Ordering::AcqRel) {
            if let Some(thread) = part.thread.get() {
                thread.unpark();
            }
        }
        Ok(())
    }

    /// Like [`push`](Self::push), but a full queue is waited on, up to `max_wait`; gives the
    /// item back if there was still no room then (or the queue closed).
    pub async fn push_waiting(
        &self,
        key: u64,
        item: T,
        max_wait: Duration,
    ) -> Result<(), Refused<T>> {
        let part = self.part(key);
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut item = item;
        part.waiting.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let notified = part.room.notified();
            tokio::pin!(notified);
            // Registered before trying, so a worker's notification in between is not lost.
            notified.as_mut().enable();
            match self.push(key, item) {
                Ok(()) => break Ok(()),
                Err(Refused::Closed(back)) => break Err(Refused::Closed(back)),
                Err(Refused::Full(back)) => item = back,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break match self.push(key, item) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        };
        part.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.items.len()).sum()
    }

    /// Stops taking items and wakes every worker and waiting producer; workers return once
    /// their queues are drained.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for part in self.parts.iter() {
            part.parked.store(false, Ordering::Relaxed);
            if let Some(thread) = part.thread.get() {
                thread.unpark();
            }
            part.room.notify_waiters();
        }
    }

    /// Runs on worker thread number `index`: hands every item of its queue to `handle` until
    /// the queue is closed and empty.
    pub fn serve(&self, index: usize, mut handle: impl FnMut(T)) {
        let Some(part) = self.parts.get(index) else {
            return;
        };
        let _ = part.thread.set(std::thread::current());
        loop {
            let mut worked = false;
            while let Some(item) = part.items.pop() {
                if part.waiting.load(Ordering::SeqCst) > 0 {
                    part.room.notify_waiters();
                }
                handle(item);
                worked = true;
            }
            if self.closed.load(Ordering::SeqCst) {
                if part.items.is_empty() {
                    return;
                }
                continue;
            }
            if worked {
                std::thread::sleep(NAP);
                continue;
            }
            part.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !part.items.is_empty() || self.closed.load(Ordering::SeqCst) {
                part.parked.store(false, Ordering::Relaxed);
                continue;
            }
            // A wake-up that raced with the check above leaves a token: park returns at once.
            std::thread::park();
            part.parked.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_item_is_served_once_across_workers_and_idle_periods() {
        let q = Arc::new(WorkQueue::<usize>::new(1024, 2));
        let sum = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let (q, sum, count) = (q.clone(), sum.clone(), count.clone());
                std::thread::spawn(move || {
                    q.serve(i, |v| {
                        sum.fetch_add(v, Ordering::Relaxed);
                        count.fetch_add(1, Ordering::Relaxed);
                    })
                })
            })
            .collect();
        let mut expected = 0;
        for round in 0..50usize {
            // Bursts separated by waits long enough for the workers to park again.
            for v in 0..100usize {
                let item = round * 100 + v;
                while q.push(item as u64, item).is_err() {
                    std::thread::yield_now();
                }
                expected += item;
            }
            while count.load(Ordering::Relaxed) < (round + 1) * 100 {
                std::thread::yield_now();
            }
        }
        q.close();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 5000);
        assert_eq!(sum.load(Ordering::Relaxed), expected);
        assert!(q.push(1, 1).is_err(), "a closed queue takes nothing");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_waiting() {
        let q = WorkQueue::<u8>::new(2, 1);
        assert!(q.push(7, 1).is_ok());
        assert!(q.push(7, 2).is_ok());
        assert_eq!(q.push(7, 3), Err(Refused::Full(3)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn one_keys_items_are_served_in_order_by_one_worker() {
        let q = Arc::new(WorkQueue::<(u64, u32)>::new(64, 4));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::<(usize, u64, u32)>::new()));
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (q, seen) = (q.clone(), seen.clone());
                std::thread::spawn(move || q.serve(i, |(k, n)| seen.lock().push((i, k, n))))
            })
            .collect();
        for n in 0..2000u32 {
            for key in 0..8u64 {
                while q.push(key, (key, n)).is_err() {
                    std::thread::yield_now();
                }
            }
        }
        q.close();
        for w in workers {
            w.join().unwrap();
        }
        let seen = seen.lock();
        assert_eq!(seen.len(), 16_000);
        for key in 0..8u64 {
            let mine: Vec<_> = seen.iter().filter(|(_, k, _)| *k == key).collect();
            assert!(mine
                .windows(2)
                .all(|w| w[0].0 == w[1].0 && w[0].2 + 1 == w[1].2));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_push_gets_in_when_a_worker_makes_room() {
        let q = Arc::new(WorkQueue::<u32>::new(1, 1));
        q.push(0, 0).unwrap();
        // Nobody serves yet: a waiting push times out and gets its item back.
        let r = q.push_waiting(0, 1, Duration::from_millis(50)).await;
        assert_eq!(r, Err(Refused::Full(1)));
        let served = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (q, served) = (q.clone(), served.clone());
            std::thread::spawn(move || {
                q.serve(0, |_| {
                    served.fetch_add(1, Ordering::SeqCst);
                })
            })
        };
        for n in 1..=200 {
            q.push_waiting(0, n, Duration::from_secs(10)).await.unwrap();
        }
        q.close();
        worker.join().unwrap();
        assert_eq!(served.load(Ordering::SeqCst), 201);
    }
}
