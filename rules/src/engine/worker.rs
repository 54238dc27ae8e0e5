//! The rule worker threads: evaluate `when` and `select` under the per-evaluation limits and
//! hand the outputs to the rule's sinks.

use super::events::event_map;
use super::{Matched, Rule, Shared, Work};
use crate::native::MessageView;
use crate::script::{self, Msg};
use crate::sink::Record;
use rhai::{Dynamic, Engine, EvalAltResult};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

pub(super) fn worker(shared: &Shared, index: usize) {
    let timeout = Duration::from_millis(shared.config.timeout_ms.max(1));
    let mut current = arc_swap::Cache::new(&shared.rules);
    shared.queue.serve(index, |work| match work {
        Work::Message {
            generation,
            rules,
            client,
            msg,
        } => {
            let set = current.load();
            let rules = if set.generation == generation {
                rules
            } else {
                // Reloaded since routing matched it: the numbers belong to the old set.
                set.matching(&msg.topic)
                    .into_iter()
                    .map(|rule| Matched {
                        rule,
                        when_passed: false,
                    })
                    .collect()
            };
            let mut subject = Subject::Message(MessageView::new(&client, &msg), None);
            for m in rules {
                if let Some(rule) = set.rules.get(m.rule as usize) {
                    run_rule(shared, rule, &mut subject, m.when_passed, timeout);
                }
            }
        }
        Work::Event(set, name, event) => {
            let Some(rules) = set.by_event.get(name) else {
                return;
            };
            let map = event_map(name, &event);
            let mut subject = Subject::Event(Dynamic::from_map(map));
            for i in rules {
                if let Some(rule) = set.rules.get(*i as usize) {
                    run_rule(shared, rule, &mut subject, false, timeout);
                }
            }
        }
    });
}

/// What a rule runs on. A message becomes a Rhai value only when a rule needs Rhai: a `when`
/// evaluated natively and the default output read it directly.
pub(super) enum Subject<'a> {
    Message(MessageView<'a>, Option<Dynamic>),
    Event(Dynamic),
}

impl Subject<'_> {
    fn rhai_arg(&mut self) -> Dynamic {
        match self {
            Subject::Message(view, arg) => arg
                .get_or_insert_with(|| {
                    Dynamic::from(Msg::new(view.client.clone(), view.msg.clone()))
                })
                .clone(),
            Subject::Event(map) => map.clone(),
        }
    }

    fn native_when(&mut self, rule: &Rule) -> Option<bool> {
        match (self, &rule.when_native) {
            (Subject::Message(view, _), Some(p)) => p.eval(view),
            _ => None,
        }
    }

    pub(super) fn default_output(&self) -> serde_json::Value {
        match self {
            Subject::Message(view, _) => script::default_output(view.client, view.msg),
            Subject::Event(map) => {
                rhai::serde::from_dynamic(map).unwrap_or(serde_json::Value::Null)
            }
        }
    }
}

fn run_rule(
    shared: &Shared,
    rule: &Rule,
    subject: &mut Subject<'_>,
    when_passed: bool,
    timeout: Duration,
) {
    let st = &rule.stats;
    if !when_passed {
        st.matched.fetch_add(1, Ordering::Relaxed);
    }
    let evaluated = crate::print::within_rule(&rule.name, st, || {
        evaluate(&shared.engine, rule, subject, when_passed, timeout)
    });
    let outputs = match evaluated {
        Ok(Some(outputs)) => outputs,
        Ok(None) => vec![subject.default_output()],
        Err(Skip::NotPassed) => return,
        Err(Skip::Failed(e)) => {
            st.failed.fetch_add(1, Ordering::Relaxed);
            let now = shared.started.elapsed().as_secs() + 1;
            if st.last_log.swap(now, Ordering::Relaxed) != now {
                let error = script::describe_error(&rule.file, &e, rule.def.line);
                warn!(rule = %rule.def.name, error = %error, "rule stopped for this message");
                *st.last_error.lock() = Some((error, switchyard_core::clock::now_ms()));
            }
            return;
        }
    };
    st.passed.fetch_add(1, Ordering::Relaxed);
    for out in outputs {
        st.outputs.fetch_add(1, Ordering::Relaxed);
        let record: Record = Arc::new(out);
        for sink in &rule.sinks {
            let _ = sink.offer(record.clone());
        }
    }
}

pub(super) enum Skip {
    NotPassed,
    Failed(Box<EvalAltResult>),
}

/// `when`, then `select`; `Ok(None)` means no `select` (the default output). Rhai code runs
/// under the per-evaluation deadline.
pub(super) fn evaluate(
    engine: &Engine,
    rule: &Rule,
    subject: &mut Subject<'_>,
    when_passed: bool,
    timeout: Duration,
) -> Result<Option<Vec<serde_json::Value>>, Skip> {
    if let Some(when) = rule.def.when.as_ref().filter(|_| !when_passed) {
        let passed = match subject.native_when(rule) {
            Some(passed) => passed,
            None => {
                let arg = subject.rhai_arg();
                let r: Dynamic =
                    script::with_deadline(timeout, || when.call(engine, &rule.ast, (arg,)))
                        .map_err(Skip::Failed)?;
                r.as_bool().map_err(|t| {
                    Skip::Failed(format!("when() must return true or false, not {t}").into())
                })?
            }
        };
        if !passed {
            return Err(Skip::NotPassed);
        }
    }
    let Some(select) = &rule.def.select else {
        return Ok(None);
    };
    let arg = subject.rhai_arg();
    let out: Dynamic = script::with_deadline(timeout, || select.call(engine, &rule.ast, (arg,)))
        .map_err(Skip::Failed)?;
    let to_json = |d: &Dynamic| -> Result<serde_json::Value, Skip> {
        rhai::serde::from_dynamic(d).map_err(Skip::Failed)
    };
    if out.is_unit() {
        // select() returning nothing emits nothing.
        return Ok(Some(Vec::new()));
    }
    if out.is_array() {
        let items = out.into_array().unwrap_or_default();
        return items
            .iter()
            .map(to_json)
            .collect::<Result<_, _>>()
            .map(Some);
    }
    Ok(Some(vec![to_json(&out)?]))
}
