//! Loading the rule files: parse and check every file, build the rule set, swap it in
//! atomically (or keep the running one), and watch the folder for changes.

use super::hook::RulesHook;
use super::{IndexEntry, Rule, RuleEngine, RuleSet, RulesError, HOOK_PRIORITY};
use crate::config::{RulesConfig, SinkConfig};
use crate::native::Predicate;
use crate::script::{self, RuleDef};
use rhai::{Engine, AST};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::hooks::HookSet;
use tracing::{error, info};

impl RuleEngine {
    /// Loads every rule file again and swaps the new set in, or keeps the running set and
    /// returns the errors ([`RulesError::Load`], each `file:line:col: message`).
    pub fn reload(&self) -> Result<usize, RulesError> {
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
                Err(RulesError::Load(errors))
            }
        }
    }

    fn load_dir(&self, dir: &Path) -> Result<RuleSet, Vec<String>> {
        let s = &self.shared;
        let budget = Duration::from_millis(s.config.timeout_ms.max(1) * 20);
        let files = parse_dir(&s.engine, dir, s.sink_kinds.clone(), budget, None)?;
        let disabled = super::admin::read_disabled(dir);
        let mut set = RuleSet {
            generation: s.generations.fetch_add(1, Ordering::Relaxed) + 1,
            ..RuleSet::default()
        };
        for ParsedFile { file, ast, defs } in files {
            for (key, def) in defs {
                let sinks = def
                    .sinks
                    .iter()
                    .filter_map(|n| s.sinks.get(n).cloned())
                    .collect();
                let stats = s.stats.lock().entry(key.clone()).or_default().clone();
                let idx = set.rules.len() as u32;
                // A disabled rule is listed, but in no index: nothing reaches it.
                let enabled = !disabled.contains(&key);
                if enabled {
                    set.index_rule(&def, idx);
                }
                let when_native = def.when.as_ref().and_then(|w| Predicate::compile(&ast, w));
                set.rules.push(Rule {
                    name: Arc::from(def.name.as_str()),
                    key,
                    enabled,
                    def,
                    file: file.clone(),
                    ast: ast.clone(),
                    when_native,
                    sinks,
                    stats,
                });
            }
        }
        Ok(set)
    }

    /// Compiles the rule files of `config` against the sinks `sinks` declares, without
    /// starting anything: what `check-config` runs. Returns the number of rules.
    pub fn check(
        config: &RulesConfig,
        sinks: &BTreeMap<String, SinkConfig>,
    ) -> Result<usize, RulesError> {
        crate::config::check_dead_letters(sinks).map_err(RulesError::Config)?;
        let Some(dir) = &config.dir else {
            return Ok(0);
        };
        if !dir.exists() {
            // Start-up creates it; an absent folder holds no rules yet.
            return Ok(0);
        }
        let kinds = Arc::new(
            sinks
                .iter()
                .map(|(n, c)| (n.clone(), c.kind))
                .collect::<HashMap<_, _>>(),
        );
        let engine = script::build_engine(config);
        let budget = Duration::from_millis(config.timeout_ms.max(1) * 20);
        let files = parse_dir(&engine, dir, kinds, budget, None).map_err(RulesError::Load)?;
        Ok(files.iter().map(|f| f.defs.len()).sum())
    }

    /// Watches the rules folder; changes are debounced, then the whole set reloads.
    pub fn watch(self: &Arc<Self>) -> Result<(), RulesError> {
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
        .map_err(|e| RulesError::Watch(dir.clone(), e.to_string()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| RulesError::Watch(dir.clone(), e.to_string()))?;
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
            .map_err(|e| RulesError::Watch(dir.clone(), e.to_string()))?;
        Ok(())
    }
}

impl RuleSet {
    /// Puts rule `idx` in the topic index and the event lists, and notes which hooks it needs.
    fn index_rule(&mut self, def: &RuleDef, idx: u32) {
        if !def.trigger.filters.is_empty() {
            self.interests = self.interests | HookSet::MESSAGE_ACCEPTED;
        }
        for f in &def.trigger.filters {
            self.index.insert(
                f,
                None,
                IndexEntry {
                    key: format!("{idx}").into(),
                    rule: idx,
                },
            );
        }
        for name in &def.trigger.events {
            self.interests = self.interests
                | if name.starts_with("message.") {
                    HookSet::MESSAGE_EVENTS
                } else if name.starts_with("client.check_") || *name == "client.connack" {
                    HookSet::AUTH_EVENTS
                } else {
                    HookSet::CLIENT_EVENTS
                };
            self.by_event.entry(name).or_default().push(idx);
        }
    }
}

/// One rule file, compiled: its rules keyed by the name their statistics are kept under.
struct ParsedFile {
    file: Arc<str>,
    ast: Arc<AST>,
    defs: Vec<(String, RuleDef)>,
}

/// Whether the rules folder loads with `file` (a path in it, as displayed) holding `text`
/// instead of what is on disk: a file is checked this way before it is written.
pub(super) fn parse_dir_with(
    engine: &RuleEngine,
    dir: &Path,
    overlay: Option<(&str, &str)>,
) -> Result<(), Vec<String>> {
    let s = &engine.shared;
    let budget = Duration::from_millis(s.config.timeout_ms.max(1) * 20);
    parse_dir(&s.engine, dir, s.sink_kinds.clone(), budget, overlay).map(drop)
}

/// Compiles every `*.rhai` file of `dir` in name order (with `overlay`'s text for its file,
/// which need not exist yet). Errors (`file:line:col: message`) of every file are collected,
/// so one run shows them all.
fn parse_dir(
    engine: &Engine,
    dir: &Path,
    sink_kinds: Arc<HashMap<String, &'static str>>,
    budget: Duration,
    overlay: Option<(&str, &str)>,
) -> Result<Vec<ParsedFile>, Vec<String>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
            .collect(),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    if let Some((file, _)) = overlay {
        let path = PathBuf::from(file);
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut errors = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut files = Vec::new();
    for path in paths {
        let file: Arc<str> = path.display().to_string().into();
        let from_disk = match overlay {
            Some((name, text)) if *name == *file => Ok(text.to_string()),
            _ => std::fs::read_to_string(&path),
        };
        let text = match from_disk {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{file}: {e}"));
                continue;
            }
        };
        let (ast, defs) = match script::load_file(engine, &file, &text, sink_kinds.clone(), budget)
        {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut keyed = Vec::with_capacity(defs.len());
        for def in defs {
            // `on(...)` rules are named after their event: several may share it.
            let key = if def.name.starts_with("on(") {
                format!("{}@{file}:{}", def.name, def.line)
            } else {
                def.name.clone()
            };
            if let Some(other) = names.insert(key.clone(), format!("{file}:{}", def.line)) {
                errors.push(format!(
                    "{file}:{}: rule {:?} is already defined at {other}",
                    def.line, def.name
                ));
                continue;
            }
            keyed.push((key, def));
        }
        files.push(ParsedFile {
            file,
            ast,
            defs: keyed,
        });
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}
