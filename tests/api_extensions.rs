//! Rules, sinks and plugins through the HTTP API: rule files saved (a broken one refused with
//! its position while the old rules keep running), tested, disabled; sink state; a plugin
//! reloaded and its breaker reset.

mod common;
use common::api_env::*;
use common::receiver::start_receiver;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use switchyard_core::protocol::ReasonCode;
use switchyard_plugins::PluginSettings;

const FORWARD: &str = r#"
rule("forward")
    .from(["in/#"])
    .when(|m| m.json.v > 10)
    .select(|m| #{ v: m.json.v, device: m.level(1) })
    .to(sink("hook"));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_are_checked_saved_tested_disabled_and_deleted() {
    let receiver = start_receiver(None).await;
    let url = format!("http://{}/hook", receiver.addr);
    let env = api_env_with(
        &[],
        &[(
            "hook",
            json!({"kind": "webhook", "url": url, "linger_ms": 0}),
        )],
        |_| {},
    )
    .await;
    let tcp = tcp_addr(&env.server);
    let publisher = v4::connect(v4::options(tcp, "rules-pub")).await;
    let send = |v: u32| {
        let c = publisher.client.clone();
        async move {
            c.publish(
                "in/d1",
                v4::QoS::AtLeastOnce,
                false,
                format!("{{\"v\":{v}}}"),
            )
            .await
            .unwrap();
        }
    };

    let (status, saved) = env
        .call(
            Method::PUT,
            "/rules/files/forward.rhai",
            Some(json!({ "source": FORWARD })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["rules"], 1);
    send(11).await;
    wait_until("the saved rule forwards", || {
        receiver.recorded.bodies().len() == 1
    })
    .await;
    assert_eq!(receiver.recorded.bodies()[0]["v"], 11);

    // A syntax error: refused with file:line:col, nothing written, the old rule runs on.
    let broken = FORWARD.replace(".from([\"in/#\"])", ".from([\"in/#\"]");
    let (status, refused) = env
        .call(
            Method::PUT,
            "/rules/files/forward.rhai",
            Some(json!({ "source": broken })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let detail = refused["details"][0].as_str().unwrap();
    assert!(
        detail.contains("forward.rhai:6:"),
        "position given: {detail}"
    );
    let on_disk = std::fs::read_to_string(env.rules_dir().join("forward.rhai")).unwrap();
    assert_eq!(on_disk, FORWARD, "the refused text was not written");
    send(12).await;
    wait_until("the old rule still forwards", || {
        receiver.recorded.bodies().len() == 2
    })
    .await;
    // A new file that clashes with a loaded rule's name is refused too.
    let (status, clash) = env
        .call(
            Method::PUT,
            "/rules/files/other.rhai",
            Some(json!({ "source": FORWARD })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(clash["details"][0]
        .as_str()
        .unwrap()
        .contains("already defined"));
    assert!(!env.rules_dir().join("other.rhai").exists());
    for bad in ["../x.rhai", ".hidden.rhai", "x.txt"] {
        let (status, _) = env
            .call(
                Method::PUT,
                &format!("/rules/files/{}", bad.replace('/', "%2F")),
                Some(json!({ "source": FORWARD })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Test against samples: nothing reaches the sink.
    let sent_before = receiver.recorded.bodies().len();
    let test = |payload: &str| json!({"file": "forward.rhai", "message": {"topic": "in/d9", "payload": payload}});
    let (_, pass) = env
        .call(Method::POST, "/rules/test", Some(test("{\"v\":40}")))
        .await;
    assert_eq!(pass["matched"], true, "{pass}");
    assert_eq!(pass["when"], true);
    assert_eq!(pass["outputs"], json!([{"v": 40, "device": "d9"}]));
    assert_eq!(pass["sinks"], json!(["hook"]));
    let (_, fail) = env
        .call(Method::POST, "/rules/test", Some(test("{\"v\":1}")))
        .await;
    assert_eq!(fail["when"], false);
    assert_eq!(fail["outputs"], json!([]));
    let (_, error) = env
        .call(Method::POST, "/rules/test", Some(test("not json")))
        .await;
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("forward.rhai:4:"),
        "evaluation error with its place: {error}"
    );
    let (status, unsaved) = env
        .call(
            Method::POST,
            "/rules/test",
            Some(
                json!({"source": "rule(\"x\").from([\"a\"]).to(sink(\"nope\"));",
                        "message": {"topic": "a"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{unsaved}");
    assert!(unsaved["details"][0].as_str().unwrap().contains("nope"));
    assert_eq!(
        receiver.recorded.bodies().len(),
        sent_before,
        "tests send nothing"
    );

    // Disabled: listed, matches nothing; enabled again: forwards again.
    let (status, _) = env
        .call(
            Method::PUT,
            "/rules/enabled/forward",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rules = env.get("/rules").await;
    assert_eq!(rules["rules"][0]["enabled"], false);
    assert_eq!(rules["files"], json!(["forward.rhai"]));
    let matched = rules["rules"][0]["matched"].as_u64().unwrap();
    send(13).await;
    // A marker proves the publish above was routed (one publisher's messages keep order).
    let mut marker = v4::connect(v4::options(tcp, "rules-marker")).await;
    marker.subscribe("in/#", v4::QoS::AtLeastOnce).await;
    send(14).await;
    assert_eq!(
        String::from_utf8_lossy(&marker.next_publish().await.payload),
        "{\"v\":14}"
    );
    assert_eq!(
        env.get("/rules").await["rules"][0]["matched"].as_u64(),
        Some(matched)
    );
    let (status, _) = env
        .call(
            Method::PUT,
            "/rules/enabled/forward",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send(15).await;
    wait_until("enabled again", || {
        receiver.recorded.bodies().iter().any(|b| b["v"] == 15)
    })
    .await;
    assert!(!receiver.recorded.bodies().iter().any(|b| b["v"] == 13));
    let (status, _) = env
        .call(
            Method::PUT,
            "/rules/enabled/nope",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, source) = env
        .call(Method::GET, "/rules/files/forward.rhai", None)
        .await;
    assert_eq!(
        (status, source["source"].as_str()),
        (StatusCode::OK, Some(FORWARD))
    );
    let (status, deleted) = env
        .call(Method::DELETE, "/rules/files/forward.rhai", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["rules"], 0);
    assert_eq!(env.get("/rules").await["rules"], json!([]));
    let (status, _) = env
        .call(Method::GET, "/rules/files/forward.rhai", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, reloaded) = env.call(Method::POST, "/rules/reload", None).await;
    assert_eq!(
        (status, reloaded["rules"].as_u64()),
        (StatusCode::OK, Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_shows_retrying_with_its_error_then_healthy() {
    // A port nobody listens on yet: the webhook fails and retries.
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let env = api_env_with(
        &[("forward.rhai", FORWARD)],
        &[(
            "hook",
            json!({"kind": "webhook", "url": format!("http://{addr}/h"), "linger_ms": 0,
                   "retry_initial_ms": 50, "retry_max_ms": 100}),
        )],
        |_| {},
    )
    .await;
    let publisher = v4::connect(v4::options(tcp_addr(&env.server), "sink-pub")).await;
    publisher
        .client
        .publish("in/d1", v4::QoS::AtLeastOnce, false, "{\"v\":99}")
        .await
        .unwrap();
    let mut sinks = env.get("/sinks").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while sinks["data"][0]["state"] != "retrying" {
        assert!(tokio::time::Instant::now() < deadline, "{sinks}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        sinks = env.get("/sinks").await;
    }
    let s = &sinks["data"][0];
    assert!(s["last_error"].as_str().is_some(), "{s}");
    assert_eq!(s["last_success_ms"], serde_json::Value::Null);
    assert_eq!(s["buffer"], "memory");
    assert!(s["buffered"].as_u64().unwrap() >= 1);

    let receiver = start_receiver(Some(addr)).await;
    wait_until("delivered once the receiver is up", || {
        receiver.recorded.count() == 1
    })
    .await;
    let mut sinks = env.get("/sinks").await;
    while sinks["data"][0]["state"] != "healthy" {
        assert!(tokio::time::Instant::now() < deadline + WAIT, "{sinks}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        sinks = env.get("/sinks").await;
    }
    assert!(sinks["data"][0]["last_success_ms"].as_u64().is_some());
    assert_eq!(sinks["data"][0]["sent"], 1);
}

async fn connack(addr: std::net::SocketAddr, id: &str) -> ReasonCode {
    let mut raw = Raw::connect(addr).await;
    raw.handshake(switchyard_core::protocol::ProtocolVersion::V5, id)
        .await
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_reloaded_and_its_breaker_reset() {
    let mut plugin = PluginSettings::for_path(plugin_path("misbehave"));
    plugin.config = json!({"mode": "fickle"});
    plugin.breaker_failures = 2;
    plugin.breaker_backoff_ms = 600_000;
    let env = api_env_with(&[], &[], |c| c.plugins = vec![plugin]).await;
    let tcp = tcp_addr(&env.server);

    let listed = env.get("/plugins").await;
    let p = &listed["plugins"][0];
    assert_eq!(p["version"], 1, "{listed}");
    assert_eq!(p["breaker"], "closed");
    let name = p["name"].as_str().unwrap().to_string();

    for i in 0..2 {
        assert_eq!(
            connack(tcp, &format!("boom-{i}")).await,
            ReasonCode::NOT_AUTHORIZED
        );
    }
    assert_eq!(env.get("/plugins").await["plugins"][0]["breaker"], "open");
    assert_eq!(
        connack(tcp, "good-1").await,
        ReasonCode::NOT_AUTHORIZED,
        "open"
    );
    let (status, _) = env
        .call(
            Method::POST,
            &format!("/plugins/{name}/reset-breaker"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.get("/plugins").await["plugins"][0]["breaker"], "closed");
    assert_eq!(connack(tcp, "good-2").await, ReasonCode::SUCCESS);

    let (status, reloaded) = env
        .call(Method::POST, &format!("/plugins/{name}/reload"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reloaded}");
    assert_eq!(reloaded["version"], 2);
    assert_eq!(env.get("/plugins").await["plugins"][0]["version"], 2);
    assert_eq!(
        connack(tcp, "good-3").await,
        ReasonCode::SUCCESS,
        "the new instance serves"
    );
    for path in ["/plugins/nope/reload", "/plugins/nope/reset-breaker"] {
        let (status, _) = env.call(Method::POST, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}
