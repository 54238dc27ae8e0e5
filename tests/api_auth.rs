//! Who gets into the HTTP API and the dashboard: nobody without users; users by Basic or a
//! login cookie with its CSRF token; API keys stored hashed; the open endpoints stay open.

mod common;
use common::api_env::*;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn send(
    env: &ApiEnv,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = env.http.request(method, format!("{}{path}", env.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap_or(Value::Null), headers)
}

/// Only the status of a bodiless request.
async fn status_of(
    env: &ApiEnv,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    send(env, method, path, headers, None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_nothing_opens_but_health_metrics_and_the_login_page() {
    let env = api_env_with(&[], &[], |c| c.core.http.password_file.clear()).await;
    for path in ["/api/v1/clients", "/api/v1/config", "/api/v1/metrics"] {
        let (status, body, headers) = send(&env, Method::GET, path, &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("switchyard passwd"),
            "the answer says how to add a user: {body}"
        );
        assert!(headers.get("www-authenticate").is_some());
    }
    let (status, body, _) = send(
        &env,
        Method::POST,
        "/api/v1/login",
        &[],
        Some(json!({"username": "admin", "password": ""})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, auth, _) = send(&env, Method::GET, "/api/v1/auth", &[], None).await;
    assert_eq!(auth["users_configured"], false);
    assert_eq!(auth["username"], Value::Null);
    let (status, health, _) = send(&env, Method::GET, "/health", &[], None).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let metrics = env
        .http
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("switchyard_clients_connected"));
    let page = env.http.get(format!("{}/", env.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(page.text().await.unwrap().contains("/app.js"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_and_the_csrf_header() {
    let env = api_env().await;
    let status = status_of(&env, Method::GET, "/api/v1/clients", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = env
        .http
        .get(format!("{}/api/v1/clients", env.base))
        .basic_auth(USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = env.call(Method::GET, "/clients", None).await;
    assert_eq!(status, StatusCode::OK);
    // A state-changing request by Basic without the header: a cross-site form could send it.
    let forged = env
        .http
        .post(format!("{}/api/v1/publish", env.base))
        .basic_auth(USER, Some(PASSWORD))
        .json(&json!({"topic": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let (status, _) = env
        .call(Method::POST, "/publish", Some(json!({"topic": "x"})))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sets_a_strict_cookie_whose_writes_need_its_csrf_token() {
    let env = api_env().await;
    let (status, _, _) = send(
        &env,
        Method::POST,
        "/api/v1/login",
        &[],
        Some(json!({"username": USER, "password": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, login, headers) = send(
        &env,
        Method::POST,
        "/api/v1/login",
        &[],
        Some(json!({"username": USER, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let set_cookie = headers[SET_COOKIE].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = login["csrf_token"].as_str().unwrap().to_string();

    let (_, who, _) = send(
        &env,
        Method::GET,
        "/api/v1/auth",
        &[(COOKIE.as_str(), &cookie)],
        None,
    )
    .await;
    assert_eq!(who["username"], USER);
    assert_eq!(who["csrf_token"], csrf);
    let status = status_of(&env, Method::GET, "/api/v1/clients", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    let publish = Some(json!({"topic": "c/x"}));
    let (status, _, _) = send(
        &env,
        Method::POST,
        "/api/v1/publish",
        &[("cookie", &cookie)],
        publish.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token");
    let (status, _, _) = send(
        &env,
        Method::POST,
        "/api/v1/publish",
        &[("cookie", &cookie), ("x-csrf-token", "guess")],
        publish.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "wrong token");
    let (status, _, _) = send(
        &env,
        Method::POST,
        "/api/v1/publish",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        publish.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    status_of(&env, Method::POST, "/api/v1/logout", &[("cookie", &cookie)]).await;
    let status = status_of(&env, Method::GET, "/api/v1/clients", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged out");
    let status = status_of(
        &env,
        Method::GET,
        "/api/v1/clients",
        &[("cookie", "sy_session=made-up")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() {
    let env = api_env().await;
    let (status, made) = env
        .call(Method::POST, "/api-keys", Some(json!({"name": "ci"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {key}");
    let status = status_of(
        &env,
        Method::GET,
        "/api/v1/clients",
        &[(AUTHORIZATION.as_str(), &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A key needs no CSRF header: browsers never send it on their own.
    let (status, _, _) = send(
        &env,
        Method::POST,
        "/api/v1/publish",
        &[
            ("authorization", &bearer),
            (CONTENT_TYPE.as_str(), "application/json"),
        ],
        Some(json!({"topic": "k/x"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let stored = std::fs::read_to_string(env.dir.path().join("users.txt.keys")).unwrap();
    assert!(!stored.contains(&key), "the key itself is not kept");
    assert!(stored.contains("\"hash\""));
    let listed = env.get("/api-keys").await;
    assert_eq!(listed["keys"][0]["name"], "ci");
    assert!(!listed.to_string().contains(&key) && !listed.to_string().contains("hash"));

    let id = made["id"].as_str().unwrap();
    let (status, _) = env
        .call(Method::DELETE, &format!("/api-keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let status = status_of(
        &env,
        Method::GET,
        "/api/v1/clients",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");
    let status = status_of(
        &env,
        Method::GET,
        "/api/v1/clients",
        &[("authorization", "Bearer sy_made-up")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart_and_open_metrics_off_closes_health_and_metrics() {
    let env = api_env_with(&[], &[], |c| c.core.http.open_metrics = false).await;
    let (_, made) = env
        .call(Method::POST, "/api-keys", Some(json!({"name": "kept"})))
        .await;
    let key = made["key"].as_str().unwrap().to_string();
    for path in ["/health", "/metrics"] {
        let (status, _, _) = send(&env, Method::GET, path, &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let keys =
        switchyard::api::keys::ApiKeys::open(Some(env.dir.path().join("users.txt.keys"))).unwrap();
    assert_eq!(
        keys.find(&key).as_deref(),
        Some("kept"),
        "read back from the file"
    );
    let status = status_of(
        &env,
        Method::GET,
        "/health",
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_passwords_is_cut_off_after_ten_failures_a_minute() {
    let env = api_env().await;
    let (_, made) = env
        .call(Method::POST, "/api-keys", Some(json!({"name": "before"})))
        .await;
    let bearer = format!("Bearer {}", made["key"].as_str().unwrap());
    let login = |password: &str| json!({"username": USER, "password": password});
    for i in 0..10 {
        let guess = Some(login(&format!("guess{i}")));
        let (status, _, _) = send(&env, Method::POST, "/api/v1/login", &[], guess).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is not looked at.
    let right = Some(login(PASSWORD));
    let (status, body, _) = send(&env, Method::POST, "/api/v1/login", &[], right).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let basic = env
        .http
        .get(format!("{}/api/v1/clients", env.base))
        .basic_auth(USER, Some("another guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::TOO_MANY_REQUESTS);
    // A script whose Basic credentials were verified before the attack goes on (they are
    // remembered for a minute), and so does a key: the guesser cannot lock them out.
    let (status, _) = env.call(Method::GET, "/clients", None).await;
    assert_eq!(status, StatusCode::OK);
    let status = status_of(
        &env,
        Method::GET,
        "/api/v1/clients",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_with_a_secure_cookie_and_no_plain_http() {
    let pki = common::Pki::new();
    let mut env = api_env_with(&[], &[], |c| {
        c.core.http.cert = Some(pki.server_cert.clone());
        c.core.http.key = Some(pki.server_key.clone());
    })
    .await;
    let addr = env.server.http_addr.expect("http on");
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    env.http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    env.base = format!("https://localhost:{}", addr.port());

    let (status, body) = env.call(Method::GET, "/clients", None).await;
    assert_eq!(status, StatusCode::OK, "Basic over HTTPS: {body}");
    let login = Some(json!({"username": USER, "password": PASSWORD}));
    let (status, _, headers) = send(&env, Method::POST, "/api/v1/login", &[], login).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let (status, _, _) = send(&env, Method::GET, "/health", &[], None).await;
    assert_eq!(status, StatusCode::OK);

    // Plain HTTP on the same port gets no HTTP answer (no cookie or password in clear).
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // and the endpoint is still there for the next HTTPS client.
    let (status, _) = env.call(Method::GET, "/clients", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_setup_that_cannot_work_stops_the_start_with_its_reason() {
    let half = "[http]\ncert = \"server.pem\"\n";
    let Err(err) = switchyard::Config::parse(half, "half.toml") else {
        panic!("a cert without a key is accepted");
    };
    assert!(
        err.to_string().contains("`cert` and `key` go together"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut config = switchyard::Config::default();
    config.core.listeners = vec![common::local(switchyard_core::config::ListenerKind::Tcp)];
    config.core.http.bind = "127.0.0.1:0".parse().unwrap();
    config.core.http.cert = Some(dir.path().join("missing.pem"));
    config.core.http.key = Some(dir.path().join("missing.key"));
    let started = switchyard::Switchyard::builder(config)
        .watch_files(false)
        .start()
        .await;
    let Err(err) = started else {
        panic!("a missing certificate did not stop the start");
    };
    let text = err.to_string();
    assert!(
        text.contains("missing.pem") && text.contains("certificate"),
        "{text}"
    );
}
