//! The bounded queue between routing and the rule workers.
//!
//! A channel that wakes a blocked receiver on every send costs the routing thread a futex call
//! per message whenever the workers keep up, which is most of the time. Here a worker that
//! found work naps for a moment and looks again instead of blocking, so under load producers
//! only push; a worker parks (and needs a wake-up) only after a nap found nothing to do.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// How long a busy worker waits for the next batch: the extra latency rules see under load.
const NAP: Duration = Duration::from_micros(300);

pub struct WorkQueue<T> {
    items: ArrayQueue<T>,
    workers: Box<[WorkerSlot]>,
    closed: AtomicBool,
}

#[derive(Default)]
struct WorkerSlot {
    thread: OnceLock<Thread>,
    parked: AtomicBool,
}

impl<T> WorkQueue<T> {
    pub fn new(capacity: usize, workers: usize) -> Self {
        Self {
            items: ArrayQueue::new(capacity.max(1)),
            workers: (0..workers.max(1)).map(|_| WorkerSlot::default()).collect(),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds an item without ever waiting; gives it back when the queue is full or closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(item);
        }
        self.items.push(item)?;
        // Pairs with the fence in `serve`: either we see the worker parked, or it sees the item.
        fence(Ordering::SeqCst);
        for slot in self.workers.iter() {
            if slot.parked.load(Ordering::Relaxed) && slot.parked.swap(false, Ordering::AcqRel) {
                if let Some(thread) = slot.thread.get() {
                    thread.unpark();
                }
                break;
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Stops taking items and wakes every worker; they return once the queue is drained.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for slot in self.workers.iter() {
            slot.parked.store(false, Ordering::Relaxed);
            if let Some(thread) = slot.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Runs on worker thread number `index`: hands every item to `handle` until the queue is
    /// closed and empty.
    pub fn serve(&self, index: usize, mut handle: impl FnMut(T)) {
        let Some(slot) = self.workers.get(index) else {
            return;
        };
        let _ = slot.thread.set(std::thread::current());
        loop {
            let mut worked = false;
            while let Some(item) = self.items.pop() {
                handle(item);
                worked = true;
            }
            if self.closed.load(Ordering::SeqCst) {
                if self.items.is_empty() {
                    return;
                }
                continue;
            }
            if worked {
                std::thread::sleep(NAP);
                continue;
            }
            slot.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.items.is_empty() || self.closed.load(Ordering::SeqCst) {
                slot.parked.store(false, Ordering::Relaxed);
                continue;
            }
            // A wake-up that raced with the check above leaves a token: park returns at once.
            std::thread::park();
            slot.parked.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
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
                while q.push(item).is_err() {
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
        assert!(q.push(1).is_err(), "a closed queue takes nothing");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_waiting() {
        let q = WorkQueue::<u8>::new(2, 1);
        assert!(q.push(1).is_ok());
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.len(), 2);
    }
}
