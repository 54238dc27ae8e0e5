//! The engine's face in the broker's hook chain: matches each accepted message against the
//! rule index (answering native `when`s on the routing thread) and queues the work.

use super::events::event_name;
use super::{Matched, Rule, Shared, Work};
use crate::native::MessageView;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_core::hooks::{Event, Hook, HookSet};

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

#[async_trait]
impl Hook for RulesHook {
    fn name(&self) -> &str {
        super::HOOK_NAME
    }
    fn interests(&self) -> HookSet {
        self.interests
    }
    fn on_event(&self, e: &Event) {
        // A guard, not an Arc clone: most messages match no rule and cost only the lookup.
        let set = self.shared.rules.load();
        let work = match e {
            Event::MessageAccepted { client, msg } => {
                let matched = set.matching(&msg.topic);
                if matched.is_empty() {
                    return;
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
                    return;
                }
                Work::Message {
                    generation: set.generation,
                    rules,
                    client: client.clone(),
                    msg: msg.clone(),
                }
            }
            // Messages the broker publishes itself (republished by a rule, `$SYS`) raise no
            // message events for rules: a rule forwarding its own deliveries would loop.
            Event::MessageDelivered { msg: m, .. }
            | Event::MessageAcked { msg: m, .. }
            | Event::MessageDropped { msg: m, .. }
                if m.publisher.is_none() =>
            {
                return;
            }
            other => {
                let Some(name) = event_name(other) else {
                    return;
                };
                if !set.by_event.contains_key(name) {
                    return;
                }
                Work::Event(arc_swap::Guard::into_inner(set), name, other.clone())
            }
        };
        if self.shared.queue.push(work).is_err() {
            self.shared
                .counters
                .queue_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
