//! Which plugins are loaded: the `[[plugin]]` entries and every `.wasm` in `plugins_dir`,
//! reloaded when their files change (a debounced watcher) or on demand (SIGHUP). A new version
//! is compiled and initialised off the hot path and swapped into the hook chain atomically; if
//! it fails, the running version stays and the error is logged.

use crate::runtime::WasmPlugin;
use crate::settings::{LoadError, PluginSettings};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_core::Broker;
use tracing::{error, info, warn};

/// Changes arriving within this window are handled as one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

struct Loaded {
    modified: Option<SystemTime>,
    plugin: Arc<WasmPlugin>,
    /// Successful loads of this path so far.
    version: u64,
}

pub struct PluginManager {
    broker: Arc<Broker>,
    explicit: Vec<PluginSettings>,
    dir: Option<PathBuf>,
    loaded: Mutex<HashMap<PathBuf, Loaded>>,
    /// Serialises reloads (watcher and SIGHUP may ask at once).
    reloading: tokio::sync::Mutex<()>,
    /// Files that could not be loaded as they are now (a version before keeps running).
    last_errors: Mutex<HashMap<PathBuf, String>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PluginManager {
    pub fn new(
        broker: Arc<Broker>,
        explicit: Vec<PluginSettings>,
        dir: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            explicit,
            dir,
            loaded: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            last_errors: Mutex::new(HashMap::new()),
        })
    }

    /// Loads every configured plugin. A `[[plugin]]` entry that cannot load is a start-up error;
    /// a bad file in `plugins_dir` is logged and skipped.
    pub async fn start(self: &Arc<Self>) -> Result<(), LoadError> {
        self.broker
            .set_metrics_source("plugins", Arc::new(PluginMetrics(Arc::downgrade(self))));
        for s in &self.explicit {
            let plugin = load(s.clone()).await?;
            self.install(&s.path, plugin);
        }
        self.reload().await;
        Ok(())
    }

    /// What should be loaded now: explicit entries, plus directory files with default settings.
    fn desired(&self) -> Vec<PluginSettings> {
        desired_plugins(&self.explicit, self.dir.as_deref())
    }

    /// Compiles and initialises every plugin the configuration names (`[[plugin]]` entries and
    /// the files of `plugins_dir`) without registering any: what `check-config` runs. Unlike
    /// start-up, a broken file in `plugins_dir` is an error here. Returns how many loaded.
    pub async fn check(
        explicit: &[PluginSettings],
        dir: Option<&Path>,
    ) -> Result<usize, LoadError> {
        let desired = desired_plugins(explicit, dir);
        for s in &desired {
            load(s.clone()).await?;
        }
        Ok(desired.len())
    }

    /// Loads what changed, drops what disappeared.
    pub async fn reload(&self) {
        let _one_at_a_time = self.reloading.lock().await;
        let desired = self.desired();
        for s in &desired {
            let current = modified(&s.path);
            let unchanged = self
                .loaded
                .lock()
                .get(&s.path)
                .is_some_and(|l| l.modified == current);
            if unchanged {
                continue;
            }
            match load(s.clone()).await {
                Ok(plugin) => {
                    self.install(&s.path, plugin);
                    self.last_errors.lock().remove(&s.path);
                }
                Err(e) => {
                    let running = self.loaded.lock().contains_key(&s.path);
                    error!(error = %e, kept_running = running, "plugin not (re)loaded");
                    self.last_errors
                        .lock()
                        .insert(s.path.clone(), e.to_string());
                    // Do not retry the same broken file until it changes again.
                    if let Some(l) = self.loaded.lock().get_mut(&s.path) {
                        l.modified = current;
                    }
                }
            }
        }
        self.last_errors
            .lock()
            .retain(|p, _| desired.iter().any(|s| same_file(&s.path, p)));
        let gone: Vec<PathBuf> = self
            .loaded
            .lock()
            .keys()
            .filter(|p| !desired.iter().any(|s| same_file(&s.path, p)))
            .cloned()
            .collect();
        for path in gone {
            if let Some(l) = self.loaded.lock().remove(&path) {
                self.broker.hooks.unregister(l.plugin.name());
                info!(plugin = l.plugin.name(), "plugin removed");
            }
        }
    }

    fn install(&self, path: &Path, plugin: Arc<WasmPlugin>) {
        self.broker.hooks.replace(plugin.priority(), plugin.hook());
        let mut loaded = self.loaded.lock();
        let version = loaded.get(path).map_or(0, |l| l.version) + 1;
        info!(plugin = plugin.name(), version, "plugin loaded");
        loaded.insert(
            path.to_path_buf(),
            Loaded {
                modified: modified(path),
                plugin,
                version,
            },
        );
    }

    /// How many times the plugin at `path` has been loaded (0: not loaded).
    pub fn version(&self, path: &Path) -> u64 {
        self.loaded.lock().get(path).map_or(0, |l| l.version)
    }

    /// Watches `plugins_dir` and the folders of `[[plugin]]` files; reloads after changes.
    /// The watcher lives as long as the returned guard.
    pub fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // inotify reports opens and reads too (our own loads among them): only
                    // changes, and a close after writing, mean a new version.
                    use notify::event::{AccessKind, AccessMode};
                    let relevant = match ev.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    };
                    if relevant {
                        let _ = tx.send(());
                    }
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch plugin files; reload with SIGHUP");
                    return None;
                }
            };
        let mut dirs: Vec<PathBuf> = self.dir.iter().cloned().collect();
        for s in &self.explicit {
            if let Some(parent) = s.path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                dirs.push(parent.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                warn!(dir = %d.display(), error = %e, "cannot watch plugin folder");
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: wait for the writes to settle, then drain what queued up meanwhile.
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                me.reload().await;
            }
        });
        Some(watcher)
    }
}

fn desired_plugins(explicit: &[PluginSettings], dir: Option<&Path>) -> Vec<PluginSettings> {
    let mut out = explicit.to_vec();
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for path in files {
            if !out.iter().any(|s| same_file(&s.path, &path)) {
                out.push(PluginSettings::for_path(path));
            }
        }
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
}

/// Compiles (on the blocking pool) and initialises a plugin.
async fn load(settings: PluginSettings) -> Result<Arc<WasmPlugin>, LoadError> {
    WasmPlugin::load(settings).await
}

/// Per-plugin counters in `/metrics`: calls, failed calls, disabled, dropped events.
struct PluginMetrics(std::sync::Weak<PluginManager>);

impl switchyard_core::metrics::MetricsSource for PluginMetrics {
    fn status(&self) -> Option<serde_json::Value> {
        let manager = self.0.upgrade()?;
        let loaded = manager.loaded.lock();
        let mut plugins: Vec<serde_json::Value> = loaded
            .iter()
            .map(|(path, l)| {
                let p = &l.plugin;
                serde_json::json!({
                    "name": p.name(), "path": path, "version": l.version, "priority": p.priority(),
                    "calls": p.calls(), "failures": p.failures(), "disabled": p.is_disabled(),
                    "events_dropped": p.events_dropped(),
                })
            })
            .collect();
        plugins.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Some(serde_json::json!({
            "plugins": plugins,
            "load_errors": manager.last_errors.lock().values().collect::<Vec<_>>(),
        }))
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(manager) = self.0.upgrade() else {
            return;
        };
        let loaded = manager.loaded.lock();
        let mut plugins: Vec<&Arc<WasmPlugin>> = loaded.values().map(|l| &l.plugin).collect();
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        type Read = fn(&WasmPlugin) -> u64;
        let series: [(&str, &str, &str, Read); 4] = [
            (
                "switchyard_plugin_calls_total",
                "counter",
                "Hook calls into each WASM plugin.",
                |p| p.calls(),
            ),
            (
                "switchyard_plugin_failures_total",
                "counter",
                "Calls that trapped, timed out or ran out of memory.",
                |p| p.failures(),
            ),
            (
                "switchyard_plugin_disabled",
                "gauge",
                "1 when a plugin was disabled after repeated failures.",
                |p| u64::from(p.is_disabled()),
            ),
            (
                "switchyard_plugin_events_dropped_total",
                "counter",
                "Events not delivered: the plugin's queue was full.",
                |p| p.events_dropped(),
            ),
        ];
        for (name, kind, help, read) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in &plugins {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", p.name(), read(p));
            }
        }
    }
}
