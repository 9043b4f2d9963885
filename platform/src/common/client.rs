//! The client a service uses to call the next one in the chain: plain HTTP (the mesh's proxy does
//! mTLS, so no TLS here), `HTTP_PROXY`/`NO_PROXY` honoured, a timeout on every call, and retries
//! of idempotent calls with the *same* `Idempotency-Key`, so a retry can never charge twice.
//!
//! Retried: connection failures, timeouts and 5xx answers. Not retried: 4xx answers, which are
//! final outcomes of the upstream (a decline, a validation error) and are returned as
//! [`UpstreamError::Rejected`] with the upstream's error body.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{ErrorBody, IDEMPOTENCY_KEY};

/// How upstream calls behave.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Attempts per call (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled after each failed attempt.
    pub backoff: Duration,
    /// Use `HTTP_PROXY`/`NO_PROXY` from the environment (true in production, false in tests).
    pub use_env_proxy: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(50),
            use_env_proxy: true,
        }
    }
}

/// Why an upstream call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a final 4xx outcome.
    #[error("{service} refused the request ({status}): {}", body.error)]
    Rejected {
        /// Which upstream.
        service: &'static str,
        /// Its status.
        status: u16,
        /// Its error body.
        body: ErrorBody,
    },
    /// No final answer after all attempts (connection refused, timeout, 5xx).
    #[error(
        "{service} is unavailable after {attempts} attempts: {reason}; retry later with the same request"
    )]
    Unavailable {
        /// Which upstream.
        service: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The upstream answered 2xx with a body that is not what was expected.
    #[error("{service} sent an unreadable response: {reason}")]
    BadResponse {
        /// Which upstream.
        service: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Could not build the HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the upstream http client: {0}")]
pub struct ClientBuildError(#[from] reqwest::Error);

/// One upstream service at a base URL such as `http://bank.bank`.
#[derive(Debug, Clone)]
pub struct Upstream {
    service: &'static str,
    base: String,
    client: reqwest::Client,
    config: ClientConfig,
}

impl Upstream {
    /// A client for `service` at `base` (trailing `/` ignored).
    pub fn new(
        service: &'static str,
        base: &str,
        config: ClientConfig,
    ) -> Result<Upstream, ClientBuildError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30));
        if !config.use_env_proxy {
            builder = builder.no_proxy();
        }
        Ok(Upstream {
            service,
            base: base.trim_end_matches('/').to_string(),
            client: builder.build()?,
            config,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs `body` as JSON to `path` with an idempotency key (and extra headers), retrying
    /// transient failures with the same key; returns the decoded 2xx body.
    pub async fn post<B, R>(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: &B,
    ) -> Result<R, UpstreamError>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let url = format!("{}{}", self.base, path);
        let mut backoff = self.config.backoff;
        let mut last = String::new();
        let attempts = self.config.attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 {
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                tokio::time::sleep(backoff + jitter).await;
                backoff = backoff.saturating_mul(2);
            }
            let mut req = self
                .client
                .post(&url)
                .header(IDEMPOTENCY_KEY, key)
                .json(body);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = describe(&e);
                    tracing::warn!(upstream = self.service, %url, attempt, error = %last, "upstream call failed");
                    continue;
                }
            };
            let status = response.status();
            if status.is_server_error() {
                last = format!("status {status}");
                tracing::warn!(upstream = self.service, %url, attempt, status = status.as_u16(), "upstream answered with a server error");
                continue;
            }
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last = describe(&e);
                    continue;
                }
            };
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| UpstreamError::BadResponse {
                    service: self.service,
                    reason: e.to_string(),
                });
            }
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                code: "upstream_error".into(),
            });
            return Err(UpstreamError::Rejected {
                service: self.service,
                status: status.as_u16(),
                body,
            });
        }
        Err(UpstreamError::Unavailable {
            service: self.service,
            attempts,
            reason: last,
        })
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;
    use crate::common::testing::{client_config, dead_url, serve_local};

    /// A server that answers 503 `failures` times, then 201; it records the keys it saw.
    async fn flaky(failures: usize, final_status: StatusCode) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let app = Router::new().route(
            "/x",
            post(move |headers: HeaderMap| {
                let s = Arc::clone(&s);
                async move {
                    let key = headers[IDEMPOTENCY_KEY].to_str().unwrap().to_string();
                    let mut seen = s.lock().unwrap();
                    seen.push(key);
                    if seen.len() <= failures {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({})),
                        )
                    } else if final_status.is_success() {
                        (final_status, axum::Json(serde_json::json!({"ok": true})))
                    } else {
                        (
                            final_status,
                            axum::Json(serde_json::json!({"error": "no", "code": "nope"})),
                        )
                    }
                }
            }),
        );
        (serve_local(app).await, seen)
    }

    fn config(attempts: u32) -> ClientConfig {
        ClientConfig {
            attempts,
            ..client_config()
        }
    }

    #[tokio::test]
    async fn retries_server_errors_with_the_same_key() {
        let (url, seen) = flaky(2, StatusCode::CREATED).await;
        let up = Upstream::new("test", &url, config(3)).unwrap();
        let body: serde_json::Value = up
            .post("/x", "key-1", &[], &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(body["ok"], true);
        assert_eq!(*seen.lock().unwrap(), vec!["key-1"; 3]);
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_and_never_retries_a_refusal() {
        let (url, seen) = flaky(5, StatusCode::CREATED).await;
        let up = Upstream::new("test", &url, config(2)).unwrap();
        let err = up
            .post::<_, serde_json::Value>("/x", "k", &[], &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Unavailable { attempts: 2, .. }),
            "{err:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);

        let (url, seen) = flaky(0, StatusCode::PAYMENT_REQUIRED).await;
        let up = Upstream::new("test", &url, config(3)).unwrap();
        let err = up
            .post::<_, serde_json::Value>("/x", "k", &[], &serde_json::json!({}))
            .await
            .unwrap_err();
        match err {
            UpstreamError::Rejected { status, body, .. } => {
                assert_eq!(status, 402);
                assert_eq!(body.code, "nope");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "a 4xx is final: no retry");

        let up = Upstream::new("test", &dead_url(), config(2)).unwrap();
        let err = up
            .post::<_, serde_json::Value>("/x", "k", &[], &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Unavailable { .. }));
    }
}
