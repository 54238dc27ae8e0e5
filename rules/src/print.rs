//! What a rule's `print` and `debug` may write to the broker's log: at most [`PRINT_PER_S`]
//! lines a second per rule, each cut to [`PRINT_MAX_BYTES`]; more are dropped and counted
//! (`print_dropped` in `GET /rules`), and the count goes out with the next line. A rule that
//! prints in a loop cannot flood the log, nor slow the workers with it.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use switchyard_core::log_limit::LogLimiter;

pub const PRINT_PER_S: u32 = 10;
pub const PRINT_MAX_BYTES: usize = 1024;

/// One rule's print budget.
pub struct PrintLimit(LogLimiter);

impl Default for PrintLimit {
    fn default() -> Self {
        Self(LogLimiter::new(PRINT_PER_S, PRINT_MAX_BYTES))
    }
}

impl std::fmt::Debug for PrintLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrintLimit(dropped: {})", self.0.dropped())
    }
}

impl PrintLimit {
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }
}

thread_local! {
    /// The rule this worker thread evaluates now, and its budget.
    static CURRENT: RefCell<Option<(Arc<str>, Arc<super::engine::RuleStats>)>> = const { RefCell::new(None) };
}

/// Runs `f` with prints charged to the rule `name`.
pub(crate) fn within_rule<T>(
    name: &Arc<str>,
    stats: &Arc<super::engine::RuleStats>,
    f: impl FnOnce() -> T,
) -> T {
    CURRENT.with(|c| *c.borrow_mut() = Some((name.clone(), stats.clone())));
    let r = f();
    CURRENT.with(|c| *c.borrow_mut() = None);
    r
}

/// Prints outside a rule's evaluation (top-level code of a rule file, run at load).
fn loading_limit() -> &'static LogLimiter {
    static LIMIT: OnceLock<LogLimiter> = OnceLock::new();
    LIMIT.get_or_init(|| LogLimiter::new(PRINT_PER_S, PRINT_MAX_BYTES))
}

/// Rhai's `print` and `debug` end here.
pub(crate) fn print(text: &str, debug: bool) {
    CURRENT.with(|c| {
        let current = c.borrow();
        let (rule, limiter) = match &*current {
            Some((name, stats)) => (&**name, &stats.prints.0),
            None => ("", loading_limit()),
        };
        let Some(line) = limiter.admit(text) else {
            return;
        };
        let dropped = line.dropped_before;
        if debug {
            tracing::debug!(target: "switchyard::rules::print", rule, dropped, "{}", line.line);
        } else {
            tracing::info!(target: "switchyard::rules::print", rule, dropped, "{}", line.line);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_that_prints_in_a_loop_is_held_to_its_limit() {
        let stats = Arc::new(super::super::engine::RuleStats::default());
        let name: Arc<str> = Arc::from("chatty");
        within_rule(&name, &stats, || {
            for i in 0..1000 {
                print(&format!("line {i}"), false);
            }
        });
        assert_eq!(stats.prints.dropped(), 1000 - u64::from(PRINT_PER_S));
        // Another rule has a budget of its own.
        let quiet = Arc::new(super::super::engine::RuleStats::default());
        within_rule(&name, &quiet, || print("hello", false));
        assert_eq!(quiet.prints.dropped(), 0);
    }
}
