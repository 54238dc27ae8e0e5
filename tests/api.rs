//! The HTTP API end to end: a real broker, real MQTT clients, a real HTTP client.
//! Logins and CSRF are in tests/api_auth.rs, rules/sinks/plugins in tests/api_extensions.rs.

mod common;
use common::api_env::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use switchyard_core::protocol::{self, ProtocolVersion};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_filtered_paged_shown_and_kicked() {
    let env = api_env().await;
    let tcp = tcp_addr(&env.server);
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut c = v4::connect(v4::options(tcp, &format!("api-c{i}"))).await;
        c.subscribe(&format!("api/{i}/#"), v4::QoS::AtLeastOnce)
            .await;
        subs.push(c);
    }
    // A v5 client on a raw socket, to see the DISCONNECT the kick sends.
    let mut victim = Raw::connect(tcp).await;
    victim.handshake(ProtocolVersion::V5, "api-victim").await;

    let all = env.get("/clients").await;
    assert_eq!(all["total"], 4, "{all}");
    let page = env.get("/clients?limit=2&page=2").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        page["data"][0]["clientid"], "api-c2",
        "sorted by id: {page}"
    );
    let one = env.get("/clients?clientid=victim").await;
    assert_eq!(one["total"], 1);
    assert_eq!(one["data"][0]["protocol"], "5.0");
    assert_eq!(env.get("/clients?ip=127.").await["total"], 4);
    assert_eq!(env.get("/clients?ip=10.").await["total"], 0);
    assert_eq!(env.get("/clients?listener=tcp:").await["total"], 4);
    assert_eq!(env.get("/clients?listener=ws:").await["total"], 0);

    let detail = env.get("/clients/api-c1").await;
    assert_eq!(detail["subscriptions"][0]["filter"], "api/1/#");
    assert_eq!(detail["subscriptions"][0]["qos"], 1);
    assert!(detail["listener"].as_str().unwrap().starts_with("tcp:"));
    assert!(detail["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(detail["keep_alive"], 30);
    assert!(detail["connected_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(detail["bytes_in"].as_u64().unwrap() > 0, "{detail}");
    let (status, _) = env.call(Method::GET, "/clients/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Traffic shows on the client's counters.
    let p = v4::connect(v4::options(tcp, "api-pub")).await;
    p.client
        .publish("api/1/x", v4::QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    subs[1].next_publish().await;
    let detail = env.get("/clients/api-c1").await;
    assert_eq!(detail["messages_out"], 1, "{detail}");
    assert_eq!(env.get("/clients/api-pub").await["messages_in"], 1);

    let (status, body) = env.call(Method::DELETE, "/clients/api-victim", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let disconnect = victim
        .expect_close()
        .await
        .expect("a DISCONNECT before the close");
    assert_eq!(disconnect.code, protocol::ReasonCode::ADMINISTRATIVE_ACTION);
    wait_until("the kicked client is gone", || {
        env.server.broker().live.get("api-victim").is_none()
    })
    .await;
    let (status, _) = env.call(Method::DELETE, "/clients/api-victim", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_online_and_offline_and_discarding_one() {
    let env = api_env().await;
    let tcp = tcp_addr(&env.server);
    let mut opts = v4::options(tcp, "api-persistent");
    opts.set_clean_session(false);
    let mut c = v4::connect(opts).await;
    c.subscribe("keep/#", v4::QoS::AtLeastOnce).await;
    let _online = v4::connect(v4::options(tcp, "api-online")).await;
    c.kill().await;
    wait_until("the persistent session is offline", || {
        env.server
            .broker()
            .session("api-persistent")
            .is_some_and(|s| !s.is_connected())
    })
    .await;
    // A message queued for the offline session shows as its queue depth.
    let p = v4::connect(v4::options(tcp, "api-pub2")).await;
    p.client
        .publish("keep/1", v4::QoS::AtLeastOnce, false, "q")
        .await
        .unwrap();
    wait_until("the message is queued", || {
        env.server
            .broker()
            .session("api-persistent")
            .is_some_and(|s| s.queued() == 1)
    })
    .await;

    let offline = env.get("/sessions?state=offline").await;
    assert_eq!(offline["total"], 1, "{offline}");
    assert_eq!(offline["data"][0]["client_id"], "api-persistent");
    assert_eq!(offline["data"][0]["queued"], 1);
    assert_eq!(offline["data"][0]["subscriptions"][0]["filter"], "keep/#");
    let online = env.get("/sessions?state=online").await;
    assert!(online["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["connected"] == true));
    let subs = env.get("/subscriptions?filter=keep/%23").await;
    assert_eq!(subs["total"], 1);
    assert_eq!(subs["data"][0]["online"], false);
    let (status, _) = env.call(Method::GET, "/sessions?state=asleep", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = env.call(Method::DELETE, "/sessions/api-online", None).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an online session is not discarded"
    );
    let (status, body) = env
        .call(Method::DELETE, "/sessions/api-persistent", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(env.server.broker().session("api-persistent").is_none());
    let (status, _) = env
        .call(Method::GET, "/sessions/api-persistent", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Resuming now finds no session.
    let mut opts = v4::options(tcp, "api-persistent");
    opts.set_clean_session(false);
    let _back = v4::connect(opts).await;
    let fresh = env.get("/sessions/api-persistent").await;
    assert_eq!(fresh["subscriptions"], json!([]), "a new session: {fresh}");
    assert_eq!(fresh["queued"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_with_properties_and_the_retained_store() {
    let env = api_env().await;
    let tcp = tcp_addr(&env.server);
    let mut sub = v5::connect(v5::options(tcp, "api-v5-sub")).await;
    sub.subscribe("ops/#", v5::QoS::AtLeastOnce).await;

    let (status, body) = env
        .call(
            Method::POST,
            "/publish",
            Some(json!({
                "topic": "ops/cmd", "payload": "{\"go\":1}", "qos": 1, "retain": true,
                "properties": {
                    "content_type": "application/json", "response_topic": "ops/reply",
                    "correlation_data": "AQID", "user_properties": [["who", "ops"]],
                    "message_expiry_interval": 600,
                },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queued"], 1);
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"{\"go\":1}");
    let props = got.properties.expect("v5 properties travel");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("ops/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(props.user_properties, vec![("who".into(), "ops".into())]);

    for (body, why) in [
        (json!({"topic": "ops/+"}), "wildcard topic"),
        (json!({"topic": "$SYS/x"}), "broker topic"),
        (json!({"topic": "ops/x", "qos": 3}), "qos"),
        (
            json!({"topic": "ops/x", "encoding": "base64", "payload": "!!"}),
            "base64",
        ),
        (json!({"topic": "ops/x", "surprise": 1}), "unknown field"),
    ] {
        let (status, answer) = env.call(Method::POST, "/publish", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {answer}");
        assert!(answer["error"].is_string());
    }
    env.call(
        Method::POST,
        "/publish",
        Some(json!({"topic": "ops/bin", "payload": "AP8=", "encoding": "base64", "retain": true})),
    )
    .await;

    let list = env.get("/retained?filter=ops/%23").await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["data"][0]["topic"], "ops/bin");
    assert_eq!(
        list["data"][0]["payload"],
        serde_json::Value::Null,
        "binary"
    );
    assert_eq!(list["data"][0]["payload_base64"], "AP8=");
    let one = env.get("/retained/message?topic=ops/cmd").await;
    assert_eq!(one["payload"], "{\"go\":1}");
    let topics = env.get("/topics").await;
    assert_eq!(
        topics["data"],
        json!([{"filter": "ops/#", "subscribers": 1}])
    );
    assert_eq!(topics["total"], 1);
    assert_eq!(env.get("/topics?page=2").await["data"], json!([]));

    let (status, _) = env
        .call(Method::DELETE, "/retained/message?topic=ops/cmd", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = env
        .call(Method::GET, "/retained/message?topic=ops/cmd", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env
        .call(Method::DELETE, "/retained/message?topic=ops/cmd", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A new subscriber gets only what is still retained.
    let mut late = v5::connect(v5::options(tcp, "api-late")).await;
    late.subscribe("ops/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(late.next_publish().await.topic, "ops/bin");
    late.assert_no_publish(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_through_the_api_kick_refuse_and_lift() {
    let env = api_env().await;
    let tcp = tcp_addr(&env.server);
    let mut troll = v4::connect(v4::options(tcp, "api-troll")).await;
    let (status, body) = env
        .call(
            Method::POST,
            "/bans",
            Some(json!({"kind": "clientid", "value": "api-troll", "duration_s": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kicked"], json!(["api-troll"]));
    troll.expect_closed().await;
    let refused = v4::connect_any(v4::options(tcp, "api-troll")).await;
    assert!(refused.is_err(), "a banned client id is refused");
    let bans = env.get("/bans").await;
    let ban = &bans["data"][0];
    assert_eq!(ban["source"], "api");
    assert_eq!(ban["kind"], "clientid");
    assert!(ban["expires_in_s"].as_u64().unwrap() > 590);

    let (status, _) = env
        .call(
            Method::POST,
            "/bans",
            Some(json!({"kind": "ip", "value": "not-an-ip"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = env
        .call(Method::DELETE, "/bans/clientid/api-troll", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    v4::connect(v4::options(tcp, "api-troll")).await;
    let (status, _) = env
        .call(Method::DELETE, "/bans/clientid/api-troll", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_bans_outlive_a_restart_and_so_does_lifting_one() {
    use common::process::Proc;
    let folder = tempfile::tempdir().unwrap();
    let users = folder.path().join("users.txt");
    switchyard_core::auth::password::set_password(&users, USER, PASSWORD).unwrap();
    // The binary, stopped with SIGTERM and started again on the same folders.
    let config = "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                  [http]\nbind = \"127.0.0.1:0\"\npassword_file = \"users.txt\"\n\
                  [persistence]\ndir = \"data\"\nmode = \"sync\"\n";
    let http = reqwest::Client::new();
    let base = |p: &Proc| format!("http://{}", p.http.expect("http on"));
    let bans_of = |p: &Proc| {
        let (http, base) = (http.clone(), base(p));
        async move {
            let (status, body) = call_api(&http, &base, Method::GET, "/bans", None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"].as_array().cloned().unwrap_or_default()
        }
    };

    let broker = Proc::start(folder.path(), config);
    for ban in [
        json!({"kind": "clientid", "value": "kept-out"}),
        json!({"kind": "username", "value": "mallory", "duration_s": 3600}),
        json!({"kind": "ip", "value": "192.0.2.9", "duration_s": 3600}),
    ] {
        let (status, body) =
            call_api(&http, &base(&broker), Method::POST, "/bans", Some(ban)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    broker.terminate();

    let broker = Proc::start(folder.path(), config);
    let bans = bans_of(&broker).await;
    assert_eq!(bans.len(), 3, "{bans:?}");
    assert!(bans.iter().all(|b| b["source"] == "api"), "{bans:?}");
    let forever = bans.iter().find(|b| b["kind"] == "clientid").unwrap();
    assert!(forever["expires_in_s"].is_null(), "{forever}");
    let mallory = bans.iter().find(|b| b["kind"] == "username").unwrap();
    let left = mallory["expires_in_s"].as_u64().unwrap();
    assert!(left > 3500 && left <= 3600, "expiry kept: {mallory}");
    let refused = v4::connect_any(v4::options(broker.addr, "kept-out")).await;
    assert!(refused.is_err(), "the ban came back with the broker");

    let (status, _) = call_api(
        &http,
        &base(&broker),
        Method::DELETE,
        "/bans/clientid/kept-out",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    broker.terminate();

    let broker = Proc::start(folder.path(), config);
    let bans = bans_of(&broker).await;
    assert_eq!(bans.len(), 2, "{bans:?}");
    assert!(
        bans.iter().all(|b| b["kind"] != "clientid"),
        "the lifted ban stays lifted: {bans:?}"
    );
    v4::connect(v4::options(broker.addr, "kept-out")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_history_listeners_and_a_redacted_configuration() {
    let env = api_env_with(
        &[],
        &[(
            "pg",
            json!({"kind": "webhook", "url": "http://ops:hunter2@127.0.0.1:9/x", "headers": {"authorization_token": "s3cret"}}),
        )],
        |c| {
            c.core.http.token = "tok-secret".into();
            c.file_tables = toml::from_str(
                "[sink.pg]\nkind = \"webhook\"\nurl = \"http://ops:hunter2@127.0.0.1:9/x\"\n",
            )
            .unwrap();
        },
    )
    .await;
    let tcp = tcp_addr(&env.server);
    let _c = v4::connect(v4::options(tcp, "api-m")).await;
    let m = env.get("/metrics").await;
    assert_eq!(m["counters"]["clients_connected"], 1, "{m}");
    assert_eq!(m["health"]["status"], "ok");
    assert!(m["limit_hits"].is_object());
    // The history takes a sample a second.
    let mut history = env.get("/metrics/history").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while history["data"].as_array().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no samples: {history}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        history = env.get("/metrics/history?seconds=5").await;
    }
    assert_eq!(
        history["data"].as_array().unwrap().last().unwrap()["clients"],
        1
    );

    let listeners = env.get("/listeners").await;
    let kinds: Vec<&str> = listeners["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tcp", "ws"]);
    assert_eq!(listeners["data"][1]["path"], "/mqtt");

    let config = env.get("/config").await;
    let text = config.to_string();
    assert!(
        !text.contains("tok-secret") && !text.contains("hunter2"),
        "{text}"
    );
    assert_eq!(config["http"]["token"], "<redacted>");
    assert_eq!(
        config["sink"]["pg"]["url"],
        "http://ops:<redacted>@127.0.0.1:9/x"
    );
    assert_eq!(config["mqtt"]["max_inflight"], 32, "defaults are filled in");
}
