//! The engine's face in the broker's hook chain: matches each accepted message against the
//! rule index (answering native `when`s on the routing thread) and queues the work.

use super::events::{event_client, event_name};
use super::{Matched, Rule, Shared, Work};
use crate::config::Overflow;
use crate::native::MessageView;
use crate::queue::Refused;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::hooks::{Event, Hook, HookSet, Wait};

/// Payloads up to this size may be parsed on the routing thread for a native `when`: bounded
/// work of the order of the topic lookup. Larger ones are left to the workers.
const INLINE_JSON_MAX: usize = 1024;

impl Rule {
    /// The rule's `when` answered on the routing thread, when that is native and cheap.
    fn prefilter(&self, view: &MessageView<'_>) -> Option<bool> {
        let p = self.when_native.as_ref()?;
        if p.reads_json() && view.msg.payload.len() > INLINE_JSON_MAX {
            return None;
        }
        p.eval(view)
    }
}

/// The engine's face in the broker's hook chain. Re-registered on every reload so the chain
/// only calls it for what the current rules listen to.
pub(super) struct RulesHook {
    pub(super) shared: Arc<Shared>,
    pub(super) interests: HookSet,
}

/// The queue key of a client's work: its id, so one client's messages and events keep their
/// order through one worker.
fn key_of(client_id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x5157).build_hasher();
    h.write(client_id.as_bytes());
    h.finish()
}

impl RulesHook {
    /// The work an event means for the current rules, and its queue key; `None` when no rule
    /// listens.
    fn work(&self, e: &Event) -> Option<(u64, Work)> {
        // A guard, not an Arc clone: most messages match no rule and cost only the lookup.
        let set = self.shared.rules.load();
        match e {
            Event::MessageAccepted { client, msg } => {
                let matched = set.matching(&msg.topic);
                if matched.is_empty() {
                    return None;
                }
                // Rules whose `when` rejects the message natively never reach the queue.
                let view = MessageView::new(client, msg);
                let mut rules = smallvec::SmallVec::new();
                for i in matched {
                    let Some(rule) = set.rules.get(i as usize) else {
                        continue;
                    };
                    match rule.prefilter(&view) {
                        Some(passed) => {
                            rule.stats.matched.fetch_add(1, Ordering::Relaxed);
                            if passed {
                                rules.push(Matched {
                                    rule: i,
                                    when_passed: true,
                                });
                            }
                        }
                        None => rules.push(Matched {
                            rule: i,
                            when_passed: false,
                        }),
                    }
                }
                if rules.is_empty() {
                    return None;
                }
                let work = Work::Message {
                    generation: set.generation,
                    rules,
                    client: client.clone(),
                    msg: msg.clone(),
                };
                Some((key_of(&client.client_id), work))
            }
            // Messages the broker publishes itself (republished by a rule, `$SYS`) raise no
            // message events for rules: a rule forwarding its own deliveries would loop.
            Event::MessageDelivered { msg: m, .. }
            | Event::MessageAcked { msg: m, .. }
            | Event::MessageDropped { msg: m, .. }
                if m.publisher.is_none() =>
            {
                None
            }
            other => {
                let name = event_name(other)?;
                if !set.by_event.contains_key(name) {
                    return None;
                }
                let key = event_client(other).map_or(0, key_of);
                Some((
                    key,
                    Work::Event(arc_swap::Guard::into_inner(set), name, other.clone()),
                ))
            }
        }
    }

    fn dropped(&self) {
        self.shared
            .counters
            .queue_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Hook for RulesHook {
    fn name(&self) -> &str {
        super::HOOK_NAME
    }
    fn interests(&self) -> HookSet {
        self.interests
    }
    fn on_event(&self, e: &Event) {
        let Some((key, work)) = self.work(e) else {
            return;
        };
        if self.shared.queue.push(key, work).is_err() {
            self.dropped();
        }
    }
    fn on_accepted(&self, e: &Event) -> Option<Wait> {
        let (key, work) = self.work(e)?;
        let work = match self.shared.queue.push(key, work) {
            Ok(()) => return None,
            Err(Refused::Full(work)) if self.shared.config.overflow == Overflow::Backpressure => {
                work
            }
            Err(_) => {
                self.dropped();
                return None;
            }
        };
        // Held like a publisher to a slow subscriber: until its worker makes room.
        self.shared
            .counters
            .backpressure_waits
            .fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let max_wait = Duration::from_millis(shared.config.backpressure_timeout_ms);
        Some(Box::pin(async move {
            if shared
                .queue
                .push_waiting(key, work, max_wait)
                .await
                .is_err()
            {
                shared
                    .counters
                    .queue_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }))
    }
}
