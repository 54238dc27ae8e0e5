//! Interop with the clients users already run: Debian's `mosquitto_pub`/`mosquitto_sub` and
//! Python paho-mqtt 2.x. `scripts/test` installs both.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn require(program: &str, probe: &[&str], how: &str) {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{program} is not installed; run scripts/test (or {how})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_and_subscribe_v311_and_v5() {
    require(
        "mosquitto_pub",
        &["--help"],
        "apt-get install mosquitto-clients",
    );
    let server = start(test_config()).await;
    let port = tcp_addr(&server).port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let sub = tokio::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "mq/#",
                "-q",
                "2",
                "-C",
                "3",
                "-v",
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_until("mosquitto_sub subscribed", || {
            server.broker.subscription_count() == 1
        })
        .await;
        for qos in ["0", "1", "2"] {
            let st = tokio::process::Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-t",
                    &format!("mq/{qos}"),
                    "-q",
                    qos,
                    "-m",
                    &format!("m{qos}"),
                ])
                .status()
                .await
                .unwrap();
            assert!(st.success());
        }
        let out = tokio::time::timeout(WAIT, sub.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec!["mq/0 m0", "mq/1 m1", "mq/2 m2"],
            "{version}"
        );
        // The v3 subscriber's clean session ended; wait until it is gone before the next round.
        wait_until("mosquitto_sub's session ended", || {
            server.broker.subscription_count() == 0
        })
        .await;
    }
    // Retained message set with mosquitto_pub, read back with mosquitto_sub.
    let st = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "mq/retained",
            "-r",
            "-q",
            "1",
            "-m",
            "kept",
        ])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "mq/retained",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_python_clients_v311_and_v5() {
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python3 with paho-mqtt 2.x is missing; run scripts/test (or pip install 'paho-mqtt>=2,<3')");
    let server = start(test_config()).await;
    let port = tcp_addr(&server).port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_check.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args([script, "127.0.0.1", &port])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "paho check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("paho interop OK"));
}
