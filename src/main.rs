//! The `switchyard` binary: command line, configuration loading, logging, start-up and graceful
//! shut-down of the broker.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;
use switchyard::{Config, Running, Switchyard};
use switchyard_core::CoreConfig;
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

/// Installs the SIGTERM and SIGINT handlers now and returns what waits for either. Installed
/// before the listeners are announced: a signal sent as soon as they are (a supervisor, a test)
/// would otherwise meet the default action and kill the process without a graceful shutdown.
#[cfg(unix)]
fn stop_signals() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

#[cfg(not(unix))]
fn stop_signals() -> Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    })
}

/// SIGHUP re-reads the password file and ACL rules (from the config file again, when there is
/// one), reloads plugins whose files changed and the rule files, and closes every plugin breaker
/// (acknowledging plugins removed for good). The watchers reload plugins and
/// rules on their own too; SIGHUP is for auth files and for setups where file events do not
/// arrive (some network file systems). Other settings need a restart.
fn reload_on_sighup(running: &Running, config_path: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let broker = running.broker().clone();
        let plugins = running.plugins.clone();
        let rules = running.rules.clone();
        // Installed before the listeners are announced: a SIGHUP that arrives earlier than the
        // handler would otherwise terminate the process.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading auth files, plugins and rules; closing plugin breakers");
                let core = match &config_path {
                    Some(path) => match Config::load(path) {
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
                // An operator's signal that the cause is dealt with: plugins get another try.
                plugins.reset_breakers();
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
            let config = Config::load(&file)?;
            // Plugins are compiled and initialised and rule files compiled, as at start-up.
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let checked = runtime.block_on(switchyard::check(&config))?;
            println!(
                "{}: ok ({} plugins, {} rules)",
                file.display(),
                checked.plugins,
                checked.rules
            );
            return Ok(());
        }
        None => {}
    }
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Plugins and rules are loaded before the first port opens: no client is ever
        // admitted by a broker whose auth plugins are not there yet.
        let http = &config.core.http;
        let no_http_users = http.password_file.is_empty() && http.token.is_empty();
        let http_scheme = if http.cert.is_some() { "https" } else { "http" };
        let running = Switchyard::builder(config).start().await?;
        reload_on_sighup(&running, cli.config.clone());
        let stop = stop_signals()?;
        let server = &running.server;
        for (kind, addr) in &server.listeners {
            println!("switchyard listening: {} {}", kind.as_str(), addr);
        }
        if let Some(addr) = server.http_addr {
            println!("switchyard listening: {http_scheme} {addr} (dashboard /, API /api/v1, /health, /metrics)");
            if no_http_users {
                println!("switchyard: no dashboard users yet: `switchyard passwd users.txt admin`, then [http] password_file = \"users.txt\"");
            }
        }
        info!(version = switchyard_core::sys::VERSION, "broker started");
        let signal = stop.await;
        info!(signal, "shutting down");
        // Listeners first, then rules: every accepted message has reached the rules by then.
        running.shutdown(Duration::from_secs(5)).await;
        info!("stopped");
        Ok(())
    })
}
