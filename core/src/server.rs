//! Starting and stopping a whole broker from a [`CoreConfig`]: register the built-in auth
//! hooks, then (after the caller has added its own) bind every listener, run `$SYS`, and shut
//! down gracefully.

use crate::auth::{AclRules, PasswordError, PasswordFile};
use crate::broker::Broker;
use crate::config::{AclRule, CoreConfig, ListenerKind, Permission, PersistMode};
use crate::transport::{BoundListener, ListenError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use tracing::info;

/// Priority of the built-in hooks: after plugins, which usually come first.
pub const BUILTIN_HOOK_PRIORITY: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("cannot read ACL file {path}: {message}")]
    AclFile { path: PathBuf, message: String },
    #[error("bans file {0}")]
    Bans(#[from] crate::guard::bans::BansError),
    #[error(transparent)]
    Persist(#[from] crate::broker::PersistError),
    #[error("cannot listen on {addr} (http): {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where, in the persistence folder, the bans operators set through the HTTP API are kept.
pub const OPERATOR_BANS_FILE: &str = "bans.json";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    acl: Vec<AclRule>,
}

/// Loads the password file and the ACL rules (`[[acl]]` and `acl_file`) into the hook chain,
/// and the bans file into the guard, replacing the ones loaded before: at start, and again on
/// SIGHUP. On any error nothing changes, so a bad edit leaves the running rules in force.
pub fn load_auth(broker: &Broker, config: &CoreConfig) -> Result<(), StartError> {
    let passwords = if config.auth.password_file.as_os_str().is_empty() {
        None
    } else {
        let pf = PasswordFile::load(&config.auth.password_file)?;
        info!(users = pf.user_count(), file = %config.auth.password_file.display(), "password file loaded");
        Some(pf)
    };
    let mut rules = config.acl.clone();
    if !config.auth.acl_file.as_os_str().is_empty() {
        let path = &config.auth.acl_file;
        let err = |message: String| StartError::AclFile {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: AclFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let probe = CoreConfig {
            acl: file.acl.clone(),
            ..CoreConfig::default()
        };
        probe
            .validate(&path.display().to_string())
            .map_err(|e| err(e.to_string()))?;
        rules.extend(file.acl);
    }
    let bans = match &config.limits.bans_file {
        p if p.as_os_str().is_empty() => Vec::new(),
        p => crate::guard::bans::load_bans_file(p)?,
    };
    broker.guard.bans.set_listed(bans);
    match passwords {
        Some(pf) => broker.hooks.replace(BUILTIN_HOOK_PRIORITY, Arc::new(pf)),
        None => broker.hooks.unregister("builtin:password-file"),
    }
    if !rules.is_empty() || config.auth.acl_default == Permission::Deny {
        broker.hooks.replace(
            BUILTIN_HOOK_PRIORITY + 1,
            Arc::new(AclRules::new(rules, config.auth.acl_default)),
        );
    } else {
        broker.hooks.unregister("builtin:acl");
    }
    Ok(())
}

/// A running broker.
pub struct Server {
    pub broker: Arc<Broker>,
    /// Where each listener ended up (ports resolved when bound to 0).
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    /// The HTTP endpoint (`[http]`), when enabled.
    pub http_addr: Option<SocketAddr>,
    /// Its socket, bound and not served yet: the composition root serves the API on it.
    pub http_listener: Option<tokio::net::TcpListener>,
    tasks: TaskTracker,
}

/// A broker that exists but does not listen yet: hooks, plugins and rules are registered on
/// [`Prepared::broker`] before [`Prepared::listen`] opens the first port, so no client is ever
/// served by a half-initialised broker.
pub struct Prepared {
    pub broker: Arc<Broker>,
    config: CoreConfig,
}

impl Prepared {
    /// Binds every listener (failing on the first that cannot start), then starts accepting.
    pub async fn listen(self) -> Result<Server, StartError> {
        let Prepared { broker, config } = self;
        let mut bound = Vec::new();
        for l in config.listeners {
            bound.push(
                BoundListener::bind(l)
                    .await
                    .inspect_err(|_| broker.close_persistence())?,
            );
        }
        let http = if config.http.enabled {
            let addr = config.http.bind;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Http { addr, source })?;
            Some(l)
        } else {
            None
        };
        let tasks = TaskTracker::new();
        let mut listeners = Vec::new();
        for l in bound {
            info!(listener = %l.name(), path = l.config.kind.is_websocket().then_some(l.config.path()), "listening");
            listeners.push((l.config.kind, l.local_addr));
            tokio::spawn(l.run(broker.clone(), tasks.clone()));
        }
        tokio::spawn(crate::sys::run(broker.clone()));
        tokio::spawn(crate::guard::overload::run(broker.clone()));
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        Ok(Server {
            broker,
            listeners,
            http_addr,
            http_listener: http,
            tasks,
        })
    }
}

impl Server {
    /// Creates the broker, puts back what `[persistence]` kept and loads the built-in auth
    /// hooks; nothing listens yet. Must run inside the runtime.
    pub fn prepare(config: CoreConfig) -> Result<Prepared, StartError> {
        let (broker, _) = Broker::open(
            config.mqtt.clone(),
            config.limits.clone(),
            &config.persistence,
        )?;
        if let Err(e) = load_auth(&broker, &config) {
            broker.close_persistence();
            return Err(e);
        }
        if config.persistence.mode != PersistMode::Off {
            let path = config.persistence.dir.join(OPERATOR_BANS_FILE);
            if let Err(e) = broker.guard.bans.keep_in(path) {
                broker.close_persistence();
                return Err(e.into());
            }
        }
        Ok(Prepared { broker, config })
    }

    /// What `check-config` loads of the core: the auth files (nothing is opened or started).
    pub fn check(config: &CoreConfig) -> Result<(), StartError> {
        let broker = Broker::with_limits(config.mqtt.clone(), config.limits.clone());
        load_auth(&broker, config)
    }

    /// [`Server::prepare`] and [`Prepared::listen`] in one: a broker with only the built-in
    /// hooks.
    pub async fn start(config: CoreConfig) -> Result<Server, StartError> {
        Self::prepare(config)?.listen().await
    }

    /// The first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, closes every connection (v5 clients get 0x8B, wills are published) and
    /// waits up to `grace` for connections to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.broker.begin_shutdown();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        // After the connections: their sessions' last records (offline, wills) go in too.
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close_persistence()).await;
    }
}
