//! What operators do to rules through the HTTP API: read, write and delete rule files (checked
//! before they are written, then reloaded as an edit on disk would be), turn single rules off
//! and on, and test a rule against a sample message without sending anything to its sinks.

use super::worker::{evaluate, Skip, Subject};
use super::{Rule, RuleEngine, RuleStats, RulesError};
use crate::native::MessageView;
use crate::script;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::hooks::ClientInfo;
use switchyard_core::message::Message;
use switchyard_core::protocol::QoS;

/// The file in the rules folder that lists disabled rules, one name per line.
pub(super) const DISABLED_FILE: &str = ".disabled-rules";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no rules dir is configured ([rules] dir)")]
    NoDir,
    #[error("a rule file name is NAME.rhai, letters, digits, '-', '_' and '.' only")]
    BadName,
    #[error("no such rule file")]
    NotFound,
    #[error("no such rule")]
    NoSuchRule,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file does not load: nothing was written, the running rules stay.
    #[error("{}", .0.join("\n"))]
    Rejected(Vec<String>),
}

/// A message to test a rule against.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    pub topic: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default = "sample_client")]
    pub clientid: String,
    #[serde(default)]
    pub username: Option<String>,
}

fn sample_client() -> String {
    "sample".to_string()
}

/// What a rule made of a sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestOutcome {
    pub rule: String,
    /// The sample's topic matches one of the rule's `from` filters.
    pub matched: bool,
    /// `when`'s verdict (true when there is no `when`); absent when not reached.
    pub when: Option<bool>,
    /// What the rule would hand its sinks.
    pub outputs: Vec<serde_json::Value>,
    pub sinks: Vec<String>,
    /// An evaluation error, `file:line:col: message`.
    pub error: Option<String>,
}

/// `name` as a file of `dir`, if it is a plain `*.rhai` name.
fn rule_path(dir: &Path, name: &str) -> Result<PathBuf, AdminError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plain || name.starts_with('.') || !name.ends_with(".rhai") || name.len() > 128 {
        return Err(AdminError::BadName);
    }
    Ok(dir.join(name))
}

impl RuleEngine {
    fn dir(&self) -> Result<PathBuf, AdminError> {
        self.shared.config.dir.clone().ok_or(AdminError::NoDir)
    }

    /// The `*.rhai` files of the rules folder, sorted.
    pub fn rule_files(&self) -> Result<Vec<String>, AdminError> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir()?)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".rhai") && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn read_rule_file(&self, name: &str) -> Result<String, AdminError> {
        let path = rule_path(&self.dir()?, name)?;
        std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AdminError::NotFound,
            _ => e.into(),
        })
    }

    /// Writes `name` with `text` and reloads, if the whole folder with this file in it loads;
    /// otherwise nothing is written and the errors (`file:line:col: message`) come back.
    /// Returns the number of rules now loaded.
    pub fn write_rule_file(&self, name: &str, text: &str) -> Result<usize, AdminError> {
        let dir = self.dir()?;
        let path = rule_path(&dir, name)?;
        {
            let _one_at_a_time = self.shared.reloading.lock();
            let shown = path.display().to_string();
            super::reload::parse_dir_with(self, &dir, Some((&shown, text)))
                .map_err(AdminError::Rejected)?;
            // Written whole or not at all: the watcher must never read half a file.
            switchyard_core::files::replace(&path, text.as_bytes(), false)?;
        }
        self.reload_now()
    }

    /// Removes a rule file and reloads.
    pub fn delete_rule_file(&self, name: &str) -> Result<usize, AdminError> {
        let path = rule_path(&self.dir()?, name)?;
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AdminError::NotFound,
            _ => e.into(),
        })?;
        self.reload_now()
    }

    fn reload_now(&self) -> Result<usize, AdminError> {
        self.reload().map_err(|e| match e {
            RulesError::Load(errors) => AdminError::Rejected(errors),
            other => AdminError::Rejected(vec![other.to_string()]),
        })
    }

    /// Turns a loaded rule off (it stays listed, matches nothing) or on again. Kept in the
    /// folder's `.disabled-rules`, so it holds across restarts.
    pub fn set_enabled(&self, rule: &str, enabled: bool) -> Result<(), AdminError> {
        let dir = self.dir()?;
        let known = self.shared.rules.load().rules.iter().any(|r| r.key == rule);
        if !known {
            return Err(AdminError::NoSuchRule);
        }
        let mut disabled = read_disabled(&dir);
        let changed = if enabled {
            disabled.remove(rule)
        } else {
            disabled.insert(rule.to_string())
        };
        if changed {
            let mut names: Vec<&String> = disabled.iter().collect();
            names.sort();
            let text: String = names.iter().map(|n| format!("{n}\n")).collect();
            switchyard_core::files::replace(&dir.join(DISABLED_FILE), text.as_bytes(), false)?;
            self.reload_now()?;
        }
        Ok(())
    }

    /// Compiles `text` (a rule file, not written anywhere) and runs its rule `rule` (or its
    /// first) on `sample`: `when`, then `select`, under the usual limits. Nothing reaches a
    /// sink. A file that does not load is `Rejected` with `file:line:col`.
    pub fn test_rule(
        &self,
        file: &str,
        text: &str,
        rule: Option<&str>,
        sample: &Sample,
    ) -> Result<TestOutcome, AdminError> {
        let s = &self.shared;
        let budget = Duration::from_millis(s.config.timeout_ms.max(1) * 20);
        let (ast, defs) = script::load_file(&s.engine, file, text, s.sink_kinds.clone(), budget)
            .map_err(|e| AdminError::Rejected(vec![e]))?;
        let def = match rule {
            Some(name) => defs.into_iter().find(|d| d.name == name),
            None => defs.into_iter().next(),
        }
        .ok_or(AdminError::NoSuchRule)?;
        let matched = def
            .trigger
            .filters
            .iter()
            .any(|f| switchyard_core::topic::matches(f, &sample.topic));
        let test = Rule {
            key: def.name.clone(),
            name: Arc::from(def.name.as_str()),
            file: Arc::from(file),
            ast,
            when_native: None,
            sinks: Vec::new(),
            stats: Arc::new(RuleStats::default()),
            enabled: true,
            def,
        };
        let mut outcome = TestOutcome {
            rule: test.def.name.clone(),
            matched,
            when: None,
            outputs: Vec::new(),
            sinks: test.def.sinks.clone(),
            error: None,
        };
        let client = Arc::new(ClientInfo::internal(
            Arc::from(sample.clientid.as_str()),
            sample.username.as_deref().map(Arc::from),
            "api:test",
        ));
        let msg = Arc::new(Message::new(
            sample.topic.as_str(),
            sample.payload.clone().into_bytes(),
            QoS::from_u8(sample.qos.min(2)).unwrap_or(QoS::AtMostOnce),
            sample.retain,
        ));
        let mut subject = Subject::Message(MessageView::new(&client, &msg), None);
        let timeout = Duration::from_millis(s.config.timeout_ms.max(1));
        match evaluate(&s.engine, &test, &mut subject, false, timeout) {
            Ok(Some(outputs)) => {
                outcome.when = Some(true);
                outcome.outputs = outputs;
            }
            Ok(None) => {
                outcome.when = Some(true);
                outcome.outputs = vec![subject.default_output()];
            }
            Err(Skip::NotPassed) => outcome.when = Some(false),
            Err(Skip::Failed(e)) => {
                outcome.error = Some(script::describe_error(file, &e, test.def.line));
            }
        }
        Ok(outcome)
    }
}

/// The rule names listed in the folder's `.disabled-rules` (none when it is absent).
pub(super) fn read_disabled(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join(DISABLED_FILE))
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
