//! Overload protection. Once a second the monitor compares the process's resident memory with
//! `overload_memory_mb` (0: 80% of the machine's memory) and the messages queued in all
//! sessions with `overload_queued_messages`. Past either, the broker is overloaded: new
//! connections are refused and QoS 0 deliveries are shed (counted as `overload`), so what is
//! already accepted can drain; `/health` says so. Below 90% of both it recovers on its own.

use crate::broker::Broker;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Resident memory of this process in bytes (Linux), if readable.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The machine's memory in bytes (Linux), if readable.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The memory threshold in bytes: as configured, else 80% of the machine's memory.
pub fn memory_threshold(configured_mb: u64) -> Option<u64> {
    if configured_mb > 0 {
        Some(configured_mb << 20)
    } else {
        total_memory().map(|t| t / 10 * 8)
    }
}

/// Why the broker is overloaded now, if it is (with `relief`, the 90% recovery line).
fn excess(broker: &Broker, memory: Option<u64>, relief: bool) -> Option<String> {
    let scale = |limit: u64| if relief { limit / 10 * 9 } else { limit };
    let limits = &broker.guard.limits;
    if let (Some(limit), Some(rss)) = (memory, resident_bytes()) {
        if rss > scale(limit) {
            return Some(format!(
                "resident memory {} MB is past {} MB",
                rss >> 20,
                scale(limit) >> 20
            ));
        }
    }
    let max_queued = limits.overload_queued_messages as u64;
    if max_queued > 0 {
        let queued = broker.total_queued() as u64;
        if queued > scale(max_queued) {
            return Some(format!(
                "{queued} messages queued, past {}",
                scale(max_queued)
            ));
        }
    }
    None
}

/// Runs until shutdown.
pub async fn run(broker: Arc<Broker>) {
    let memory = memory_threshold(broker.guard.limits.overload_memory_mb);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let was = broker.guard.is_overloaded();
        match (was, excess(&broker, memory, was)) {
            (false, Some(why)) => {
                warn!(reason = %why, "overloaded: refusing new connections and shedding QoS 0 until it passes");
                broker.guard.set_overload_reason(Some(why));
            }
            (true, None) => {
                info!("overload passed: accepting connections again");
                broker.guard.set_overload_reason(None);
            }
            (true, Some(why)) => broker.guard.set_overload_reason(Some(why)),
            (false, None) => {}
        }
    }
}
