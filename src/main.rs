//! The `switchyard` binary: command line, configuration loading, logging, start-up and graceful
//! shut-down of the broker.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_core::{CoreConfig, Server};
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

fn load_config(path: &Path) -> Result<CoreConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_config(&text, &path.display().to_string())
}

fn parse_config(text: &str, name: &str) -> Result<CoreConfig> {
    let config: CoreConfig = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => bail!("{name}: {e}"),
    };
    config.validate(name)?;
    Ok(config)
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
        None => CoreConfig::default(),
    };
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
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
        info!("stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_file_parses_to_the_defaults() {
        let parsed = parse_config(DEFAULT_CONFIG, "default").unwrap();
        let defaults = CoreConfig::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap()
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
