//! The `switchyard` binary: command line, configuration loading, logging, start-up and graceful
//! shut-down of the broker.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_core::{CoreConfig, Server};
use switchyard_plugins::{PluginManager, PluginSettings};
use switchyard_rules::{RuleEngine, RulesConfig, SinkConfig};
use tracing::info;
use tracing_subscriber::EnvFilter;

const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

#[derive(Parser)]
#[command(name = "switchyard", version, about = "An MQTT 3.1.1 / 5.0 broker")]
struct Cli {
    /// Configuration file (TOML). Without it every setting has its default.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print a fully commented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log format. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Add a user to a password file or change their password. The password is read from the
    /// terminal without echo, or from the first line of stdin when it is not a terminal.
    Passwd { file: PathBuf, user: String },
    /// Check a configuration file and exit.
    CheckConfig { file: PathBuf },
}

/// The whole configuration file: the core's tables plus the plugin host's.
#[derive(Debug)]
struct Config {
    core: CoreConfig,
    plugins: Vec<PluginSettings>,
    plugins_dir: Option<PathBuf>,
    rules: RulesConfig,
    sinks: BTreeMap<String, SinkConfig>,
}

fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_config(&text, &path.display().to_string())
}

fn parse_config(text: &str, name: &str) -> Result<Config> {
    // Each crate owns its tables: take out the plugin host's, the core rejects anything else.
    let mut table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{name}: {e}"))?;
    let plugins = match table.remove("plugin") {
        Some(v) => {
            Vec::<PluginSettings>::deserialize(v).map_err(|e| anyhow!("{name}: plugin: {e}"))?
        }
        None => Vec::new(),
    };
    let plugins_dir = match table.remove("plugins_dir") {
        Some(toml::Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
        Some(toml::Value::String(_)) | None => None,
        Some(_) => bail!("{name}: plugins_dir: expected a folder path"),
    };
    let rules = match table.remove("rules") {
        Some(v) => RulesConfig::deserialize(v).map_err(|e| anyhow!("{name}: rules: {e}"))?,
        None => RulesConfig::default(),
    };
    let mut sinks = BTreeMap::new();
    if let Some(v) = table.remove("sink") {
        let toml::Value::Table(t) = v else {
            bail!("{name}: sink: expected [sink.NAME] tables");
        };
        for (sink, v) in t {
            let cfg =
                SinkConfig::deserialize(v).map_err(|e| anyhow!("{name}: sink.{sink}: {e}"))?;
            sinks.insert(sink, cfg);
        }
    }
    let core =
        CoreConfig::deserialize(toml::Value::Table(table)).map_err(|e| anyhow!("{name}: {e}"))?;
    core.validate(name)?;
    Ok(Config {
        core,
        plugins,
        plugins_dir,
        rules,
        sinks,
    })
}

fn read_password() -> Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Reenter password: ")?;
        if first != second {
            bail!("passwords do not match");
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() -> Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; Ok("SIGINT") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("ctrl-c")
    }
}

/// SIGHUP re-reads the password file and ACL rules (from the config file again, when there is
/// one), reloads plugins whose files changed and the rule files. The watchers reload plugins and
/// rules on their own too; SIGHUP is for auth files and for setups where file events do not
/// arrive (some network file systems). Other settings need a restart.
fn reload_on_sighup(
    server: &Server,
    config_path: Option<PathBuf>,
    plugins: std::sync::Arc<PluginManager>,
    rules: std::sync::Arc<RuleEngine>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let broker = server.broker.clone();
        // Installed before the listeners are announced: a SIGHUP that arrives earlier than the
        // handler would otherwise terminate the process.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading auth files, plugins and rules");
                let core = match &config_path {
                    Some(path) => match load_config(path) {
                        Ok(c) => Some(c.core),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "config file not reloaded; the running auth settings stay");
                            None
                        }
                    },
                    None => Some(CoreConfig::default()),
                };
                if let Some(core) = core {
                    if let Err(e) = switchyard_core::server::load_auth(&broker, &core) {
                        tracing::error!(error = %e, "auth files not reloaded; the running ones stay");
                    }
                }
                plugins.reload().await;
                let rules = rules.clone();
                let _ = tokio::task::spawn_blocking(move || rules.reload()).await;
            }
        });
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    match cli.command {
        Some(Command::Passwd { file, user }) => {
            let password = read_password()?;
            if password.is_empty() {
                bail!("empty password refused");
            }
            switchyard_core::auth::set_password(&file, &user, &password)?;
            eprintln!("password for {user} written to {}", file.display());
            return Ok(());
        }
        Some(Command::CheckConfig { file }) => {
            load_config(&file)?;
            println!("{}: ok", file.display());
            return Ok(());
        }
        None => {}
    }
    let config = match &cli.config {
        Some(path) => load_config(path)?,
        None => Config {
            core: CoreConfig::default(),
            plugins: Vec::new(),
            plugins_dir: None,
            rules: RulesConfig::default(),
            sinks: BTreeMap::new(),
        },
    };
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::start(config.core).await?;
        let plugins = PluginManager::new(server.broker.clone(), config.plugins, config.plugins_dir);
        plugins.start().await?;
        let _watcher = plugins.watch();
        let rules = RuleEngine::start(config.rules, config.sinks, server.broker.clone()).await?;
        if let Err(e) = rules.watch() {
            tracing::warn!(error = %e, "rule files are not watched; reload with SIGHUP");
        }
        reload_on_sighup(&server, cli.config.clone(), plugins.clone(), rules.clone());
        for (kind, addr) in &server.listeners {
            println!("switchyard listening: {} {}", kind.as_str(), addr);
        }
        if let Some(addr) = server.http_addr {
            println!("switchyard listening: http {addr} (/health, /metrics)");
        }
        info!(version = switchyard_core::sys::VERSION, "broker started");
        let signal = wait_for_signal().await?;
        info!(signal, "shutting down");
        server.shutdown(Duration::from_secs(5)).await;
        // After the listeners: every accepted message has been handed to the rules by now.
        rules.shutdown().await;
        info!("stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_file_parses_to_the_defaults() {
        let parsed = parse_config(DEFAULT_CONFIG, "default").unwrap().core;
        let defaults = CoreConfig::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }

    #[test]
    fn default_rules_table_parses_to_the_defaults() {
        let parsed = parse_config(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(
            format!("{:?}", parsed.rules),
            format!("{:?}", RulesConfig::default())
        );
        assert!(parsed.sinks.is_empty());
    }

    #[test]
    fn sink_tables_are_parsed_and_errors_name_the_sink() {
        let c = parse_config(
            "[rules]\ndir = \"r\"\n[sink.alerts]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/a\"\n",
            "s.toml",
        )
        .unwrap();
        assert!(c.sinks.contains_key("alerts"));
        let err = parse_config(
            "[sink.alerts]\nkind = \"webhook\"\nurl = \"http://x\"\nretries = 3\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("s.toml") && err.contains("sink.alerts") && err.contains("retries"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse_config("[mqtt]\nmax_inflite = 3\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.toml") && err.contains("max_inflite"),
            "{err}"
        );
    }

    #[test]
    fn plugin_tables_are_parsed_apart_from_the_core() {
        let c = parse_config(
            "plugins_dir = \"plugins\"\n[[plugin]]\npath = \"a.wasm\"\non_error = \"ignore\"\nconfig = { secret = \"s\" }\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0].config["secret"], "s");
        assert_eq!(c.plugins_dir.as_deref(), Some(Path::new("plugins")));
        let err = parse_config("[[plugin]]\npath = \"a.wasm\"\ntimeout = 3\n", "p.toml")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.toml") && err.contains("timeout"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let err = parse_config("[mqtt]\nmax_packet_size = 2\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.toml") && err.contains("max_packet_size"),
            "{err}"
        );
        let err = parse_config(
            "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:1\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml") && err.contains("cert"), "{err}");
        let err = parse_config(
            "[[listener]]\nkind = \"udp\"\nbind = \"0.0.0.0:1\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml") && err.contains("udp"), "{err}");
    }
}
