//! The `switchyard` binary as a child process, for tests that kill it (SIGKILL, SIGTERM) and
//! start it again on the same folders.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

pub struct Proc {
    child: Child,
    /// The MQTT/TCP listener.
    pub addr: SocketAddr,
    /// The HTTP listener (`/metrics`), when the config enables it.
    pub http: Option<SocketAddr>,
    pub log: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Proc {
    /// Writes `config` to `folder/switchyard.toml` and starts the binary on it; returns once
    /// it printed its MQTT/TCP listener (and its HTTP one, if enabled).
    pub fn start(folder: &Path, config: &str) -> Proc {
        let path = folder.join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        // Logs go to stdout, with the listener's address.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want_http = !config.contains("enabled = false");
        let (mut addr, mut http) = (None, None);
        while addr.is_none() || (want_http && http.is_none()) {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("the broker printed no listener: {:?}", log.lock()))
                .unwrap();
            if let Some(rest) = line.strip_prefix("switchyard listening: tcp ") {
                addr = Some(rest.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("switchyard listening: http ") {
                http = rest.split(' ').next().and_then(|a| a.parse().ok());
            } else {
                log.lock().push(line);
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        Proc {
            child,
            addr: addr.unwrap(),
            http,
            log,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        assert!(self.child.wait().unwrap().success());
    }

    pub fn log_contains(&self, what: &str) -> bool {
        self.log.lock().iter().any(|l| l.contains(what))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failing test shows what the broker it ran said.
        if std::thread::panicking() {
            for line in self.log.lock().iter() {
                eprintln!("[broker {}] {line}", self.child.id());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
