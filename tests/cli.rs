//! The `switchyard` binary itself: default config, config errors, `passwd`, start-up output and
//! graceful shutdown on SIGTERM.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchyard_core::protocol::{ProtocolVersion, ReasonCode};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn printed_default_config_is_valid() {
    let out = run(&["--print-default-config"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let check = run(&["check-config", path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "allow_anonymous",
        "max_packet_size",
        "max_inflight",
        "password_file",
        "acl_default",
    ] {
        assert!(text.contains(key), "documents {key}");
    }
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[mqtt]\nmax_inflight = 10\nmax_infligth = 3\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("max_infligth"),
        "{err}"
    );
    std::fs::write(&path, "[mqtt]\nmax_inflight = -1\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_inflight"),
        "{err}"
    );
    let out = run(&["--config", "/nonexistent/switchyard.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/switchyard.toml"));
}

fn send_signal(pid: &str, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

struct Broker {
    child: Child,
    addrs: Vec<(String, SocketAddr)>,
    /// Holds the config file, which SIGHUP reads again.
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(config: &str) -> Broker {
        Self::start_limited(config, None)
    }

    /// Starts the binary, optionally under `ulimit -v KB` (address-space limit).
    fn start_limited(config: &str, address_space_kb: Option<u64>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = match address_space_kb {
            None => {
                let mut c = Command::new(BIN);
                c.args(["--config", path.to_str().unwrap()]);
                c
            }
            Some(kb) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -v {kb} && exec \"$0\" --config \"$1\""),
                    BIN,
                    path.to_str().unwrap(),
                ]);
                c
            }
        };
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let expected = config.matches("[[listener]]").count();
        let mut addrs = Vec::new();
        while addrs.len() < expected {
            let line = lines.next().expect("broker printed its listeners").unwrap();
            if let Some(rest) = line.strip_prefix("switchyard listening: ") {
                let (kind, addr) = rest.split_once(' ').unwrap();
                addrs.push((kind.to_string(), addr.parse().unwrap()));
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Broker {
            child,
            addrs,
            _dir: dir,
        }
    }

    fn addr(&self, kind: &str) -> SocketAddr {
        self.addrs.iter().find(|(k, _)| k == kind).unwrap().1
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TWO_LISTENERS: &str = "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[http]\nbind = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_shuts_down_gracefully_on_sigterm() {
    let mut broker = Broker::start(TWO_LISTENERS);
    let addr = broker.addr("tcp");
    let mut sub = v4::connect(v4::options(addr, "cli-sub")).await;
    sub.subscribe("cli/#", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(addr, "cli-pub")).await;
    p.client
        .publish("cli/x", v4::QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    assert_eq!(&sub.next_publish().await.payload[..], b"hello");

    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "cli-v5").await;
    send_signal(&broker.child.id().to_string(), "TERM");
    let d = raw.expect_close().await.expect("DISCONNECT on shutdown");
    assert_eq!(d.code, ReasonCode::SERVER_SHUTTING_DOWN);
    let exit = tokio::task::spawn_blocking(move || broker.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_writes_a_hashed_user_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let mut child = Command::new(BIN)
        .args(["passwd", pw.to_str().unwrap(), "carol"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.starts_with("carol:$pbkdf2-sha512$") && !text.contains("correct horse"));

    let config = format!(
        "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n\n[mqtt]\nallow_anonymous = false\n\n[auth]\npassword_file = {:?}\n",
        pw.to_str().unwrap()
    );
    let broker = Broker::start(&config);
    let addr = broker.addr("tcp");
    let mut o = v4::options(addr, "carol");
    o.set_credentials("carol", "correct horse");
    v4::connect(o).await;
    let mut o = v4::options(addr, "carol2");
    o.set_credentials("carol", "wrong");
    assert!(v4::connect_any(o).await.is_err());

    // A user added while the broker runs is let in after SIGHUP, not before.
    let mut child = Command::new(BIN)
        .args(["passwd", pw.to_str().unwrap(), "dave"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(child.wait().unwrap().success());
    let dave = |id: &str| {
        let mut o = v4::options(addr, id);
        o.set_credentials("dave", "s3cret");
        o
    };
    assert!(v4::connect_any(dave("dave0")).await.is_err());
    let pid = broker.child.id().to_string();
    send_signal(&pid, "HUP");
    let mut attempt = 0;
    while v4::connect_any(dave(&format!("dave{}", attempt + 1)))
        .await
        .is_err()
    {
        attempt += 1;
        assert!(attempt < 100, "dave never admitted after SIGHUP");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // carol is still in.
    let mut o = v4::options(addr, "carol3");
    o.set_credentials("carol", "correct horse");
    v4::connect(o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_from_the_config_file_take_part_and_bad_ones_stop_start_up() {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plugins/acl.wasm");
    assert!(
        acl.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    let config = format!(
        "[[plugin]]\npath = {:?}\nconfig = {{ default = \"deny\", rules = [ {{ permission = \"allow\", action = \"all\", topic = \"open/#\" }} ] }}\n\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n",
        acl.to_str().unwrap()
    );
    let broker = Broker::start(&config);
    let mut c = v5::connect(v5::options(broker.addr("tcp"), "plugged")).await;
    assert_eq!(
        c.subscribe("closed/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    assert_eq!(
        c.subscribe("open/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[plugin]]\npath = \"/nonexistent/plugin.wasm\"\n\n[http]\nenabled = false\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/plugin.wasm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_still_run_where_the_instance_pool_cannot_reserve_its_address_space() {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plugins/acl.wasm");
    assert!(
        acl.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    let config = format!(
        "[[plugin]]\npath = {:?}\ninstances = 1\nconfig = {{ default = \"deny\", rules = [ {{ permission = \"allow\", action = \"all\", topic = \"open/#\" }} ] }}\n\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n",
        acl.to_str().unwrap()
    );
    // 12 GB of address space: far less than the pool's reservation, enough for one instance.
    let broker = Broker::start_limited(&config, Some(12_000_000));
    let mut c = v5::connect(v5::options(broker.addr("tcp"), "limited")).await;
    assert_eq!(
        c.subscribe("closed/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_sighup_and_sinks_flush_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let db = dir.path().join("m.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE m (topic TEXT, payload TEXT)")
        .unwrap();
    // The watcher waits ten minutes before reloading: only SIGHUP can make the rule live now.
    let config = format!(
        "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[http]\nenabled = false\n\
         [rules]\ndir = \"{}\"\ndebounce_ms = 600000\n\
         [sink.store]\nkind = \"sqlite\"\npath = \"{}\"\nlinger_ms = 200\n\
         statement = \"INSERT INTO m (topic, payload) VALUES (:topic, :payload)\"\n",
        rules.display(),
        db.display()
    );
    let mut broker = Broker::start(&config);
    let addr = broker.addr("tcp");
    std::fs::write(
        rules.join("store.rhai"),
        r#"rule("store").from(["cli/#"]).to(database("store"));"#,
    )
    .unwrap();
    let pid = broker.child.id().to_string();
    send_signal(&pid, "HUP");

    let mut probe = v4::connect(v4::options(addr, "probe")).await;
    probe.subscribe("cli/end", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(addr, "p")).await;
    let count = || -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM m", [], |r| r.get(0))
            .unwrap()
    };
    // Publish until the reloaded rule stores something.
    let mut sent = 0;
    while count() == 0 {
        assert!(sent < 1000, "the rule never became live after SIGHUP");
        p.client
            .publish("cli/x", v4::QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A burst, then SIGTERM at once: what the sink still holds is written before exit.
    for i in 0..300 {
        p.client
            .publish("cli/burst", v4::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    p.client
        .publish("cli/end", v4::QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    assert_eq!(probe.next_publish().await.topic, "cli/end");
    send_signal(&pid, "TERM");
    let exit = tokio::task::spawn_blocking(move || broker.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let burst: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM m WHERE topic = 'cli/burst'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(burst, 300, "every accepted message reached the database");
}

#[test]
fn check_config_compiles_rules_and_plugins_and_a_bad_rule_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("fwd.rhai"),
        "rule(\"fwd\").from([\"a/#\"]).to(mqtt(\"out\"));\n",
    )
    .unwrap();
    let plugin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/plugins/acl.wasm");
    assert!(
        plugin.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    let config = dir.path().join("switchyard.toml");
    let write_config = |plugin: &std::path::Path| {
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[http]\nenabled = false\n\
                 [[plugin]]\npath = \"{}\"\n[rules]\ndir = \"{}\"\n\
                 [sink.out]\nkind = \"mqtt\"\ntopic = \"copy/${{topic}}\"\n",
                plugin.display(),
                rules.display()
            ),
        )
        .unwrap();
    };
    write_config(&plugin);
    let check = run(&["check-config", config.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("1 plugins, 1 rules"), "{out}");

    // A rule file with a syntax error: check-config and the start both name file:line:col.
    let bad = rules.join("broken.rhai");
    std::fs::write(
        &bad,
        "rule(\"x\")\n    .from([\"b\"]\n    .to(mqtt(\"out\"));\n",
    )
    .unwrap();
    for args in [
        vec!["check-config", config.to_str().unwrap()],
        vec!["--config", config.to_str().unwrap()],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        let at = format!("{}:", bad.display());
        let pos = err.find(&at).map(|i| &err[i + at.len()..]).unwrap_or("");
        let mut parts = pos.splitn(3, ':');
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        };
        assert!(
            numeric(parts.next()) && numeric(parts.next()),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_file(&bad).unwrap();

    // A plugin that is not a component.
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"not wasm").unwrap();
    write_config(&fake);
    let out = run(&["check-config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fake.wasm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_closes_an_open_plugin_breaker() {
    let plugin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plugins/misbehave.wasm");
    assert!(
        plugin.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    // Open for ten minutes unless an operator says otherwise.
    let config = format!(
        "[[plugin]]\npath = {:?}\nconfig = {{ mode = \"fickle\" }}\nbreaker_failures = 2\nbreaker_backoff_ms = 600000\n\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n",
        plugin.to_str().unwrap()
    );
    let broker = Broker::start(&config);
    let addr = broker.addr("tcp");
    let code = |id: String| async move {
        Raw::connect(addr)
            .await
            .handshake(ProtocolVersion::V5, &id)
            .await
            .code
    };
    assert_eq!(code("good-0".into()).await, ReasonCode::SUCCESS);
    for i in 0..2 {
        assert_eq!(code(format!("boom-{i}")).await, ReasonCode::NOT_AUTHORIZED);
    }
    assert_eq!(
        code("good-1".into()).await,
        ReasonCode::NOT_AUTHORIZED,
        "open"
    );
    send_signal(&broker.child.id().to_string(), "HUP");
    let mut attempt = 0;
    while code(format!("good-after-{attempt}")).await != ReasonCode::SUCCESS {
        attempt += 1;
        assert!(attempt < 500, "the breaker stayed open after SIGHUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
