//! Which plugins are loaded: the `[[plugin]]` entries and every `.wasm` in `plugins_dir`,
//! reloaded when their files change (a debounced watcher) or on demand (SIGHUP). A new version
//! is compiled and initialised off the hot path and swapped into the hook chain atomically; if
//! it fails, the running version stays and the error is logged. A file that is gone after the
//! debounce is a removal (`rm` + `cp` within it is a replacement): an authentication or ACL
//! plugin removed is logged at warn and reported by `/health`; a `required` one leaves a
//! stand-in that refuses everyone until the file is back.

use crate::runtime::{plugin_id, WasmPlugin, ENGINE_INSTANCES};
use crate::settings::{LoadError, PluginSettings};
use crate::standin::StandIn;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_core::hooks::HookSet;
use switchyard_core::Broker;
use tracing::{error, info, warn};

/// Changes arriving within this window are handled as one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

pub(crate) struct Loaded {
    modified: Option<SystemTime>,
    pub(crate) plugin: Arc<WasmPlugin>,
    /// Successful loads of this path so far.
    pub(crate) version: u64,
}

/// A plugin whose file went away.
pub(crate) struct Missing {
    pub(crate) name: String,
    pub(crate) since: SystemTime,
    pub(crate) required: bool,
    /// It authenticated or authorized: clients now meet the next hook or the listener default.
    pub(crate) gate: bool,
}

pub struct PluginManager {
    broker: Arc<Broker>,
    explicit: Vec<PluginSettings>,
    dir: Option<PathBuf>,
    pub(crate) loaded: Mutex<HashMap<PathBuf, Loaded>>,
    pub(crate) missing: Mutex<HashMap<PathBuf, Missing>>,
    /// Serialises reloads (watcher and SIGHUP may ask at once).
    reloading: tokio::sync::Mutex<()>,
    /// Files that could not be loaded as they are now (a version before keeps running).
    pub(crate) last_errors: Mutex<HashMap<PathBuf, String>>,
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
            missing: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            last_errors: Mutex::new(HashMap::new()),
        })
    }

    /// Loads every configured plugin. A `[[plugin]]` entry that cannot load, or that names a
    /// file another entry names too, is a start-up error; a bad file in `plugins_dir` is
    /// logged and skipped.
    pub async fn start(self: &Arc<Self>) -> Result<(), LoadError> {
        check_duplicates(&self.explicit)?;
        self.broker.set_metrics_source(
            "plugins",
            Arc::new(crate::status::PluginStatus(Arc::downgrade(self))),
        );
        for s in &self.explicit {
            let plugin = WasmPlugin::load(s.clone()).await?;
            self.install(&s.path, plugin);
        }
        self.reload().await;
        let caps: usize = self
            .loaded
            .lock()
            .values()
            .map(|l| l.plugin.settings.max_instances)
            .sum();
        if caps > ENGINE_INSTANCES {
            warn!(instances = caps, pool = ENGINE_INSTANCES, "the plugins' max_instances add up to more than the engine's pool: under load some calls will find no instance");
        }
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
        check_duplicates(explicit)?;
        let desired = desired_plugins(explicit, dir);
        for s in &desired {
            WasmPlugin::load(s.clone()).await?;
        }
        Ok(desired.len())
    }

    /// Loads what changed, takes out what disappeared.
    pub async fn reload(&self) {
        let _one_at_a_time = self.reloading.lock().await;
        let desired = self.desired();
        for s in &desired {
            if !s.path.exists() {
                self.went_missing(&s.path, s.required);
                continue;
            }
            let current = modified(&s.path);
            let (unchanged, kv) = match self.loaded.lock().get(&s.path) {
                Some(l) => (l.modified == current, Some(l.plugin.kv.clone())),
                None => (false, None),
            };
            if unchanged {
                continue;
            }
            if self.load_and_install(s.clone(), kv).await.is_err() {
                // Do not retry the same broken file until it changes again.
                if let Some(l) = self.loaded.lock().get_mut(&s.path) {
                    l.modified = current;
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
            self.went_missing(&path, false);
        }
    }

    /// Takes a plugin whose file is gone out of the chain (or, when required, puts its
    /// stand-in in its place, in one swap).
    fn went_missing(&self, path: &Path, required: bool) {
        let Some(l) = self.loaded.lock().remove(path) else {
            return;
        };
        let plugin = &l.plugin;
        let gate = plugin.interests.contains(HookSet::AUTHENTICATE)
            || plugin.interests.contains(HookSet::AUTHORIZE);
        if required {
            let stand_in = StandIn {
                id: plugin.id.clone(),
                name: plugin.name.clone(),
            };
            self.broker
                .hooks
                .replace(plugin.priority(), Arc::new(stand_in));
            warn!(plugin = plugin.name(), path = %path.display(), "required plugin removed: every client and operation is refused until it is back");
        } else {
            self.broker.hooks.unregister(plugin.id());
            if gate {
                warn!(plugin = plugin.name(), path = %path.display(), "authentication/ACL plugin removed: clients now meet the next hook or the listener's defaults");
            } else {
                info!(plugin = plugin.name(), path = %path.display(), "plugin removed");
            }
        }
        if gate || required {
            self.missing.lock().insert(
                path.to_path_buf(),
                Missing {
                    name: plugin.name().to_string(),
                    since: SystemTime::now(),
                    required,
                    gate,
                },
            );
        }
    }

    fn install(&self, path: &Path, plugin: Arc<WasmPlugin>) {
        self.broker.hooks.replace(plugin.priority(), plugin.hook());
        if self.missing.lock().remove(path).is_some() {
            info!(plugin = plugin.name(), "plugin is back");
        }
        let mut loaded = self.loaded.lock();
        let version = loaded.get(path).map_or(0, |l| l.version) + 1;
        info!(
            plugin = plugin.name(),
            id = plugin.id(),
            contract = plugin.contract(),
            version,
            "plugin loaded"
        );
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

    /// The loaded plugin at `path`.
    pub fn plugin(&self, path: &Path) -> Option<Arc<WasmPlugin>> {
        self.loaded.lock().get(path).map(|l| l.plugin.clone())
    }

    /// Closes every plugin's breaker and forgets removals of plugins that are not required
    /// (an operator has seen them): SIGHUP.
    pub fn reset_breakers(&self) {
        for l in self.loaded.lock().values() {
            l.plugin.reset_breaker();
        }
        self.missing.lock().retain(|_, m| m.required);
    }

    /// Loads the plugin named `name` (its name or id) again from its file, changed or not:
    /// an operator's reload. Returns its new version; a file that fails to load leaves the
    /// running one in place and its error is returned.
    pub async fn reload_one(&self, name: &str) -> Result<u64, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let found = self
            .loaded
            .lock()
            .iter()
            .find(|(_, l)| l.plugin.name() == name || l.plugin.id() == name)
            .map(|(path, l)| (path.clone(), l.plugin.kv.clone()));
        let Some((path, kv)) = found else {
            return Err(format!("no plugin named {name:?} is loaded"));
        };
        let Some(settings) = self
            .desired()
            .into_iter()
            .find(|s| same_file(&s.path, &path))
        else {
            return Err(format!("{} is no longer configured", path.display()));
        };
        self.load_and_install(settings, Some(kv)).await?;
        Ok(self.version(&path))
    }

    /// Loads the plugin of `settings` and puts it in the chain; a file that does not load
    /// leaves the running plugin (if any) in place and its error in `/plugins`.
    async fn load_and_install(
        &self,
        settings: PluginSettings,
        kv: Option<Arc<crate::host::KvStore>>,
    ) -> Result<(), String> {
        let path = settings.path.clone();
        match WasmPlugin::load_with(settings, kv).await {
            Ok(plugin) => {
                self.install(&path, plugin);
                self.last_errors.lock().remove(&path);
                Ok(())
            }
            Err(e) => {
                let running = self.loaded.lock().contains_key(&path);
                error!(error = %e, kept_running = running, "plugin not (re)loaded");
                self.last_errors.lock().insert(path, e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Closes the breaker of the plugin named `name` (its name or id). Returns whether it is
    /// loaded.
    pub fn reset_breaker(&self, name: &str) -> bool {
        let loaded = self.loaded.lock();
        let found = loaded
            .values()
            .find(|l| l.plugin.name() == name || l.plugin.id() == name);
        if let Some(l) = found {
            l.plugin.reset_breaker();
        }
        found.is_some()
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

/// Two `[[plugin]]` entries naming one file (however spelled) would be one hook twice.
fn check_duplicates(explicit: &[PluginSettings]) -> Result<(), LoadError> {
    for (i, a) in explicit.iter().enumerate() {
        if let Some(b) = explicit[..i]
            .iter()
            .find(|b| plugin_id(&b.path) == plugin_id(&a.path))
        {
            return Err(LoadError::Duplicate {
                path: a.path.clone(),
                other: b.path.clone(),
            });
        }
    }
    Ok(())
}
