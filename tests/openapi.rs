//! `src/api/openapi.json` stays true: it names exactly the routes the router serves, the
//! broker serves that same file, every documented operation answers with a documented status
//! and JSON, and schemathesis (PyPI; scripts/install-test-deps installs it) finds no server
//! error and no answer that contradicts the schema.

mod common;
use common::api_env::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

fn document() -> Value {
    serde_json::from_str(switchyard::api::OPENAPI).expect("openapi.json is JSON")
}

/// (method, path) of every operation the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

/// (method, path) of every route of the `/api/v1` routers in src/api/mod.rs, read from the
/// source: `.route("PATH", get(..).delete(..))`.
fn routed() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/mod.rs"))
            .unwrap();
    let start = source
        .find("let protected = Router::new()")
        .expect("protected router");
    let end = source
        .find("let legacy = Router::new()")
        .expect("legacy router");
    let routers = &source[start..end];
    let mut out = BTreeSet::new();
    for part in routers.split(".route(").skip(1) {
        let part = part.trim_start();
        let Some(rest) = part.strip_prefix('"') else {
            continue;
        };
        let (path, handlers) = rest.split_once('"').unwrap();
        for m in METHODS {
            let called = format!("{m}(");
            let at_start = handlers
                .trim_start_matches([',', ' ', '\n'])
                .starts_with(&called);
            if at_start || handlers.contains(&format!(".{called}")) {
                out.insert((m.to_string(), path.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_document_names_exactly_the_routes_served() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented = documented(&doc);
    let routed = routed();
    assert!(routed.len() > 30, "routes read from the source: {routed:?}");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    assert!(stale.is_empty(), "documented but not served: {stale:?}");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                assert!(op["summary"].is_string(), "{m} {path} has a summary");
                assert!(!op["responses"].as_object().unwrap().is_empty());
            }
        }
    }
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{clientid}", "nobody")
        .replace("{name}", "none.rhai")
        .replace("{rule}", "none")
        .replace("{kind}", "clientid")
        .replace("{value}", "nobody")
        .replace("{id}", "none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_json_with_a_documented_status() {
    let env = api_env().await;
    let served: Value = env
        .http
        .get(format!("{}/api/v1/openapi.json", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = document();
    assert_eq!(
        served, doc,
        "the broker serves the document in the repository"
    );
    for (method, path) in documented(&doc) {
        if path == "/logout" {
            continue;
        }
        let op = &doc["paths"][&path][&method];
        let url = format!("/api/v1{}", concrete(&path));
        let mut req = env
            .http
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{url}", env.base),
            )
            .basic_auth(USER, Some(PASSWORD))
            .header("x-csrf-token", "t");
        if op.get("requestBody").is_some() {
            req = req.json(&json!({}));
        }
        let query_required = op["parameters"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["in"] == "query" && p["required"] == true)
        });
        if query_required {
            req = req.query(&[("topic", "a/b")]);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {url}");
        assert!(
            op["responses"].get(status.as_str()).is_some(),
            "{method} {url}: {status} is not documented"
        );
        let ctype = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            ctype.starts_with("application/json"),
            "{method} {url}: {ctype}"
        );
        let body: Value = res.json().await.unwrap();
        if !status.is_success() {
            assert!(body["error"].is_string(), "{method} {url}: {body}");
        }
    }
}

/// The venv scripts/install-test-deps puts schemathesis in.
fn schemathesis() -> std::path::PathBuf {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/st");
    assert!(
        st.exists(),
        "{} missing: run scripts/install-test-deps (scripts/test does)",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_against_the_schema() {
    let st = schemathesis();
    let env = api_env_with(
        &[(
            "forward.rhai",
            "rule(\"forward\").from([\"in/#\"]).to(sink(\"hook\"));\n",
        )],
        &[(
            "hook",
            json!({"kind": "webhook", "url": "http://127.0.0.1:9/h", "retry_max_ms": 100}),
        )],
        // A Bearer token needs no CSRF header: every generated request is judged on its own.
        |c| c.core.http.token = "schemathesis-token".into(),
    )
    .await;
    let tcp = tcp_addr(&env.server);
    let spec = format!("{}/api/v1/openapi.json", env.base);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        tokio::process::Command::new(st)
            .args([
                "run",
                &spec,
                "--url",
                &format!("{}/api/v1", env.base),
                "--header",
                "Authorization: Bearer schemathesis-token",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--no-color",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            // It writes a cache of what it found under its working directory: not in the repo.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .output(),
    )
    .await
    .expect("schemathesis finished in time")
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
    // The broker took all of it and still serves MQTT and HTTP (once any ban the run made,
    // of 127.0.0.1 say, is lifted).
    let bans = &env.server.broker().guard.bans;
    for ban in bans.list(std::time::Instant::now()) {
        if let Some(key) = switchyard_core::guard::bans::BanKey::from_parts(ban.kind, &ban.value) {
            bans.remove(&key).expect("a ban is lifted");
        }
    }
    still_serving(tcp).await;
    // By the key: the run's random logins from this address set off the password throttle.
    let metrics = env
        .http
        .get(format!("{}/api/v1/metrics", env.base))
        .bearer_auth("schemathesis-token")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
}
