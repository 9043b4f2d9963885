//! Every way a proxied HTTP request can fail, and the one place that turns each failure into
//! what the client sees: a status, an `onemesh-error: <reason>` header and a metric label
//! ([`ProxyError::outcome`], a single exhaustive `match`).
//!
//! | status | reasons |
//! |---|---|
//! | 400 | `malformed` (bad request head, missing host) |
//! | 403 | `forbidden` (policy) |
//! | 408 | `header_timeout` (slow client) |
//! | 431 | `header_too_large` |
//! | 502 | `connect_failed`, `tls_failed`, `upstream_failed`, `loop_detected` |
//! | 503 | `no_endpoints`, `not_ready`, `discovery_unavailable` |
//! | 504 | `timeout` |
//!
//! Upstream HTTP responses (even 5xx) are passed through untouched; only failures of the proxy
//! path get the header. The reason is a bounded label value; the detail in the body is for humans.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use onemesh_identity::HandshakeFailure;

use crate::body::{self, Body};

/// The response header naming the proxy's error reason.
pub const ERROR_HEADER: &str = "onemesh-error";

/// A failure on the proxy path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The inbound policy denied the request.
    #[error("forbidden: caller {caller} is not allowed by policy {policy}")]
    Forbidden {
        /// The caller's identity, or "unauthenticated".
        caller: String,
        /// The policy that denied.
        policy: String,
    },
    /// The request head could not be understood.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request head is larger than allowed.
    #[error("request headers are larger than {0} bytes")]
    HeaderTooLarge(usize),
    /// The client did not send a complete request head in time.
    #[error("the request head did not arrive within {0:?}")]
    HeaderTimeout(Duration),
    /// The service has no endpoints.
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    /// The proxy has no certificate (or configuration) yet.
    #[error("the proxy is not ready: {0}")]
    NotReady(&'static str),
    /// Service discovery could not answer.
    #[error("service discovery is unavailable: {0}")]
    DiscoveryUnavailable(String),
    /// TCP connect failed or timed out.
    #[error("connecting to {target} failed: {source}")]
    Connect {
        /// What was dialled.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake with the upstream proxy failed.
    #[error("tls handshake with {addr} failed ({reason})")]
    Tls {
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// Why.
        reason: HandshakeFailure,
    },
    /// The upstream connection failed mid-request.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The route's timeout passed.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// An egress request came back to the proxy that sent it.
    #[error(
        "request loop: {0} leads back to this proxy (a request to the proxy's own port is not \
         forwarded again); send it to the service's own address or name"
    )]
    Loop(String),
}

/// What a failure becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status.
    pub status: StatusCode,
    /// `onemesh-error` value and metric label.
    pub reason: &'static str,
}

impl ProxyError {
    /// The one mapping from error to status and reason.
    pub fn outcome(&self) -> Outcome {
        let (status, reason) = match self {
            ProxyError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ProxyError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
            ProxyError::HeaderTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            ProxyError::HeaderTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "header_timeout"),
            ProxyError::NoEndpoints(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_endpoints"),
            ProxyError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ProxyError::DiscoveryUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "discovery_unavailable")
            }
            ProxyError::Connect { .. } => (StatusCode::BAD_GATEWAY, "connect_failed"),
            ProxyError::Tls { .. } => (StatusCode::BAD_GATEWAY, "tls_failed"),
            ProxyError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ProxyError::Loop(_) => (StatusCode::BAD_GATEWAY, "loop_detected"),
        };
        Outcome { status, reason }
    }

    /// Whether the request may be sent again elsewhere: the failure happened before any
    /// response (connect, TLS, or the upstream connection broke).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProxyError::Connect { .. } | ProxyError::Tls { .. } | ProxyError::Upstream(_) => true,
            ProxyError::Forbidden { .. }
            | ProxyError::Malformed(_)
            | ProxyError::HeaderTooLarge(_)
            | ProxyError::HeaderTimeout(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::NotReady(_)
            | ProxyError::DiscoveryUnavailable(_)
            | ProxyError::Timeout(_)
            | ProxyError::Loop(_) => false,
        }
    }

    /// The response the client gets.
    pub fn to_response(&self) -> Response<Body> {
        let Outcome { status, reason } = self.outcome();
        let mut rsp = Response::new(body::full(Bytes::from(format!("{self}\n"))));
        *rsp.status_mut() = status;
        rsp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(reason));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let cases = [
            (
                ProxyError::Forbidden {
                    caller: "unauthenticated".into(),
                    policy: "p".into(),
                },
                403,
                "forbidden",
            ),
            (ProxyError::Malformed("x"), 400, "malformed"),
            (ProxyError::HeaderTooLarge(1), 431, "header_too_large"),
            (ProxyError::NoEndpoints("a".into()), 503, "no_endpoints"),
            (ProxyError::NotReady("no certificate"), 503, "not_ready"),
            (ProxyError::Upstream("reset".into()), 502, "upstream_failed"),
            (ProxyError::Timeout(Duration::from_secs(1)), 504, "timeout"),
            (
                ProxyError::Loop("127.0.0.1:4140".into()),
                502,
                "loop_detected",
            ),
        ];
        for (err, status, reason) in cases {
            let rsp = err.to_response();
            assert_eq!(rsp.status().as_u16(), status);
            assert_eq!(rsp.headers()[ERROR_HEADER], reason);
        }
    }
}
