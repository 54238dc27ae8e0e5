//! The running rule engine: the hook that feeds it, the worker threads that evaluate rules, the
//! rule set swapped atomically on reload, and the file watcher.

use crate::config::{RulesConfig, SinkConfig};
use crate::native::{MessageView, Predicate};
use crate::queue::WorkQueue;
use crate::script::{self, Msg, RuleDef, Trigger};
use crate::sink::{Record, Sink, SinkError};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use rhai::{Dynamic, Engine, EvalAltResult, Map, AST};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::broker::Broker;
use switchyard_core::hooks::{ClientInfo, Event, Hook, HookSet};
use switchyard_core::message::Message;
use switchyard_core::metrics::MetricsSource;
use switchyard_core::topic::{TopicTree, TreeEntry};
use tracing::{error, info, warn};

/// Where the engine sits in the hook chain; it only observes, so late.
const HOOK_PRIORITY: i32 = 10_000;
const HOOK_NAME: &str = "rules";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("rules dir {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("cannot start rule workers: {0}")]
    Workers(std::io::Error),
}

#[derive(Debug, Default)]
pub struct RuleStats {
    /// Messages or events that reached the rule (topic or event matched).
    pub matched: AtomicU64,
    /// Of those, how many passed `when`.
    pub passed: AtomicU64,
    /// Evaluations stopped by an error or a limit.
    pub failed: AtomicU64,
    /// Outputs handed to sinks (one per `select` array element).
    pub outputs: AtomicU64,
    /// Second (since start) of the last logged error: one log line per rule per second.
    last_log: AtomicU64,
}

struct Rule {
    def: RuleDef,
    file: Arc<str>,
    ast: Arc<AST>,
    /// `when` compiled to Rust when its shape allows (see `native`); Rhai runs otherwise.
    when_native: Option<Predicate>,
    sinks: Vec<Arc<Sink>>,
    stats: Arc<RuleStats>,
}

struct IndexEntry {
    key: Box<str>,
    rule: u32,
}

impl TreeEntry for IndexEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

/// Every loaded rule, with `from` filters in a topic tree so a message only runs the rules
/// that can match it.
#[derive(Default)]
struct RuleSet {
    /// Tells a worker whether rule numbers matched on the routing thread are still valid.
    generation: u64,
    rules: Vec<Rule>,
    index: TopicTree<IndexEntry>,
    by_event: HashMap<&'static str, Vec<u32>>,
    interests: HookSet,
}

impl RuleSet {
    fn matching(&self, topic: &str) -> smallvec::SmallVec<[u32; 4]> {
        let mut out = smallvec::SmallVec::new();
        self.index
            .for_each_match(topic, |_| true, |e, _| out.push(e.rule));
        if out.len() > 1 {
            // A rule with two overlapping filters runs once.
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// Payloads up to this size may be parsed on the routing thread for a native `when`: bounded
/// work of the order of the topic lookup. Larger ones are left to the workers.
const INLINE_JSON_MAX: usize = 1024;

/// A rule a message matched. `when_passed`: the routing thread already evaluated its `when`
/// natively (and counted the match), and it passed.
#[derive(Debug, Clone, Copy)]
struct Matched {
    rule: u32,
    when_passed: bool,
}

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

enum Work {
    /// A message and the rules of rule set `generation` it matched. No rule set reference:
    /// cloning that shared `Arc` per message would bounce its counter between every core.
    Message {
        generation: u64,
        rules: smallvec::SmallVec<[Matched; 4]>,
        client: Arc<ClientInfo>,
        msg: Arc<Message>,
    },
    Event(Arc<RuleSet>, &'static str, Event),
}

#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Messages and events skipped because the worker queue was full.
    pub queue_dropped: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

struct Shared {
    config: RulesConfig,
    engine: Engine,
    rules: ArcSwap<RuleSet>,
    sinks: BTreeMap<String, Arc<Sink>>,
    sink_kinds: Arc<HashMap<String, &'static str>>,
    queue: WorkQueue<Work>,
    /// Numbers rule sets so workers can tell a reload happened.
    generations: AtomicU64,
    counters: EngineCounters,
    stats: Mutex<HashMap<String, Arc<RuleStats>>>,
    broker: Arc<Broker>,
    started: Instant,
    /// Errors of the last failed reload, `file:line:col: message`.
    last_errors: Mutex<Vec<String>>,
    /// The watcher and SIGHUP may ask at once: an older load must not replace a newer one.
    reloading: Mutex<()>,
}

pub struct RuleEngine {
    shared: Arc<Shared>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// The engine's face in the broker's hook chain. Re-registered on every reload so the chain
/// only calls it for what the current rules listen to.
struct RulesHook {
    shared: Arc<Shared>,
    interests: HookSet,
}

#[async_trait]
impl Hook for RulesHook {
    fn name(&self) -> &str {
        HOOK_NAME
    }
    fn interests(&self) -> HookSet {
        self.interests
    }
    fn on_event(&self, e: &Event) {
        // A guard, not an Arc clone: most messages match no rule and cost only the lookup.
        let set = self.shared.rules.load();
        let work = match e {
            Event::MessageAccepted(client, msg) => {
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
            Event::MessageDelivered(_, m)
            | Event::MessageAcked(_, m)
            | Event::MessageDropped(_, m, _)
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

fn event_name(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::ClientConnected(..) => "client.connected",
        Event::ClientDisconnected(..) => "client.disconnected",
        Event::SessionSubscribed(..) => "session.subscribed",
        Event::SessionUnsubscribed(..) => "session.unsubscribed",
        Event::MessageDelivered(..) => "message.delivered",
        Event::MessageAcked(..) => "message.acked",
        Event::MessageDropped(..) => "message.dropped",
        Event::MessageAccepted(..) => return None,
    })
}

/// An event as rules see it: a map with the fields EMQX users know.
fn event_map(name: &str, e: &Event) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    put("event", name.to_string().into());
    put("ts", script::millis(std::time::SystemTime::now()).into());
    let client = match e {
        Event::ClientConnected(c)
        | Event::ClientDisconnected(c, _)
        | Event::SessionSubscribed(c, _, _)
        | Event::SessionUnsubscribed(c, _) => Some(c),
        _ => None,
    };
    if let Some(c) = client {
        put("clientid", c.client_id.to_string().into());
        put(
            "username",
            c.username
                .as_deref()
                .map_or(Dynamic::UNIT, |u| u.to_string().into()),
        );
        put("peerhost", c.peer_addr.ip().to_string().into());
        put("listener", c.listener.to_string().into());
        put("proto_ver", (c.protocol as u8 as i64).into());
    }
    match e {
        Event::ClientDisconnected(_, why) => {
            // A DISCONNECT from the client is what EMQX calls "normal".
            let reason = if why == "client disconnected" {
                "normal"
            } else {
                why.as_str()
            };
            put("reason", reason.to_string().into());
        }
        Event::SessionSubscribed(_, filter, qos) => {
            put("topic", filter.clone().into());
            put("qos", (*qos as i64).into());
        }
        Event::SessionUnsubscribed(_, filter) => put("topic", filter.clone().into()),
        Event::MessageDelivered(to, msg) | Event::MessageAcked(to, msg) => {
            put("clientid", to.to_string().into());
            message_fields(&mut put, msg);
        }
        Event::MessageDropped(to, msg, why) => {
            put(
                "clientid",
                to.as_deref()
                    .map_or(Dynamic::UNIT, |c| c.to_string().into()),
            );
            put("reason", why.to_string().into());
            message_fields(&mut put, msg);
        }
        _ => {}
    }
    m
}

fn message_fields(put: &mut impl FnMut(&str, Dynamic), msg: &switchyard_core::message::Message) {
    put("topic", msg.topic.to_string().into());
    put("qos", (msg.qos as i64).into());
    put("retain", msg.retain.into());
    put(
        "payload",
        String::from_utf8_lossy(&msg.payload).into_owned().into(),
    );
    put(
        "from_clientid",
        msg.publisher
            .as_deref()
            .map_or(Dynamic::UNIT, |p| p.to_string().into()),
    );
    put("publish_ts", script::millis(msg.received_at).into());
}

impl RuleEngine {
    /// Starts the sinks, the workers and loads the rule files. A rule file with errors is
    /// logged and skipped (no rules run until it is fixed); a sink that cannot start is a
    /// configuration error.
    pub async fn start(
        config: RulesConfig,
        sinks: BTreeMap<String, SinkConfig>,
        broker: Arc<Broker>,
    ) -> Result<Arc<RuleEngine>, RulesError> {
        let mut running = BTreeMap::new();
        for (name, cfg) in &sinks {
            running.insert(name.clone(), Sink::start(name, cfg, &broker).await?);
        }
        let sink_kinds = Arc::new(
            running
                .iter()
                .map(|(n, s)| (n.clone(), s.kind))
                .collect::<HashMap<_, _>>(),
        );
        if let Some(dir) = &config.dir {
            std::fs::create_dir_all(dir).map_err(|e| RulesError::Dir(dir.clone(), e))?;
        }
        let shared = Arc::new(Shared {
            engine: script::build_engine(&config),
            rules: ArcSwap::from_pointee(RuleSet::default()),
            sinks: running,
            sink_kinds,
            queue: WorkQueue::new(config.queue_size, config.workers),
            generations: AtomicU64::new(0),
            counters: EngineCounters::default(),
            stats: Mutex::new(HashMap::new()),
            broker: broker.clone(),
            started: Instant::now(),
            last_errors: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
            config,
        });
        let mut workers = Vec::new();
        for i in 0..shared.config.workers.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rules-{i}"))
                .spawn(move || worker(&shared, i))
                .map_err(RulesError::Workers)?;
            workers.push(handle);
        }
        let engine = Arc::new(RuleEngine {
            shared,
            workers: Mutex::new(workers),
            watcher: Mutex::new(None),
        });
        let _ = engine.reload();
        broker.set_metrics_source(HOOK_NAME, Arc::new(Metrics(engine.shared.clone())));
        Ok(engine)
    }

    /// Loads every rule file again and swaps the new set in, or keeps the running set and
    /// returns the errors (`file:line:col: message`).
    pub fn reload(&self) -> Result<usize, Vec<String>> {
        let s = &self.shared;
        let Some(dir) = s.config.dir.clone() else {
            return Ok(0);
        };
        let _one_at_a_time = s.reloading.lock();
        match self.load_dir(&dir) {
            Ok(set) => {
                let n = set.rules.len();
                let interests = set.interests;
                s.rules.store(Arc::new(set));
                s.broker.hooks.replace(
                    HOOK_PRIORITY,
                    Arc::new(RulesHook {
                        shared: s.clone(),
                        interests,
                    }),
                );
                s.counters.reloads.fetch_add(1, Ordering::Relaxed);
                s.last_errors.lock().clear();
                info!(rules = n, dir = %dir.display(), "rules loaded");
                Ok(n)
            }
            Err(errors) => {
                s.counters.reload_errors.fetch_add(1, Ordering::Relaxed);
                for e in &errors {
                    error!(error = %e, "rule file rejected; the running rules stay");
                }
                *s.last_errors.lock() = errors.clone();
                Err(errors)
            }
        }
    }

    fn load_dir(&self, dir: &Path) -> Result<RuleSet, Vec<String>> {
        let s = &self.shared;
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
                .collect(),
            Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
        };
        files.sort();
        let mut errors = Vec::new();
        let mut set = RuleSet {
            generation: s.generations.fetch_add(1, Ordering::Relaxed) + 1,
            ..RuleSet::default()
        };
        let mut names: HashMap<String, String> = HashMap::new();
        let budget = Duration::from_millis(s.config.timeout_ms.max(1) * 20);
        for path in files {
            let file: Arc<str> = path.display().to_string().into();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{file}: {e}"));
                    continue;
                }
            };
            let (ast, defs) =
                match script::load_file(&s.engine, &file, &text, s.sink_kinds.clone(), budget) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
            for def in defs {
                let key = match &def.trigger {
                    Trigger::Messages(_) => def.name.clone(),
                    Trigger::Event(_) => format!("{}@{file}:{}", def.name, def.line),
                };
                if let Some(other) = names.insert(key.clone(), format!("{file}:{}", def.line)) {
                    errors.push(format!(
                        "{file}:{}: rule {:?} is already defined at {other}",
                        def.line, def.name
                    ));
                    continue;
                }
                let sinks = def
                    .sinks
                    .iter()
                    .filter_map(|n| s.sinks.get(n).cloned())
                    .collect();
                let stats = s.stats.lock().entry(key).or_default().clone();
                let idx = set.rules.len() as u32;
                match &def.trigger {
                    Trigger::Messages(filters) => {
                        set.interests = set.interests | HookSet::MESSAGE_ACCEPTED;
                        for f in filters {
                            set.index.insert(
                                f,
                                None,
                                IndexEntry {
                                    key: format!("{idx}").into(),
                                    rule: idx,
                                },
                            );
                        }
                    }
                    Trigger::Event(name) => {
                        set.interests = set.interests
                            | if name.starts_with("message.") {
                                HookSet::MESSAGE_EVENTS
                            } else {
                                HookSet::CLIENT_EVENTS
                            };
                        set.by_event.entry(name).or_default().push(idx);
                    }
                }
                let when_native = def.when.as_ref().and_then(|w| Predicate::compile(&ast, w));
                set.rules.push(Rule {
                    def,
                    file: file.clone(),
                    ast: ast.clone(),
                    when_native,
                    sinks,
                    stats,
                });
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Watches the rules folder; changes are debounced, then the whole set reloads.
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let Some(dir) = self.shared.config.dir.clone() else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            // Reading the files on reload produces access events: only changes count.
            let relevant = match ev.kind {
                EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write,
                )) => true,
                EventKind::Access(_) | EventKind::Other => false,
                _ => true,
            };
            if relevant
                && ev
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|x| x == "rhai"))
            {
                let _ = tx.send(());
            }
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        *self.watcher.lock() = Some(watcher);
        let engine = Arc::downgrade(self);
        let debounce = Duration::from_millis(self.shared.config.debounce_ms);
        std::thread::Builder::new()
            .name("rules-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Collect the burst an editor's save makes, then reload once.
                    while rx.recv_timeout(debounce).is_ok() {}
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    let _ = engine.reload();
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Names of the loaded rules, in load order.
    pub fn rule_names(&self) -> Vec<String> {
        self.shared
            .rules
            .load()
            .rules
            .iter()
            .map(|r| r.def.name.clone())
            .collect()
    }

    pub fn rule_stats(&self, name: &str) -> Option<Arc<RuleStats>> {
        self.shared.stats.lock().get(name).cloned()
    }

    pub fn sink(&self, name: &str) -> Option<Arc<Sink>> {
        self.shared.sinks.get(name).cloned()
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.shared.counters
    }

    pub fn last_errors(&self) -> Vec<String> {
        self.shared.last_errors.lock().clone()
    }

    /// Stops taking messages, lets the workers finish the queue, then gives every sink
    /// `flush_timeout_ms` to deliver what it holds. Returns records left undelivered.
    pub async fn shutdown(&self) -> u64 {
        let s = &self.shared;
        s.broker.hooks.unregister(HOOK_NAME);
        *self.watcher.lock() = None;
        let workers: Vec<_> = std::mem::take(&mut *self.workers.lock());
        s.queue.close();
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        let grace = Duration::from_millis(s.config.flush_timeout_ms);
        let closing = s.sinks.values().map(|sink| async move {
            let left = sink.close(grace).await;
            (sink.name.clone(), left)
        });
        let mut total = 0;
        for (name, left) in futures_util::future::join_all(closing).await {
            if left > 0 {
                warn!(sink = %name, records = left, "sink stopped with records undelivered");
            }
            total += left;
        }
        total
    }
}

fn worker(shared: &Shared, index: usize) {
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
enum Subject<'a> {
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

    fn default_output(&self) -> serde_json::Value {
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
    let outputs = match evaluate(&shared.engine, rule, subject, when_passed, timeout) {
        Ok(Some(outputs)) => outputs,
        Ok(None) => vec![subject.default_output()],
        Err(Skip::NotPassed) => return,
        Err(Skip::Failed(e)) => {
            st.failed.fetch_add(1, Ordering::Relaxed);
            let now = shared.started.elapsed().as_secs() + 1;
            if st.last_log.swap(now, Ordering::Relaxed) != now {
                warn!(rule = %rule.def.name, error = %script::describe_error(&rule.file, &e, rule.def.line), "rule stopped for this message");
            }
            return;
        }
    };
    st.passed.fetch_add(1, Ordering::Relaxed);
    for out in outputs {
        st.outputs.fetch_add(1, Ordering::Relaxed);
        let record: Record = Arc::new(out);
        for sink in &rule.sinks {
            sink.offer(record.clone());
        }
    }
}

enum Skip {
    NotPassed,
    Failed(Box<EvalAltResult>),
}

/// `when`, then `select`; `Ok(None)` means no `select` (the default output). Rhai code runs
/// under the per-evaluation deadline.
fn evaluate(
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

struct Metrics(Arc<Shared>);

impl Metrics {
    fn rule_json(r: &Rule) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (kind, on) = match &r.def.trigger {
            Trigger::Messages(filters) => ("messages", serde_json::json!(filters)),
            Trigger::Event(e) => ("event", serde_json::json!(e)),
        };
        serde_json::json!({
            "name": r.def.name,
            "file": &*r.file,
            "line": r.def.line,
            "kind": kind,
            "from": on,
            "sinks": r.def.sinks,
            // "native": evaluated in Rust (see `native`), "rhai": by the interpreter.
            "when": r.def.when.as_ref().map(|_| if r.when_native.is_some() { "native" } else { "rhai" }),
            "matched": g(&r.stats.matched),
            "passed": g(&r.stats.passed),
            "failed": g(&r.stats.failed),
            "outputs": g(&r.stats.outputs),
        })
    }
}

impl MetricsSource for Metrics {
    fn status(&self) -> Option<serde_json::Value> {
        let s = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let set = s.rules.load();
        let sinks: Vec<serde_json::Value> = s
            .sinks
            .values()
            .map(|k| {
                let c = &k.counters;
                serde_json::json!({
                    "name": k.name, "kind": k.kind,
                    "matched": g(&c.matched), "sent": g(&c.sent), "failed": g(&c.failed),
                    "retried": g(&c.retried), "dropped": g(&c.dropped), "buffered": k.buffered(),
                })
            })
            .collect();
        Some(serde_json::json!({
            "dir": s.config.dir,
            "rules": set.rules.iter().map(Self::rule_json).collect::<Vec<_>>(),
            "last_reload_errors": *s.last_errors.lock(),
            "reloads": g(&s.counters.reloads),
            "reload_errors": g(&s.counters.reload_errors),
            "queue_dropped": g(&s.counters.queue_dropped),
            "sinks": sinks,
        }))
    }

    fn render(&self, out: &mut String) {
        let s = &self.0;
        let c = &s.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP switchyard_rules_queue_dropped_total Messages and events not evaluated: rule queue full.\n# TYPE switchyard_rules_queue_dropped_total counter\nswitchyard_rules_queue_dropped_total {}",
            g(&c.queue_dropped)
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_rules_queue_depth Messages and events waiting for a rule worker.\n# TYPE switchyard_rules_queue_depth gauge\nswitchyard_rules_queue_depth {}",
            s.queue.len()
        );
        let _ = writeln!(
            out,
            "# TYPE switchyard_rules_reloads_total counter\nswitchyard_rules_reloads_total {}\n# TYPE switchyard_rules_reload_errors_total counter\nswitchyard_rules_reload_errors_total {}",
            g(&c.reloads),
            g(&c.reload_errors)
        );
        let _ = writeln!(out, "# HELP switchyard_rule_evaluations_total Rule evaluations by outcome.\n# TYPE switchyard_rule_evaluations_total counter");
        let set = s.rules.load();
        for r in &set.rules {
            let st = &r.stats;
            for (what, v) in [
                ("matched", g(&st.matched)),
                ("passed", g(&st.passed)),
                ("failed", g(&st.failed)),
                ("outputs", g(&st.outputs)),
            ] {
                let _ = writeln!(
                    out,
                    "switchyard_rule_evaluations_total{{rule=\"{}\",outcome=\"{what}\"}} {v}",
                    r.def.name.replace('"', "'")
                );
            }
        }
        let _ = writeln!(out, "# HELP switchyard_sink_sent_total Records per sink by outcome; switchyard_sink_buffered is held now.\n# TYPE switchyard_sink_sent_total counter");
        for sink in s.sinks.values() {
            sink.render_metrics(out);
        }
    }
}
