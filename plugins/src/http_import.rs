//! The `http-fetch` host function: HTTP requests a plugin may make, only to the hosts its
//! `[[plugin]]` entry allows (`allowed_hosts`: `host` for any port, `host:port` for one),
//! within `http_timeout_ms` and `http_max_bytes`, never following a redirect (which could lead
//! anywhere). Host names are compared as written: allow addresses, or names you control.

use crate::bindings::v3::switchyard::plugin::host::{HttpError, HttpRequest, HttpResponse};
use std::time::Duration;

pub struct HttpAccess {
    client: reqwest::Client,
    allowed: Vec<String>,
    timeout: Duration,
    max_bytes: usize,
}

impl HttpAccess {
    /// `None` when the plugin may reach no host at all.
    pub fn new(allowed: &[String], timeout_ms: u64, max_bytes: usize) -> Option<Self> {
        if allowed.is_empty() {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Self {
            client,
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
            timeout: Duration::from_millis(timeout_ms.max(1)),
            max_bytes,
        })
    }

    /// How long a fetch may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        allowed(&self.allowed, url)
    }

    pub async fn fetch(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let url = reqwest::Url::parse(&req.url).map_err(|e| HttpError::Failed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || !self.allows(&url) {
            return Err(HttpError::NotAllowed);
        }
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|e| HttpError::Failed(e.to_string()))?;
        let mut builder = self.client.request(method, url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let exchange = async {
            let mut resp = builder
                .send()
                .await
                .map_err(|e| HttpError::Failed(e.to_string()))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| HttpError::Failed(e.to_string()))?
            {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(HttpError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }
}

/// Whether `url`'s host (and port) is in `allowed` (lower-case `host` or `host:port`).
fn allowed(allowed: &[String], url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
        return false;
    };
    let port = url.port_or_known_default();
    allowed.iter().any(|a| match a.rsplit_once(':') {
        // `[::1]:80` and `host:80`; a bare IPv6 address without brackets has colons too.
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() && !h.ends_with(':') => {
            h == host && p.parse::<u16>().ok() == port
        }
        _ => *a == host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_with_or_without_a_port() {
        let list = vec!["127.0.0.1:8080".to_string(), "auth.example".to_string()];
        let ok = |u: &str| allowed(&list, &reqwest::Url::parse(u).unwrap());
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(!ok("http://127.0.0.2:8080/x"));
        assert!(ok("https://AUTH.example/token"));
        assert!(ok("http://auth.example:9000/"));
        assert!(!ok("http://auth.example.evil/"));
        assert!(!ok("http://evil.example/?auth.example"));
    }
}
