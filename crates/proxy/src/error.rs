//! Every way a proxied HTTP request can fail, and the one place that turns each failure into
//! what the client sees: a status, an `onemesh-error: <reason>` header and a metric label
//! ([`ProxyError::outcome`], a single exhaustive `match`).
//!
//! | status | reasons |
//! |---|---|
//! | 400 | `malformed` (bad request head, missing host), `ambiguous_path` (inbound: a path the app could read differently from policy, see [`crate::path`]), `h2c_upgrade` (an `Upgrade: h2c` / `HTTP2-Settings` request, both directions) |
//! | 403 | `forbidden` (policy), `undeclared_port`, `proxy_port` (inbound: the transport header names a port that is not declared, or one of the proxy's own) |
//! | 408 | `header_timeout` (slow client) |
//! | 429 | `rate_limited` (inbound: a `RateLimitPolicy` bucket is empty; with `Retry-After` in seconds) |
//! | 431 | `header_too_large` |
//! | as declared | `fault_injected` (inbound: a route's fault aborted the request; its HTTP status, or HTTP 200 with the declared `grpc-status`) |
//! | 502 | `connect_failed`, `tls_failed`, `upstream_failed`, `loop_detected` |
//! | 503 | `no_endpoints`, `not_ready`, `discovery_unavailable`, `circuit_open` (outbound: every endpoint of the service is ejected by its circuit breaker) |
//! | 504 | `timeout` |
//!
//! Upstream HTTP responses (even 5xx) are passed through untouched; only failures of the proxy
//! path get the header. The reason is a bounded label value; the detail in the body is for humans.
//!
//! An injected abort carries `onemesh-error: fault_injected` too, although it stands for the app
//! failing: callers' retries and breakers treat it as the status it carries (the reason is not one
//! of the "never delivered" ones), while an operator, a test or `onemesh tap` can tell an injected
//! failure from a real one, and a fault left on by mistake is found from the caller's side.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use onemesh_identity::HandshakeFailure;

use crate::body::{self, Body};
use crate::inbound::fault::AbortWith;
use crate::path::AmbiguousPath;
use crate::policy::PortRefusal;

/// The response header naming the proxy's error reason.
pub const ERROR_HEADER: &str = "onemesh-error";

/// A failure on the proxy path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The inbound policy denied the request.
    #[error(
        "forbidden: caller {caller} is not allowed by policy {policy}\nto see why, and what \
         would allow it: {explain}"
    )]
    Forbidden {
        /// The caller's identity, or "unauthenticated".
        caller: String,
        /// The policy that denied.
        policy: String,
        /// The `onemesh authz explain` command for this request
        /// ([`crate::inbound::explain_command`]).
        explain: String,
    },
    /// The request head could not be understood.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request path could be read differently by the app than by policy.
    #[error("ambiguous request path: {0}")]
    AmbiguousPath(#[from] AmbiguousPath),
    /// The request asks to upgrade to cleartext HTTP/2, which would tunnel requests past the
    /// proxy.
    #[error(
        "upgrading to h2c is not supported through the mesh (later requests would bypass policy); \
         speak HTTP/2 with prior knowledge, or HTTP/1.1 without the Upgrade: h2c and \
         HTTP2-Settings headers"
    )]
    H2cUpgrade,
    /// The inbound does not forward to the port the connection names.
    #[error("the inbound does not forward there: {0}")]
    Port(#[from] PortRefusal),
    /// The request head is larger than allowed.
    #[error("request headers are larger than {0} bytes")]
    HeaderTooLarge(usize),
    /// The client did not send a complete request head in time.
    #[error("the request head did not arrive within {0:?}")]
    HeaderTimeout(Duration),
    /// The service has no endpoints.
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    /// Every endpoint of the service is ejected by its circuit breaker.
    #[error(
        "circuit open: every endpoint of {0} failed and is ejected for a while; the caller \
         should back off (endpoints are probed again as their ejections end)"
    )]
    CircuitOpen(String),
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
    /// A rate limit of the inbound refused the request.
    #[error(
        "rate limited by policy {policy} ({scope} limit) for caller {caller}; retry after \
         {retry_after_secs} s, or ask the workload's owner for a higher limit"
    )]
    RateLimited {
        /// The RateLimitPolicy.
        policy: std::sync::Arc<str>,
        /// Which of its buckets (`total`, `identity`, `override`).
        scope: &'static str,
        /// The caller's identity, or "unauthenticated".
        caller: String,
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// A route's fault injection aborted the request.
    #[error("fault injected by route {route} (a test of how callers handle failures)")]
    FaultAbort {
        /// The route.
        route: std::sync::Arc<str>,
        /// What the answer is.
        with: AbortWith,
    },
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
            ProxyError::AmbiguousPath(_) => (StatusCode::BAD_REQUEST, "ambiguous_path"),
            ProxyError::H2cUpgrade => (StatusCode::BAD_REQUEST, "h2c_upgrade"),
            ProxyError::Port(refusal) => {
                let status = match refusal {
                    PortRefusal::Undeclared(_) | PortRefusal::ProxyPort(_) => StatusCode::FORBIDDEN,
                    PortRefusal::AwaitingPolicy => StatusCode::SERVICE_UNAVAILABLE,
                    PortRefusal::NoOriginalDst => StatusCode::BAD_REQUEST,
                };
                (status, refusal.reason())
            }
            ProxyError::HeaderTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            ProxyError::HeaderTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "header_timeout"),
            ProxyError::NoEndpoints(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_endpoints"),
            ProxyError::CircuitOpen(_) => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ProxyError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ProxyError::DiscoveryUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "discovery_unavailable")
            }
            ProxyError::Connect { .. } => (StatusCode::BAD_GATEWAY, "connect_failed"),
            ProxyError::Tls { .. } => (StatusCode::BAD_GATEWAY, "tls_failed"),
            ProxyError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ProxyError::Loop(_) => (StatusCode::BAD_GATEWAY, "loop_detected"),
            ProxyError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ProxyError::FaultAbort { with, .. } => match with {
                AbortWith::Http(status) => (*status, "fault_injected"),
                AbortWith::Grpc(_) => (StatusCode::OK, "fault_injected"),
            },
        };
        Outcome { status, reason }
    }

    /// Whether a peer proxy's answer says the request never reached its app: it could not
    /// connect to it (the app is gone or not yet listening, as when its pod is going away) or is
    /// still waiting for its policy. Such a request may be sent to another endpoint, within the
    /// same rules as [`ProxyError::is_retryable`] (replayable, retry budget). A peer could lie
    /// here only to cost itself one budgeted retry.
    pub fn peer_did_not_deliver<B>(rsp: &http::Response<B>) -> bool {
        matches!(
            rsp.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ) && rsp.headers().get(ERROR_HEADER).is_some_and(|v| {
            matches!(
                v.as_bytes(),
                b"connect_failed" | b"upstream_failed" | b"awaiting_policy"
            )
        })
    }

    /// Whether the request may be sent again elsewhere: the failure happened before any
    /// response (connect, TLS, or the upstream connection broke).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProxyError::Connect { .. } | ProxyError::Tls { .. } | ProxyError::Upstream(_) => true,
            ProxyError::Forbidden { .. }
            | ProxyError::Malformed(_)
            | ProxyError::AmbiguousPath(_)
            | ProxyError::H2cUpgrade
            | ProxyError::Port(_)
            | ProxyError::HeaderTooLarge(_)
            | ProxyError::HeaderTimeout(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::NotReady(_)
            | ProxyError::DiscoveryUnavailable(_)
            | ProxyError::Timeout(_)
            | ProxyError::Loop(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::FaultAbort { .. } => false,
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
        match self {
            ProxyError::RateLimited {
                retry_after_secs, ..
            } => {
                rsp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(*retry_after_secs),
                );
            }
            ProxyError::FaultAbort {
                with: AbortWith::Grpc(code),
                ..
            } => {
                // A gRPC "trailers-only" answer: the status in the headers, no body.
                *rsp.body_mut() = body::empty();
                let headers = rsp.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert(crate::http_util::GRPC_STATUS, HeaderValue::from(*code));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("fault%20injected%20by%20the%20mesh"),
                );
            }
            _ => {}
        }
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
                    explain: "onemesh authz explain --from unauthenticated --to a/b:1".into(),
                },
                403,
                "forbidden",
            ),
            (ProxyError::Malformed("x"), 400, "malformed"),
            (
                ProxyError::AmbiguousPath(AmbiguousPath::DotSegment),
                400,
                "ambiguous_path",
            ),
            (ProxyError::H2cUpgrade, 400, "h2c_upgrade"),
            (
                ProxyError::Port(PortRefusal::Undeclared(9)),
                403,
                "undeclared_port",
            ),
            (
                ProxyError::Port(PortRefusal::ProxyPort(9)),
                403,
                "proxy_port",
            ),
            (
                ProxyError::Port(PortRefusal::AwaitingPolicy),
                503,
                "awaiting_policy",
            ),
            (ProxyError::HeaderTooLarge(1), 431, "header_too_large"),
            (ProxyError::NoEndpoints("a".into()), 503, "no_endpoints"),
            (ProxyError::CircuitOpen("a".into()), 503, "circuit_open"),
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

    #[test]
    fn a_rate_limited_answer_says_when_to_retry() {
        let rsp = ProxyError::RateLimited {
            policy: "per-caller".into(),
            scope: "identity",
            caller: "spiffe://cluster.local/ns/order/sa/web".into(),
            retry_after_secs: 2,
        }
        .to_response();
        assert_eq!(rsp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rsp.headers()[ERROR_HEADER], "rate_limited");
        assert_eq!(rsp.headers()[http::header::RETRY_AFTER], "2");
    }

    #[test]
    fn an_injected_abort_looks_like_the_app_failing_and_says_so() {
        let http = ProxyError::FaultAbort {
            route: "r".into(),
            with: AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE),
        }
        .to_response();
        assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http.headers()[ERROR_HEADER], "fault_injected");
        assert!(
            !ProxyError::peer_did_not_deliver(&http),
            "an ordinary 503 to callers"
        );
        let grpc = ProxyError::FaultAbort {
            route: "r".into(),
            with: AbortWith::Grpc(14),
        }
        .to_response();
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(
            grpc.headers()[http::header::CONTENT_TYPE],
            "application/grpc"
        );
        assert_eq!(
            crate::http_util::classify(&grpc),
            crate::metrics::Classification::Failure
        );
    }
}
