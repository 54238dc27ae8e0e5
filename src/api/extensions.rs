//! Rules (status, files, reload, test, enable/disable), sinks and plugins.

use super::{ApiError, ApiResult, Body, Segments, Shared};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use switchyard_rules::{AdminError, RuleEngine, Sample};

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NoDir => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            AdminError::BadName => ApiError::bad(e.to_string()),
            AdminError::NotFound | AdminError::NoSuchRule => ApiError::not_found(e.to_string()),
            AdminError::Io(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            AdminError::Rejected(errors) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: "the rule file does not load; nothing changed, the running rules stay"
                    .to_string(),
                details: errors,
            },
        }
    }
}

/// Runs `work` on the rule engine on a blocking thread: compiling a folder of rules (a
/// reload, a save, a test) is CPU work that must not hold a runtime thread serving MQTT.
async fn on_rules<T: Send + 'static>(
    api: &Shared,
    work: impl FnOnce(&RuleEngine) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let rules = api.rules.clone();
    tokio::task::spawn_blocking(move || work(&rules))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The rules' status document (`/rules`), or an empty one when the engine has none.
fn rules_status(api: &Shared) -> Value {
    api.broker
        .status_of("rules")
        .unwrap_or_else(|| json!({ "rules": [], "sinks": [] }))
}

pub async fn rules(State(api): State<Shared>) -> ApiResult {
    let mut status = rules_status(&api);
    status["files"] = json!(api.rules.rule_files().unwrap_or_default());
    Ok(Json(status))
}

pub async fn rules_reload(State(api): State<Shared>) -> ApiResult {
    match on_rules(&api, |rules| rules.reload()).await? {
        Ok(n) => Ok(Json(json!({ "rules": n }))),
        Err(switchyard_rules::RulesError::Load(errors)) => Err(AdminError::Rejected(errors).into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// A rule file's text to test (need not be saved) …
    source: Option<String>,
    /// … or the name of a saved rule file.
    file: Option<String>,
    /// The rule of the file to run; absent: its first.
    rule: Option<String>,
    message: Sample,
}

pub async fn rules_test(State(api): State<Shared>, Body(req): Body<TestRequest>) -> ApiResult {
    let (name, text) = match (req.source, req.file) {
        (Some(text), file) => (file.unwrap_or_else(|| "test.rhai".to_string()), text),
        (None, Some(file)) => {
            let text = api.rules.read_rule_file(&file)?;
            (file, text)
        }
        (None, None) => return Err(ApiError::bad("give source (a rule file's text) or file")),
    };
    if !switchyard_core::topic::valid_topic_name(&req.message.topic) {
        return Err(ApiError::bad("message.topic: not a topic name"));
    }
    let outcome = on_rules(&api, move |rules| {
        rules.test_rule(&name, &text, req.rule.as_deref(), &req.message)
    })
    .await??;
    Ok(Json(json!(outcome)))
}

pub async fn rule_files(State(api): State<Shared>) -> ApiResult {
    Ok(Json(json!({ "files": api.rules.rule_files()? })))
}

pub async fn rule_file_get(
    State(api): State<Shared>,
    Segments(name): Segments<String>,
) -> ApiResult {
    let text = api.rules.read_rule_file(&name)?;
    Ok(Json(json!({ "name": name, "source": text })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    source: String,
}

pub async fn rule_file_put(
    State(api): State<Shared>,
    Segments(name): Segments<String>,
    Body(file): Body<RuleFile>,
) -> ApiResult {
    let n = {
        let name = name.clone();
        on_rules(&api, move |rules| {
            rules.write_rule_file(&name, &file.source)
        })
        .await??
    };
    tracing::info!(file = %name, rules = n, listener = "http", "rule file saved by an operator");
    Ok(Json(json!({ "name": name, "rules": n })))
}

pub async fn rule_file_delete(
    State(api): State<Shared>,
    Segments(name): Segments<String>,
) -> ApiResult {
    let n = {
        let name = name.clone();
        on_rules(&api, move |rules| rules.delete_rule_file(&name)).await??
    };
    Ok(Json(json!({ "deleted": name, "rules": n })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enabled {
    enabled: bool,
}

pub async fn rule_enabled(
    State(api): State<Shared>,
    Segments(rule): Segments<String>,
    Body(e): Body<Enabled>,
) -> ApiResult {
    let enabled = e.enabled;
    {
        let rule = rule.clone();
        on_rules(&api, move |rules| rules.set_enabled(&rule, enabled)).await??;
    }
    Ok(Json(json!({ "rule": rule, "enabled": enabled })))
}

pub async fn sinks(State(api): State<Shared>) -> ApiResult {
    let status = rules_status(&api);
    Ok(Json(json!({ "data": status["sinks"] })))
}

pub async fn plugins(State(api): State<Shared>) -> ApiResult {
    Ok(Json(api.broker.status_of("plugins").unwrap_or_else(
        || json!({ "plugins": [], "missing": [], "load_errors": [] }),
    )))
}

pub async fn plugin_reload(
    State(api): State<Shared>,
    Segments(name): Segments<String>,
) -> ApiResult {
    match api.plugins.reload_one(&name).await {
        Ok(version) => Ok(Json(json!({ "plugin": name, "version": version }))),
        Err(e) if e.starts_with("no plugin") => Err(ApiError::not_found(e)),
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
    }
}

pub async fn plugin_reset(
    State(api): State<Shared>,
    Segments(name): Segments<String>,
) -> ApiResult {
    if api.plugins.reset_breaker(&name) {
        Ok(Json(json!({ "plugin": name, "breaker": "closed" })))
    } else {
        Err(ApiError::not_found("no plugin with this name is loaded"))
    }
}
