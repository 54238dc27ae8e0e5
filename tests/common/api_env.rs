//! A broker with the HTTP API on: a user in a password file, a rules folder with a webhook
//! sink, and an HTTP client that logs in the ways operators do.

use super::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use switchyard_rules::SinkConfig;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "correct horse";

pub struct ApiEnv {
    pub server: switchyard::Running,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
}

impl ApiEnv {
    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// A request with Basic credentials (and the header a state-changing one needs).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call_api(&self.http, &self.base, method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// `path` under `base`/api/v1 as [`USER`] with Basic credentials (and the header a
/// state-changing request needs): the answer's status and JSON body.
pub async fn call_api(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http
        .request(method.clone(), format!("{base}/api/v1{path}"))
        .basic_auth(USER, Some(PASSWORD));
    if method != Method::GET {
        req = req.header("x-csrf-token", "script");
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("API answers");
    let status = res.status();
    let json = res.json().await.unwrap_or(Value::Null);
    (status, json)
}

/// Starts a broker with `[http] password_file` holding [`USER`], a rules folder with the
/// files given, the sinks given, and whatever `tune` changes.
pub async fn api_env_with(
    files: &[(&str, &str)],
    sinks: &[(&str, Value)],
    tune: impl FnOnce(&mut switchyard::Config),
) -> ApiEnv {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    // reqwest is built with rustls but no crypto provider of its own (the sinks pick one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    switchyard_core::auth::password::set_password(&users, USER, PASSWORD).unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for (name, text) in files {
        std::fs::write(rules.join(name), text).unwrap();
    }
    let mut core = test_config();
    core.http.password_file = users.display().to_string();
    let sinks: BTreeMap<String, SinkConfig> = sinks
        .iter()
        .map(|(n, v)| (n.to_string(), rules_env::sink(v.clone())))
        .collect();
    let mut config = switchyard::Config {
        core,
        rules: rules_env::rules_config(&rules),
        sinks,
        ..switchyard::Config::default()
    };
    tune(&mut config);
    let server = switchyard::Switchyard::builder(config)
        .watch_files(false)
        .start()
        .await
        .expect("broker with the API starts");
    let base = format!("http://{}", server.http_addr.expect("http on"));
    ApiEnv {
        server,
        dir,
        base,
        http: reqwest::Client::new(),
    }
}

pub async fn api_env() -> ApiEnv {
    api_env_with(&[], &[], |_| {}).await
}
