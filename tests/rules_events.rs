//! The audit examples (examples/rules/audit) against a broker with a password file and an ACL:
//! EMQX's connack, authentication, authorization, connection and drop events, several sources
//! in one rule, the message fields (`id`, `flags`, `pub_props`, `publish_received_at`, `node`)
//! and the payload helpers (subbits, gunzip, hashes, UUIDs, time parsing).

mod common;
use common::rules_env::*;
use common::*;
use std::io::Write as _;
use std::path::Path;
use switchyard_core::auth::set_password;
use switchyard_core::config::{AclAction, AclRule, Permission};

fn rows(db: &Path, kind: &str) -> Vec<(Option<String>, serde_json::Value)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT clientid, data FROM audit WHERE kind = ?1 ORDER BY rowid")
        .unwrap();
    stmt.query_map([kind], |r| {
        let data: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&data).unwrap()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_examples_record_events_fields_and_decoded_payloads() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples/rules/audit");
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("audit.db");
    let sinks = example_sinks(&examples, &db);
    let pw = data.path().join("passwd");
    for user in ["dev", "meter", "gw"] {
        set_password(&pw, user, "secret").unwrap();
    }
    let mut config = test_config();
    config.mqtt.allow_anonymous = false;
    config.auth.password_file = pw;
    config.acl = vec![AclRule {
        permission: Permission::Deny,
        action: AclAction::Publish,
        topic: "secret/#".into(),
        user: None,
        client: None,
    }];
    let server = switchyard::Switchyard::core(config)
        .rules(rules_config(&examples), sinks)
        .watch_files(false)
        .start()
        .await
        .unwrap();
    let rules = server.rules.clone();
    assert_eq!(rules.last_errors(), Vec::<String>::new());
    let addr = tcp_addr(&server);
    let login = |id: &str, user: &str, password: &str| {
        let mut o = v4::options(addr, id);
        o.set_credentials(user, password);
        o
    };

    // A refused login, then devices that get in.
    assert!(v4::connect_any(login("intruder", "dev", "guess"))
        .await
        .is_err());
    let dev = v4::connect(login("dev1", "dev", "secret")).await;
    publish(&dev, "devices/dev1/status", "online").await;
    publish(&dev, "secret/plans", "x").await;
    publish(&dev, "orders/42", "nobody listens").await;

    let meter = v4::connect(login("meter7", "meter", "secret")).await;
    let mut frame = Vec::new();
    frame.extend_from_slice(&2301u16.to_be_bytes()); // 230.1 V
    frame.extend_from_slice(&(-52i16).to_be_bytes()); // -5.2 °C
    frame.extend_from_slice(&1250.5f32.to_be_bytes()); // W
    publish(&meter, "meters/m7/frame", frame.clone()).await;

    let mut o = v5::options(addr, "gw1");
    o.set_credentials("gw", "secret");
    let gw = v5::connect(o).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        br#"{"at": "2026-12-06T10:00:00.250Z", "day": "2026-12-06", "readings": [1, 2, 3]}"#,
    )
    .unwrap();
    let gz = gz.finish().unwrap();
    let props = v5::PublishProperties {
        content_type: Some("application/json+gzip".into()),
        user_properties: vec![("site".into(), "north".into())],
        ..Default::default()
    };
    gw.client
        .publish_with_properties(
            "gateways/gw1/gz",
            v5::QoS::AtLeastOnce,
            false,
            gz.clone(),
            props,
        )
        .await
        .unwrap();
    dev.client.disconnect().await.unwrap();

    wait_until("every audit row written", || {
        let c = &rules.sink("audit").unwrap().counters;
        switchyard_rules::sink::SinkCounters::get(&c.sent) >= 17
    })
    .await;
    wait_until("the disconnect recorded", || {
        !rows(&db, "client.disconnected").is_empty()
    })
    .await;

    // client.connack and client.check_authn_complete, the refusal included.
    let connacks = rows(&db, "client.connack");
    assert!(connacks
        .iter()
        .any(|(id, d)| id.as_deref() == Some("intruder")
            && d["reason_code"] == "bad_user_name_or_password"
            && d["username"] == "dev"));
    assert!(connacks
        .iter()
        .any(|(id, d)| id.as_deref() == Some("dev1") && d["reason_code"] == "success"));
    let authn = rows(&db, "client.check_authn_complete");
    assert!(authn.iter().any(|(id, d)| id.as_deref() == Some("intruder")
        && d["reason_code"] == "bad_user_name_or_password"));
    assert!(authn
        .iter()
        .any(|(id, d)| id.as_deref() == Some("gw1") && d["peerhost"] == "127.0.0.1"));

    // client.check_authz_complete: only the denial passes the rule's `when`.
    let denied = rows(&db, "client.check_authz_complete");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].1["topic"], "secret/plans");
    assert_eq!(denied[0].1["action"], "publish");
    assert_eq!(denied[0].1["result"], "deny");

    // Several sources in one rule: messages and connection events.
    let connected = rows(&db, "client.connected");
    let dev1 = connected
        .iter()
        .find(|(id, _)| id.as_deref() == Some("dev1"))
        .expect("dev1 connected");
    assert_eq!(dev1.1["keepalive"], 30);
    assert_eq!(dev1.1["clean_start"], true);
    assert_eq!(dev1.1["proto_ver"], 4);
    assert!(dev1.1["connected_at"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(connected
        .iter()
        .any(|(id, d)| id.as_deref() == Some("gw1") && d["proto_ver"] == 5));
    let status = rows(&db, "status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].1["status"], "online");
    assert_eq!(status[0].1["retain"], false);
    assert_eq!(status[0].1["id"].as_str().unwrap().len(), 32);
    assert!(status[0].1["node"]
        .as_str()
        .unwrap()
        .starts_with("switchyard@"));
    assert!(status[0].1["received_at"].as_i64().unwrap() > 1_700_000_000_000);
    let gone = rows(&db, "client.disconnected");
    assert_eq!(gone[0].1["reason"], "normal");

    // message.dropped with its reason.
    let dropped = rows(&db, "message.dropped");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0].0.as_deref(), Some("dev1"));
    assert_eq!(dropped[0].1["reason"], "no_subscribers");
    assert_eq!(dropped[0].1["topic"], "orders/42");

    // subbits, sha256, uuid_v4.
    let meter = rows(&db, "meter");
    let m = &meter[0].1;
    assert_eq!(m["volts"], 230.1);
    assert_eq!(m["celsius"], -5.2);
    assert_eq!(m["watts"], 1250.5);
    use sha2::Digest as _;
    assert_eq!(m["digest"], hex_of(&sha2::Sha256::digest(&frame)));
    assert_eq!(m["row"].as_str().unwrap().len(), 36);

    // gunzip, json_decode, parse_time, pub_props, md5.
    let batch = rows(&db, "batch");
    let b = &batch[0].1;
    assert_eq!(b["readings"], 3);
    assert_eq!(b["taken_at"], 1_796_551_200_250i64);
    assert_eq!(b["day"], 1_796_515_200_000i64);
    assert_eq!(b["content_type"], "application/json+gzip");
    assert_eq!(b["site"], "north");
    assert_eq!(b["fingerprint"].as_str().unwrap().len(), 32);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
