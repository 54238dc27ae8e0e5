//! The running rule engine.
//!
//! - this module: the engine's state ([`Shared`]), start-up and shut-down;
//! - [`hook`]: the hook that matches accepted messages and queues work;
//! - [`events`]: client and message events as rule maps;
//! - [`reload`]: parsing rule files, swapping the rule set, the folder watcher;
//! - [`worker`]: the threads that evaluate rules and feed sinks;
//! - [`status`]: `/rules` JSON and Prometheus counters;
//! - [`admin`]: rule files, enabling and testing rules, for the HTTP API.

pub mod admin;
mod events;
mod hook;
mod reload;
mod status;
mod worker;

use crate::config::{RulesConfig, SinkConfig};
use crate::native::Predicate;
use crate::queue::WorkQueue;
use crate::script::{self, RuleDef};
use crate::sink::{Sink, SinkError};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rhai::{Engine, AST};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::broker::Broker;
use switchyard_core::hooks::{ClientInfo, Event, HookSet};
use switchyard_core::message::Message;
use switchyard_core::topic::{TopicTree, TreeEntry};
use tracing::warn;

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
    /// Rule files that did not load, each `file:line:col: message`.
    #[error("rule files rejected:\n  {}", .0.join("\n  "))]
    Load(Vec<String>),
    #[error("{0}")]
    Config(String),
    #[error("cannot watch {0}: {1}")]
    Watch(PathBuf, String),
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
    /// What its `print` may write to the log.
    pub prints: crate::print::PrintLimit,
    /// The last evaluation error, `file:line:col: message`, and when (Unix ms).
    pub last_error: Mutex<Option<(String, u64)>>,
}

struct Rule {
    def: RuleDef,
    /// What its statistics and `.disabled-rules` know it by (its name; `on(...)` rules add
    /// their place).
    key: String,
    /// Off by an operator: listed, but in no index.
    enabled: bool,
    /// The rule's name, shared with the log lines of its prints.
    name: Arc<str>,
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

/// A rule a message matched. `when_passed`: the routing thread already evaluated its `when`
/// natively (and counted the match), and it passed.
#[derive(Debug, Clone, Copy)]
struct Matched {
    rule: u32,
    when_passed: bool,
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
    /// Publishers held because the queue was full (`overflow = "backpressure"`).
    pub backpressure_waits: AtomicU64,
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

impl RuleEngine {
    /// Starts the sinks, the workers and loads the rule files. A rule file with errors stops
    /// the start (`RulesError::Load`, each error `file:line:col`): a broker that looks healthy
    /// with none of its rules running is worse than one that does not start. Later reloads
    /// keep the running rules instead.
    pub async fn start(
        config: RulesConfig,
        sinks: BTreeMap<String, SinkConfig>,
        broker: Arc<Broker>,
    ) -> Result<Arc<RuleEngine>, RulesError> {
        crate::config::check_dead_letters(&sinks).map_err(RulesError::Config)?;
        let mut running = BTreeMap::new();
        for (name, cfg) in &sinks {
            running.insert(name.clone(), Sink::start(name, cfg, &broker).await?);
        }
        for sink in running.values() {
            sink.link_dead_letter(&running);
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
                .spawn(move || worker::worker(&shared, i))
                .map_err(RulesError::Workers)?;
            workers.push(handle);
        }
        let engine = Arc::new(RuleEngine {
            shared,
            workers: Mutex::new(workers),
            watcher: Mutex::new(None),
        });
        if let Err(e) = engine.reload() {
            engine.shutdown().await;
            return Err(e);
        }
        broker.set_metrics_source(HOOK_NAME, Arc::new(status::Metrics(engine.shared.clone())));
        Ok(engine)
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
