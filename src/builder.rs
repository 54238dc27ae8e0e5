//! The composition root: one place that puts a broker together in the only safe order —
//! core and built-in auth, then extra hooks, plugins and rules, and only then the listeners.
//! `src/main.rs` and the end-to-end tests start brokers through it, so what the tests prove is
//! what the binary runs.

use crate::config::Config;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::config::ListenerKind;
use switchyard_core::hooks::Hook;
use switchyard_core::{Broker, CoreConfig, Server};
use switchyard_plugins::{HttpAuthHook, LoadError, PluginManager, PluginSettings};
use switchyard_rules::{RuleEngine, RulesConfig, RulesError, SinkConfig};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Core(#[from] switchyard_core::server::StartError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Hook(#[from] switchyard_core::hooks::DuplicateHook),
    #[error(transparent)]
    HttpAuth(#[from] switchyard_plugins::http_auth::HttpAuthError),
    #[error("[http]: {0}")]
    Http(String),
}

/// Entry point: `Switchyard::builder(config).start().await`.
pub struct Switchyard;

impl Switchyard {
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            hooks: Vec::new(),
            watch: true,
        }
    }

    /// A builder for a broker with only the core's settings (no plugins, no rules).
    pub fn core(core: CoreConfig) -> Builder {
        Self::builder(Config {
            core,
            ..Config::default()
        })
    }
}

pub struct Builder {
    config: Config,
    hooks: Vec<(i32, Arc<dyn Hook>)>,
    watch: bool,
}

impl Builder {
    /// `[[plugin]]` entries and the `plugins_dir` folder.
    pub fn plugins(mut self, entries: Vec<PluginSettings>, dir: Option<PathBuf>) -> Self {
        self.config.plugins = entries;
        self.config.plugins_dir = dir;
        self
    }

    /// The `[rules]` table and the `[sink.NAME]` tables.
    pub fn rules(mut self, rules: RulesConfig, sinks: BTreeMap<String, SinkConfig>) -> Self {
        self.config.rules = rules;
        self.config.sinks = sinks;
        self
    }

    /// `[http_auth]`: authentication and authorization by an HTTP service.
    pub fn http_auth(mut self, config: switchyard_plugins::HttpAuthConfig) -> Self {
        self.config.http_auth = config;
        self
    }

    /// A hook of the embedding program, in the chain before the first client arrives.
    pub fn hook(mut self, priority: i32, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push((priority, hook));
        self
    }

    /// Whether plugin and rule files are watched for changes (default on).
    pub fn watch_files(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Loads everything, then listens. Any part that fails stops the start: a plugin entry that
    /// does not load, a rule file that does not compile (`file:line:col`), a sink that cannot
    /// start, a port that is taken.
    pub async fn start(self) -> Result<Running, StartError> {
        let Builder {
            config,
            hooks,
            watch,
        } = self;
        let http_config = config.core.http.clone();
        let effective = effective_config(&config);
        // Listeners are bound in their configured order: the paths line up with them.
        let paths: Vec<String> = config
            .core
            .listeners
            .iter()
            .map(|l| l.path().to_string())
            .collect();
        let prepared = Server::prepare(config.core)?;
        let broker = prepared.broker.clone();
        // A start that fails from here on gives the persistence folder back (its lock, its
        // writer) so the next attempt can open it.
        let close = |e: StartError| {
            broker.close_persistence();
            e
        };
        // A certificate that does not load stops the start before any port opens.
        let http_tls =
            crate::api::load_tls(&http_config).map_err(|e| close(StartError::Http(e)))?;
        let rest = Self::load_extensions(
            &broker,
            hooks,
            config.http_auth,
            config.plugins,
            config.plugins_dir,
        );
        let plugins = rest.await.map_err(close)?;
        let rules = RuleEngine::start(config.rules, config.sinks, broker.clone())
            .await
            .map_err(|e| close(e.into()))?;
        let mut plugin_watcher = None;
        if watch {
            plugin_watcher = plugins.watch();
            if let Err(e) = rules.watch() {
                tracing::warn!(error = %e, "rule files are not watched; reload with SIGHUP");
            }
        }
        let mut server = match prepared.listen().await {
            Ok(server) => server,
            Err(e) => {
                rules.shutdown().await;
                return Err(close(e.into()));
            }
        };
        if let Some(listener) = server.http_listener.take() {
            let listeners = server
                .listeners
                .iter()
                .zip(paths)
                .map(|((kind, addr), path)| (*kind, *addr, path))
                .collect();
            let api = crate::api::prepare(
                broker.clone(),
                plugins.clone(),
                rules.clone(),
                http_config,
                effective,
                listeners,
                http_tls,
            );
            match api {
                Ok(api) => {
                    tokio::spawn(crate::api::run(listener, api));
                }
                Err(e) => {
                    server.shutdown(Duration::from_secs(1)).await;
                    rules.shutdown().await;
                    return Err(close(StartError::Http(e)));
                }
            }
        }
        Ok(Running {
            server,
            plugins,
            rules,
            _plugin_watcher: plugin_watcher,
        })
    }

    /// Hooks of the embedding program, HTTP authentication and plugins, in that order.
    async fn load_extensions(
        broker: &Arc<Broker>,
        hooks: Vec<(i32, Arc<dyn Hook>)>,
        http_auth_config: switchyard_plugins::HttpAuthConfig,
        entries: Vec<PluginSettings>,
        dir: Option<PathBuf>,
    ) -> Result<Arc<PluginManager>, StartError> {
        for (priority, hook) in hooks {
            broker.hooks.register(priority, hook)?;
        }
        if let Some(http_auth) = HttpAuthHook::new(&http_auth_config)? {
            broker
                .hooks
                .register(http_auth_config.priority, Arc::new(http_auth))?;
        }
        let plugins = PluginManager::new(broker.clone(), entries, dir);
        plugins.start().await?;
        Ok(plugins)
    }
}

/// A broker that is serving.
pub struct Running {
    pub server: Server,
    pub plugins: Arc<PluginManager>,
    pub rules: Arc<RuleEngine>,
    _plugin_watcher: Option<notify::RecommendedWatcher>,
}

/// A running broker is first of all its server: listeners, broker, shutdown.
impl std::ops::Deref for Running {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Running {
    pub fn broker(&self) -> &Arc<Broker> {
        &self.server.broker
    }

    /// The first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.server.addr(kind)
    }

    /// Stops the listeners and connections (waiting up to `grace`), then the rules, which by
    /// then have every accepted message. Returns sink records left undelivered.
    pub async fn shutdown(self, grace: Duration) -> u64 {
        self.server.shutdown(grace).await;
        self.rules.shutdown().await
    }
}

/// The configuration as the API shows it: the core's tables with every default filled in,
/// the others as the file has them; secrets redacted.
fn effective_config(config: &Config) -> serde_json::Value {
    let mut out = serde_json::to_value(&config.core).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut out {
        for key in ["plugin", "plugins_dir", "rules", "sink", "http_auth"] {
            if let Some(v) = config.file_tables.get(key) {
                map.insert(key.to_string(), serde_json::to_value(v).unwrap_or_default());
            }
        }
    }
    crate::api::redact(&mut out);
    out
}

/// What `check-config` found loadable.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub plugins: usize,
    pub rules: usize,
}

/// Everything `start` would load, loaded and thrown away: plugins compiled and initialised,
/// rule files compiled against the configured sinks. Nothing listens and no sink connects.
pub async fn check(config: &Config) -> Result<Checked, StartError> {
    Server::check(&config.core)?;
    HttpAuthHook::new(&config.http_auth)?;
    let plugins = PluginManager::check(&config.plugins, config.plugins_dir.as_deref()).await?;
    let rules = RuleEngine::check(&config.rules, &config.sinks)?;
    Ok(Checked { plugins, rules })
}
