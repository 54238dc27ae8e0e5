//! The Rhai side: a sandboxed engine with the rule-building API (`rule`, `on`, `from`, `when`,
//! `select`, `to`, sink names), the message type rules see, and the helpers analysts expect.

use crate::config::RulesConfig;
use parking_lot::Mutex;
use rhai::{
    Array, Blob, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext,
    Position, AST,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_core::hooks::ClientInfo;
use switchyard_core::message::Message;
use switchyard_core::topic;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Event names rules may listen to with `on(...)`; the names EMQX users know.
pub const EVENT_NAMES: &[&str] = &[
    "client.connected",
    "client.disconnected",
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
    static REGEXES: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
}

/// Runs `f` with a wall-clock deadline for the Rhai code it evaluates.
pub fn with_deadline<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(Instant::now() + budget)));
    let r = f();
    DEADLINE.with(|d| d.set(None));
    r
}

#[derive(Debug, Clone)]
pub enum Trigger {
    /// Topic filters (`from`).
    Messages(Vec<String>),
    /// An event name (`on`).
    Event(&'static str),
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
        if let Trigger::Messages(filters) = &def.trigger {
            if filters.is_empty() {
                return Err(format!(
                    "{file}:{}: rule {:?} has no topic filters: add .from([...])",
                    def.line, def.name
                ));
            }
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

/// What a rule sees of a message. Cheap to clone; `json` is decoded on first use and shared
/// read-only by every rule the message runs.
#[derive(Clone)]
pub struct Msg(Arc<MsgData>);

struct MsgData {
    client: Arc<ClientInfo>,
    msg: Arc<Message>,
    json: OnceLock<Result<Dynamic, String>>,
}

impl Msg {
    pub fn new(client: Arc<ClientInfo>, msg: Arc<Message>) -> Self {
        Self(Arc::new(MsgData {
            client,
            msg,
            json: OnceLock::new(),
        }))
    }

    pub fn message(&self) -> &Message {
        &self.0.msg
    }

    pub fn client(&self) -> &ClientInfo {
        &self.0.client
    }

    fn json(&mut self) -> RhaiResult<Dynamic> {
        let parsed = self.0.json.get_or_init(|| {
            serde_json::from_slice::<serde_json::Value>(&self.0.msg.payload)
                .map_err(|e| format!("payload of {} is not JSON: {e}", self.0.msg.topic))
                .and_then(|v| rhai::serde::to_dynamic(v).map_err(|e| e.to_string()))
                .map(|d| d.into_read_only())
        });
        match parsed {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(e.clone().into()),
        }
    }

    /// The default output of a rule without `select`.
    pub fn to_output(&self) -> serde_json::Value {
        default_output(&self.0.client, &self.0.msg)
    }
}

/// What a rule without `select` sends: the message and who published it.
pub fn default_output(c: &ClientInfo, m: &Message) -> serde_json::Value {
    {
        serde_json::json!({
            "topic": &*m.topic,
            "clientid": &*c.client_id,
            "username": c.username.as_deref(),
            "peerhost": c.peer_addr.ip().to_string(),
            "qos": m.qos as u8,
            "retain": m.retain,
            "payload": String::from_utf8_lossy(&m.payload),
            "ts": millis(m.received_at),
        })
    }
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn user_properties(m: &Message) -> Map {
    let mut out = Map::new();
    for (k, v) in &m.properties.user_properties {
        out.insert(k.as_str().into(), Dynamic::from(v.to_string()));
    }
    out
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
    register_message(&mut engine);
    register_helpers(&mut engine);
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
        new_rule(&ctx, name.to_string(), Trigger::Messages(Vec::new()))
    });
    engine.register_fn(
        "on",
        |ctx: NativeCallContext, event: &str| match EVENT_NAMES.iter().find(|e| **e == event) {
            Some(e) => new_rule(&ctx, format!("on({e})"), Trigger::Event(e)),
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
        let Trigger::Messages(list) = &mut def.trigger else {
            return Err(err_at(
                "from() is for rule(...), not on(...)",
                ctx.call_position(),
            ));
        };
        for f in filters {
            if !topic::valid_topic_filter(&f) || f.starts_with("$share/") {
                return Err(err_at(
                    format!("not a topic filter: {f:?}"),
                    ctx.call_position(),
                ));
            }
            list.push(f);
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

fn register_message(engine: &mut Engine) {
    engine.register_type_with_name::<Msg>("Message");
    engine.register_get("topic", |m: &mut Msg| -> ImmutableString {
        (&*m.0.msg.topic).into()
    });
    engine.register_fn("level", |m: &mut Msg, n: i64| -> Dynamic {
        usize::try_from(n)
            .ok()
            .and_then(|n| m.0.msg.topic.split('/').nth(n))
            .map_or(Dynamic::UNIT, |s| Dynamic::from(s.to_string()))
    });
    engine.register_get("clientid", |m: &mut Msg| -> ImmutableString {
        (&*m.0.client.client_id).into()
    });
    engine.register_get("username", |m: &mut Msg| -> Dynamic {
        m.0.client
            .username
            .as_deref()
            .map_or(Dynamic::UNIT, |u| Dynamic::from(u.to_string()))
    });
    engine.register_get("peerhost", |m: &mut Msg| {
        m.0.client.peer_addr.ip().to_string()
    });
    engine.register_get("peer", |m: &mut Msg| m.0.client.peer_addr.to_string());
    engine.register_get("listener", |m: &mut Msg| -> ImmutableString {
        (&*m.0.client.listener).into()
    });
    engine.register_get("qos", |m: &mut Msg| m.0.msg.qos as i64);
    engine.register_get("retain", |m: &mut Msg| m.0.msg.retain);
    engine.register_get("payload", |m: &mut Msg| -> Blob {
        m.0.msg.payload.to_vec()
    });
    engine.register_get("size", |m: &mut Msg| m.0.msg.payload.len() as i64);
    engine.register_get("text", |m: &mut Msg| {
        String::from_utf8_lossy(&m.0.msg.payload).into_owned()
    });
    engine.register_get("json", Msg::json);
    engine.register_get("user_properties", |m: &mut Msg| user_properties(&m.0.msg));
    engine.register_get("ts", |m: &mut Msg| millis(m.0.msg.received_at));
    engine.register_fn("attribute", |m: &mut Msg, key: &str| -> Dynamic {
        m.0.client
            .attribute(key)
            .map_or(Dynamic::UNIT, |v| Dynamic::from(v.to_string()))
    });
}

fn with_regex<T>(pattern: &str, f: impl FnOnce(&regex::Regex) -> T) -> RhaiResult<T> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| -> Box<EvalAltResult> {
                    format!("bad regex {pattern:?}: {e}").into()
                })?;
            // Patterns usually are literals in rules; a bounded cache keeps a rule that builds
            // them from data from growing it forever.
            if cache.len() >= 256 {
                cache.clear();
            }
            cache.insert(pattern.to_string(), re);
        }
        Ok(f(&cache[pattern]))
    })
}

fn register_helpers(engine: &mut Engine) {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    engine.register_fn("now", || millis(SystemTime::now()));
    engine.register_fn("format_time", |ms: i64, fmt: &str| -> RhaiResult<String> {
        use std::fmt::Write as _;
        let t = chrono::DateTime::from_timestamp_millis(ms).ok_or("time out of range")?;
        let mut out = String::new();
        write!(out, "{}", t.format(fmt)).map_err(|_| format!("bad time format {fmt:?}"))?;
        Ok(out)
    });
    engine.register_fn("format_time", |ms: i64| -> RhaiResult<String> {
        let t = chrono::DateTime::from_timestamp_millis(ms).ok_or("time out of range")?;
        Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    });
    engine.register_fn("base64_encode", |b: Blob| B64.encode(b));
    engine.register_fn("base64_encode", |s: &str| B64.encode(s));
    engine.register_fn("base64_decode", |s: &str| -> RhaiResult<Blob> {
        B64.decode(s)
            .map_err(|e| format!("base64_decode: {e}").into())
    });
    engine.register_fn("hex_encode", |b: Blob| hex::encode(b));
    engine.register_fn("hex_encode", |s: &str| hex::encode(s));
    engine.register_fn("hex_decode", |s: &str| -> RhaiResult<Blob> {
        hex::decode(s).map_err(|e| format!("hex_decode: {e}").into())
    });
    engine.register_fn("blob_to_string", |b: Blob| {
        String::from_utf8_lossy(&b).into_owned()
    });
    engine.register_fn("regex_match", |text: &str, pattern: &str| {
        with_regex(pattern, |re| re.is_match(text))
    });
    engine.register_fn("regex_capture", |text: &str, pattern: &str| {
        with_regex(pattern, |re| -> Array {
            re.captures(text).map_or_else(Array::new, |caps| {
                caps.iter()
                    .map(|m| m.map_or(Dynamic::UNIT, |m| Dynamic::from(m.as_str().to_string())))
                    .collect()
            })
        })
    });
    engine.register_fn("regex_replace", |text: &str, pattern: &str, with: &str| {
        with_regex(pattern, |re| re.replace_all(text, with).into_owned())
    });
    engine.register_fn("join", |items: Array, sep: &str| {
        items
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    });
    engine.register_fn("json_encode", |v: Dynamic| -> RhaiResult<String> {
        let v: serde_json::Value = rhai::serde::from_dynamic(&v)?;
        Ok(v.to_string())
    });
    engine.register_fn("json_decode", |s: &str| -> RhaiResult<Dynamic> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| format!("json_decode: {e}"))?;
        rhai::serde::to_dynamic(v)
    });
}
