//! HTTP sink: one request per record, several in flight; 5xx, 429 and connection errors are
//! retried, other 4xx are refusals.

use super::template::{payload_bytes, Template};
use super::{Deliver, Failure, Record};
use super::{KindError, SinkKind, StartArgs};
use async_trait::async_trait;
use futures_util::future::join_all;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) const KIND: SinkKind = SinkKind {
    name: "webhook",
    check: |v| check(&super::options(v)?),
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: WebhookConfig = super::options(&a.options)?;
            Ok(Box::new(Webhook::new(&c).map_err(KindError::Unusable)?) as Box<dyn Deliver>)
        })
    },
};

fn check(w: &WebhookConfig) -> Result<(), KindError> {
    if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
        return Err(KindError::Invalid(format!(
            "url: expected http:// or https://, got {:?}",
            w.url
        )));
    }
    if w.concurrency == 0 {
        return Err(KindError::Invalid("concurrency must be at least 1".into()));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A template (`${field}` from the rule's output); default: the output as JSON.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default = "default_http_timeout")]
    pub timeout_ms: u64,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_method() -> String {
    "POST".into()
}
fn default_http_timeout() -> u64 {
    5_000
}
fn default_concurrency() -> usize {
    16
}

pub struct Webhook {
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    body: Option<Template>,
    concurrency: usize,
}

impl Webhook {
    pub fn new(c: &WebhookConfig) -> Result<Self, String> {
        crate::install_crypto_provider();
        let method = reqwest::Method::from_bytes(c.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method: not an HTTP method: {:?}", c.method))?;
        let mut headers = Vec::new();
        for (name, value) in &c.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: not a header name: {name:?}"))?;
            headers.push((name, Template::parse(value)?));
        }
        let body = c.body.as_deref().map(Template::parse).transpose()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self {
            client,
            method,
            url: c.url.clone(),
            headers,
            body,
            concurrency: c.concurrency,
        })
    }

    async fn send_one(&self, record: &Record) -> Result<(), Failure> {
        let mut req = self.client.request(self.method.clone(), &self.url);
        for (name, value) in &self.headers {
            // A rendered value with a control character is this record's fault: refused, not
            // retried (it would fail the same way forever).
            let value =
                reqwest::header::HeaderValue::from_str(&value.render(record)).map_err(|_| {
                    Failure::Permanent(format!(
                        "header {name}: the rendered value is not a valid header value"
                    ))
                })?;
            req = req.header(name, value);
        }
        req = match &self.body {
            Some(t) => req.body(t.render(record)),
            None => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload_bytes(record)),
        };
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Err(Failure::Retry(format!("{} answered {status}", self.url)))
                } else {
                    Err(Failure::Permanent(format!(
                        "{} answered {status}",
                        self.url
                    )))
                }
            }
            // A request that cannot be built fails the same way every time.
            Err(e) if e.is_builder() => Err(Failure::Permanent(format!("{}: {e}", self.url))),
            Err(e) => Err(Failure::Retry(format!("{}: {e}", self.url))),
        }
    }
}

#[async_trait]
impl Deliver for Webhook {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        let mut failures = Vec::new();
        for (n, chunk) in batch.chunks(self.concurrency).enumerate() {
            let sent = join_all(chunk.iter().map(|r| self.send_one(r))).await;
            for (j, r) in sent.into_iter().enumerate() {
                if let Err(f) = r {
                    failures.push((n * self.concurrency + j, f));
                }
            }
        }
        failures
    }
}
