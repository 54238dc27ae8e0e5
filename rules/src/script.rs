//! The Rhai side: a sandboxed engine with the rule-building API (`rule`, `on`, `from`, `when`,
//! `select`, `to`, sink names) and its limits. The message type is in `message`, the helpers
//! in `helpers`.

use crate::config::RulesConfig;
use parking_lot::Mutex;
use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext, Position, AST};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::topic;

pub use crate::message::{default_output, message_fields, millis, node_name, Msg};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Event names rules may listen to with `on(...)` or `from("$events/...")`; the names EMQX
/// users know.
pub const EVENT_NAMES: &[&str] = &[
    "client.connected",
    "client.connack",
    "client.disconnected",
    "client.check_authn_complete",
    "client.check_authz_complete",
    "session.subscribed",
    "session.unsubscribed",
    "message.delivered",
    "message.acked",
    "message.dropped",
];

thread_local! {
    /// When the evaluation running on this thread must stop (checked by the progress callback).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set while a rule file's top level runs: where `rule(...)` and `on(...)` put what they build.
    static LOADING: RefCell<Option<Loading>> = const { RefCell::new(None) };
}

/// Runs `f` with a wall-clock deadline for the Rhai code it evaluates.
pub fn with_deadline<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(Instant::now() + budget)));
    let r = f();
    DEADLINE.with(|d| d.set(None));
    r
}

/// What a rule runs on: messages on its topic filters and the events it names.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// Topic filters (`from`).
    pub filters: Vec<String>,
    /// Event names (`on`, or `from("$events/...")`).
    pub events: Vec<&'static str>,
}

/// `client.connected`, `client_connected`, `$events/client_connected`: the known event name.
fn event_named(name: &str) -> Option<&'static str> {
    let name = name.strip_prefix("$events/").unwrap_or(name);
    EVENT_NAMES
        .iter()
        .find(|e| **e == name || e.replace('.', "_") == name)
        .copied()
}

/// A rule as its file defined it.
#[derive(Debug, Clone)]
pub struct RuleDef {
    pub name: String,
    pub line: usize,
    pub trigger: Trigger,
    pub when: Option<FnPtr>,
    pub select: Option<FnPtr>,
    pub sinks: Vec<String>,
}

#[derive(Clone)]
struct RuleBuilder(Arc<Mutex<RuleDef>>);

#[derive(Clone)]
struct SinkRef(String);

struct Loading {
    /// Configured sinks: name → kind.
    sinks: Arc<HashMap<String, &'static str>>,
    rules: Vec<Arc<Mutex<RuleDef>>>,
}

fn err_at(msg: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(Dynamic::from(msg.into()), pos))
}

/// A loading or evaluation error as `file:line:col: message`.
pub fn describe_error(file: &str, err: &EvalAltResult, fallback_line: usize) -> String {
    let inner = err.unwrap_inner();
    let pos = inner.position();
    let msg = match inner {
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        EvalAltResult::ErrorTerminated(..) => "time limit exceeded".to_string(),
        other => other.to_string(),
    };
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {msg}"),
        (Some(l), None) => format!("{file}:{l}: {msg}"),
        _ => format!("{file}:{fallback_line}: {msg}"),
    }
}

/// Compiles and runs one rule file's top level, returning its AST (which closures need) and
/// the rules it defined.
pub fn load_file(
    engine: &Engine,
    file: &str,
    text: &str,
    sinks: Arc<HashMap<String, &'static str>>,
    budget: Duration,
) -> Result<(Arc<AST>, Vec<RuleDef>), String> {
    let ast = engine.compile(text).map_err(|e| {
        let pos = e.1;
        format!(
            "{file}:{}:{}: {}",
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0),
            e.0
        )
    })?;
    LOADING.with(|l| {
        *l.borrow_mut() = Some(Loading {
            sinks,
            rules: Vec::new(),
        })
    });
    let ran = with_deadline(budget, || engine.run_ast(&ast));
    let loading = LOADING.with(|l| l.borrow_mut().take());
    ran.map_err(|e| describe_error(file, &e, 0))?;
    let mut rules = Vec::new();
    for def in loading.map(|l| l.rules).unwrap_or_default() {
        let def = def.lock().clone();
        if def.trigger.filters.is_empty() && def.trigger.events.is_empty() {
            return Err(format!(
                "{file}:{}: rule {:?} has no topic filters or events: add .from([...])",
                def.line, def.name
            ));
        }
        if def.sinks.is_empty() {
            return Err(format!(
                "{file}:{}: rule {:?} sends nowhere: add .to(sink(\"name\"))",
                def.line, def.name
            ));
        }
        rules.push(def);
    }
    Ok((Arc::new(ast), rules))
}

/// The sandboxed engine every rule file and evaluation uses.
pub fn build_engine(cfg: &RulesConfig) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(cfg.max_operations)
        .set_max_call_levels(cfg.max_call_levels)
        .set_max_expr_depths(cfg.max_expr_depth, cfg.max_expr_depth)
        .set_max_string_size(cfg.max_string_size)
        .set_max_array_size(cfg.max_array_size)
        .set_max_map_size(cfg.max_map_size)
        .set_fail_on_invalid_map_property(true)
        .set_strict_variables(true)
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    // No code from strings or files: `eval` and `import` are gone.
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.on_progress(|ops| {
        // Reading the clock on every operation costs 25–40%; every 256 is plenty.
        if ops % 256 == 0 {
            if let Some(deadline) = DEADLINE.with(|d| d.get()) {
                if Instant::now() > deadline {
                    return Some(Dynamic::from("time limit exceeded"));
                }
            }
        }
        None
    });
    engine.on_print(|s| crate::print::print(s, false));
    engine.on_debug(|s, _src, _pos| crate::print::print(s, true));
    register_builder(&mut engine);
    crate::message::register_message(&mut engine);
    crate::helpers::register_helpers(&mut engine, cfg.max_string_size);
    engine
}

fn loading<T>(pos: Position, f: impl FnOnce(&mut Loading) -> RhaiResult<T>) -> RhaiResult<T> {
    LOADING.with(|l| match l.borrow_mut().as_mut() {
        Some(loading) => f(loading),
        None => Err(err_at(
            "rules can only be defined at the top level of a rule file",
            pos,
        )),
    })
}

fn new_rule(ctx: &NativeCallContext, name: String, trigger: Trigger) -> RhaiResult<RuleBuilder> {
    let pos = ctx.call_position();
    loading(pos, |l| {
        let def = Arc::new(Mutex::new(RuleDef {
            name,
            line: pos.line().unwrap_or(0),
            trigger,
            when: None,
            select: None,
            sinks: Vec::new(),
        }));
        l.rules.push(def.clone());
        Ok(RuleBuilder(def))
    })
}

fn sink_of_kind(ctx: &NativeCallContext, name: &str, kinds: &[&str]) -> RhaiResult<SinkRef> {
    let pos = ctx.call_position();
    loading(pos, |l| match l.sinks.get(name) {
        None => {
            let mut known: Vec<&str> = l.sinks.keys().map(String::as_str).collect();
            known.sort_unstable();
            Err(err_at(
                format!("no sink named {name:?} in the configuration (configured: {known:?})"),
                pos,
            ))
        }
        Some(kind) if !kinds.is_empty() && !kinds.contains(kind) => Err(err_at(
            format!("sink {name:?} is a {kind} sink, not {}", kinds.join(" or ")),
            pos,
        )),
        Some(_) => Ok(SinkRef(name.to_string())),
    })
}

fn register_builder(engine: &mut Engine) {
    engine.register_type_with_name::<RuleBuilder>("Rule");
    engine.register_type_with_name::<SinkRef>("Sink");
    engine.register_fn("rule", |ctx: NativeCallContext, name: &str| {
        new_rule(&ctx, name.to_string(), Trigger::default())
    });
    engine.register_fn(
        "on",
        |ctx: NativeCallContext, event: &str| match event_named(event) {
            Some(e) => new_rule(
                &ctx,
                format!("on({e})"),
                Trigger {
                    filters: Vec::new(),
                    events: vec![e],
                },
            ),
            None => Err(err_at(
                format!("unknown event {event:?}; known: {}", EVENT_NAMES.join(", ")),
                ctx.call_position(),
            )),
        },
    );
    fn add_filters(
        ctx: &NativeCallContext,
        b: &RuleBuilder,
        filters: Vec<String>,
    ) -> RhaiResult<RuleBuilder> {
        let mut def = b.0.lock();
        for f in filters {
            // `$events/NAME` is an event source, as in EMQX's FROM.
            if f.starts_with("$events/") {
                let Some(e) = event_named(&f) else {
                    return Err(err_at(
                        format!("unknown event {f:?}; known: {}", EVENT_NAMES.join(", ")),
                        ctx.call_position(),
                    ));
                };
                if !def.trigger.events.contains(&e) {
                    def.trigger.events.push(e);
                }
                continue;
            }
            if !topic::valid_topic_filter(&f) || f.starts_with("$share/") {
                return Err(err_at(
                    format!("not a topic filter: {f:?}"),
                    ctx.call_position(),
                ));
            }
            def.trigger.filters.push(f);
        }
        Ok(b.clone())
    }
    engine.register_fn(
        "from",
        |ctx: NativeCallContext, b: &mut RuleBuilder, filters: Array| {
            let mut list = Vec::new();
            for f in filters {
                match f.into_immutable_string() {
                    Ok(s) => list.push(s.to_string()),
                    Err(t) => {
                        return Err(err_at(
                            format!("from() takes topic filter strings, got {t}"),
                            ctx.call_position(),
                        ))
                    }
                }
            }
            add_filters(&ctx, b, list)
        },
    );
    engine.register_fn(
        "from",
        |ctx: NativeCallContext, b: &mut RuleBuilder, filter: &str| {
            add_filters(&ctx, b, vec![filter.to_string()])
        },
    );
    engine.register_fn("when", |b: &mut RuleBuilder, f: FnPtr| {
        b.0.lock().when = Some(f);
        b.clone()
    });
    engine.register_fn("select", |b: &mut RuleBuilder, f: FnPtr| {
        b.0.lock().select = Some(f);
        b.clone()
    });
    engine.register_fn("to", |b: &mut RuleBuilder, s: SinkRef| {
        b.0.lock().sinks.push(s.0);
        b.clone()
    });
    engine.register_fn(
        "to",
        |ctx: NativeCallContext, b: &mut RuleBuilder, name: &str| -> RhaiResult<RuleBuilder> {
            let s = sink_of_kind(&ctx, name, &[])?;
            b.0.lock().sinks.push(s.0);
            Ok(b.clone())
        },
    );
    engine.register_fn("sink", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &[])
    });
    engine.register_fn("kafka", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["kafka"])
    });
    engine.register_fn("webhook", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["webhook"])
    });
    engine.register_fn("database", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["sqlite", "postgres"])
    });
    engine.register_fn("sqlite", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["sqlite"])
    });
    engine.register_fn("postgres", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["postgres"])
    });
    engine.register_fn("mqtt", |ctx: NativeCallContext, name: &str| {
        sink_of_kind(&ctx, name, &["mqtt"])
    });
}
