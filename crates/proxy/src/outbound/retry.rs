//! The retry stage of the outbound stack: a request that failed as its route's [`RetryPolicy`]
//! says (by default: no answer — connect, TLS, a broken connection, or the endpoint's proxy could
//! not deliver to its app — or `502`/`503`/`504`, or gRPC `UNAVAILABLE`) is sent again, to
//! another pick of the balancer, up to the policy's attempts, while the route's
//! [`RetryBudget`] allows.
//!
//! **Only what is safe to repeat.** A request is replayable when it is idempotent by method,
//! carries the policy's idempotency header (`Idempotency-Key`: the server deduplicates), or is on
//! a route marked `retryable`; and it is not an upgrade; and its body is empty or of a declared
//! length up to the policy's `max_body_bytes`, which is read whole before the first attempt and
//! kept (a body of unknown length is never held back: a streaming client could be waiting for
//! an answer before it sends more). A request that would have been retried but cannot be is
//! counted (`retry_total{reason="body_too_large"|"not_idempotent"}`).
//!
//! Each attempt may have its own deadline (`per_try_timeout`; its expiry counts as a `504`), and
//! its latency (or failure) is recorded on the endpoint it went to (the balancer's load state, the
//! request's circuit breaker: [`super::breaker::Attempt`]); another attempt skips ejected
//! endpoints, and none is made when the breaker's circuit is open. The route's timeout covers
//! every attempt (the timeout stage sits above this one). Counted in `retry_total` by route and
//! reason: `retried`, `budget_exhausted`, `attempts_exhausted`, `body_too_large`,
//! `not_idempotent`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::balance::EndpointLoad;
use super::breaker::{Pick, Picker};
use super::endpoint::Endpoints;
use crate::body::{self, Body};
use crate::discover::RetryPolicy;
use crate::error::ProxyError;
use crate::http_util;
use crate::metrics::{Direction, Metrics, RetryLabels};

/// Limits retries to a share of requests plus a minimum rate: each request deposits
/// `percent / 100` tokens, time adds `min_per_second` tokens a second, each retry spends one;
/// at most [`RETRY_RESERVE_MAX`] (or a second's worth of the minimum rate, if more) are saved
/// up. It starts with one token.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    max: f64,
    state: Mutex<(f64, Instant)>,
}

/// Retries allowed per request by default, on average (20 % extra load at most).
pub const RETRY_RATIO: f64 = 0.2;
/// The most retry tokens saved up (unless the minimum rate is higher).
pub const RETRY_RESERVE_MAX: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        Self::of(&RetryPolicy::DEFAULT)
    }
}

impl RetryBudget {
    /// A budget of `percent` of requests plus `min_per_second`.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        let min_per_second = f64::from(min_per_second);
        Self {
            ratio: f64::from(percent) / 100.0,
            min_per_second,
            max: RETRY_RESERVE_MAX.max(min_per_second),
            state: Mutex::new((1.0, Instant::now())),
        }
    }

    /// The budget a policy asks for.
    pub fn of(policy: &RetryPolicy) -> Self {
        Self::new(policy.budget_percent, policy.budget_min_per_second)
    }

    /// Whether this budget is the one `policy` asks for.
    pub fn is_for(&self, policy: &RetryPolicy) -> bool {
        self.ratio == f64::from(policy.budget_percent) / 100.0
            && self.min_per_second == f64::from(policy.budget_min_per_second)
    }

    /// Records a request.
    pub fn deposit(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 = (s.0 + self.ratio).min(self.max);
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(s.1).as_secs_f64() * self.min_per_second;
        *s = ((s.0 + earned).min(self.max), now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// What is kept of a request to send it again, or why it cannot be.
// (Unboxed on purpose: it lives in the request's future; a box would be an allocation per request.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Replay {
    /// The head, and the body when it had one.
    Kept(Request<()>, Option<Bytes>),
    /// Not replayable (a bounded metric label).
    No(&'static str),
}

/// What [`Replay::at_once`] decided.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and unpacked at once; boxing the replay would allocate per request"
)]
pub enum Prepared {
    /// Send the request as it is.
    Ready(Request<Body>, Replay),
    /// Read its body whole first ([`Replay::read_body`]).
    ReadBody(Request<Body>),
}

impl Replay {
    /// Keeps what is needed to send `req` again, reading a short body of declared length whole
    /// (see the module doc); returns the request to send first.
    pub async fn prepare(
        req: Request<Body>,
        policy: &RetryPolicy,
        retryable_route: bool,
    ) -> Result<(Request<Body>, Replay), ProxyError> {
        match Replay::at_once(req, policy, retryable_route) {
            Prepared::Ready(req, replay) => Ok((req, replay)),
            Prepared::ReadBody(req) => Replay::read_body(req, policy).await,
        }
    }

    /// What [`Replay::prepare`] decides without reading: the request to send and its replay, or
    /// the request whose body must be read whole first ([`Replay::read_body`]). The
    /// request path calls this and awaits the read, boxed, only when needed: its future stays
    /// small for every other request.
    pub fn at_once(req: Request<Body>, policy: &RetryPolicy, retryable_route: bool) -> Prepared {
        if policy.attempts <= 1 {
            return Prepared::Ready(req, Replay::No("no_retries"));
        }
        let safe = retryable_route
            || is_idempotent(req.method())
            || req.headers().contains_key(&policy.idempotency_header);
        if !safe {
            return Prepared::Ready(req, Replay::No("not_idempotent"));
        }
        if http_util::is_upgrade(&req) {
            return Prepared::Ready(req, Replay::No("upgrade"));
        }
        if req.body().is_end_stream() {
            let head = clone_head(&req);
            return Prepared::Ready(req, Replay::Kept(head, None));
        }
        match req.body().size_hint().exact() {
            Some(n) if n <= u64::from(policy.max_body_bytes) => Prepared::ReadBody(req),
            _ => Prepared::Ready(req, Replay::No("body_too_large")),
        }
    }

    /// Reads a short body of declared length whole and keeps it with the head.
    pub async fn read_body(
        req: Request<Body>,
        policy: &RetryPolicy,
    ) -> Result<(Request<Body>, Replay), ProxyError> {
        let head = clone_head(&req);
        let limit = policy.max_body_bytes as usize;
        let (parts, body) = req.into_parts();
        let bytes = read_whole(body, limit).await.ok_or(ProxyError::Malformed(
            "the request body failed or ran past its length",
        ))?;
        let req = Request::from_parts(parts, body::full(bytes.clone()));
        Ok((req, Replay::Kept(head, Some(bytes))))
    }

    /// A copy to send (`None` when not replayable).
    fn again(&self) -> Option<Request<Body>> {
        match self {
            Replay::Kept(head, body) => {
                let mut req = Request::new(match body {
                    Some(b) => body::full(b.clone()),
                    None => body::empty(),
                });
                *req.method_mut() = head.method().clone();
                *req.uri_mut() = head.uri().clone();
                *req.version_mut() = head.version();
                *req.headers_mut() = head.headers().clone();
                Some(req)
            }
            Replay::No(_) => None,
        }
    }
}

/// A body read whole (`None` when it fails, runs past `limit`, or carries trailers).
async fn read_whole(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let data = frame.ok()?.into_data().ok()?;
        if buf.len() + data.len() > limit {
            return None;
        }
        buf.extend_from_slice(&data);
    }
    Some(buf.freeze())
}

/// The request without its body, to send again.
fn clone_head(req: &Request<Body>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

/// Whether an attempt's outcome is one `policy` retries. A response the endpoint's proxy made
/// because it could not deliver penalizes the endpoint in the balancer.
fn wants_retry(
    policy: &RetryPolicy,
    result: &Result<Response<Body>, ProxyError>,
    load: &EndpointLoad,
) -> bool {
    match result {
        // (a per-try timeout is a 504, as Envoy and the route timeout count it)
        Err(ProxyError::Timeout(_)) => policy.retries_status(http::StatusCode::GATEWAY_TIMEOUT),
        Err(err) => policy.on_connect_failure && err.is_retryable(),
        Ok(rsp) if ProxyError::peer_did_not_deliver(rsp) => {
            load.penalize();
            policy.on_connect_failure || policy.retries_status(rsp.status())
        }
        Ok(rsp) => {
            policy.retries_status(rsp.status())
                // (gRPC is HTTP/2 only: no header lookup for other answers)
                || (policy.on_grpc != 0
                    && rsp.version() == http::Version::HTTP_2
                    && rsp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                        .and_then(|v| v.parse::<u32>().ok())
                        .is_some_and(|code| policy.retries_grpc(code)))
        }
    }
}

/// What the retry stage needs of the target and route.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    /// Where a second attempt is picked (through the request's breaker, if any).
    pub picker: Picker<'a>,
    /// The target's retry budget.
    pub budget: &'a RetryBudget,
    /// The route's policy.
    pub policy: &'a RetryPolicy,
    /// The target's `host:port`.
    pub authority: &'a str,
    /// Where retries are counted.
    pub metrics: &'a Metrics,
    /// The labels they are counted under: the service's namespace and the route.
    pub dst_namespace: &'a Arc<str>,
    /// The route's name (`None`: `default`).
    pub route: Option<&'a Arc<str>>,
}

impl Retry<'_> {
    /// Sends `req` to `first`, and again elsewhere as the module says.
    pub async fn attempts(
        self,
        endpoints: &Endpoints,
        req: Request<Body>,
        replay: Replay,
        first: &Arc<EndpointLoad>,
    ) -> Result<Response<Body>, ProxyError> {
        self.budget.deposit();
        let mut req = req;
        let mut picked: Option<Arc<EndpointLoad>> = None;
        let mut attempt = 1;
        loop {
            let load = picked.as_ref().unwrap_or(first);
            // (Each attempt written out rather than an `async fn`: one future less to move per
            // request.)
            let started = self.picker.start(load);
            let (endpoint, key) = (&load.endpoint, &load.key);
            let result = match self.policy.per_try_timeout {
                None => endpoints.send(req, endpoint, key, self.authority).await,
                // (boxed: only routes with a per-try timeout pay for its timer's room)
                Some(limit) => {
                    let send = endpoints.send(req, endpoint, key, self.authority);
                    Box::pin(within(limit, send)).await
                }
            };
            started.finish(&result);
            if !wants_retry(self.policy, &result, load) {
                return result;
            }
            if attempt >= self.policy.attempts {
                self.count("attempts_exhausted");
                return result;
            }
            let Some(next_req) = replay.again() else {
                if let Replay::No(reason @ ("body_too_large" | "not_idempotent")) = replay {
                    self.count(reason);
                }
                return result;
            };
            if !self.budget.withdraw() {
                self.count("budget_exhausted");
                return result;
            }
            // (skips ejected endpoints; none when the breaker's circuit is open)
            let Pick::Endpoint(next) = self.picker.pick() else {
                return result;
            };
            // the failed answer goes before the next attempt (its connection back to the pool)
            drop(result);
            self.count("retried");
            picked = Some(next);
            req = next_req;
            attempt += 1;
        }
    }

    fn count(&self, reason: &'static str) {
        self.metrics
            .retry_total
            .get_or_create(&RetryLabels {
                direction: Direction::Outbound,
                dst_namespace: self.dst_namespace.clone(),
                route: self.route.cloned().unwrap_or_else(|| "default".into()),
                reason,
            })
            .inc();
    }
}

/// `send` within `limit`, its expiry a [`ProxyError::Timeout`].
async fn within<F>(limit: Duration, send: F) -> Result<Response<Body>, ProxyError>
where
    F: std::future::Future<Output = Result<Response<Body>, ProxyError>>,
{
    tokio::time::timeout(limit, send)
        .await
        .unwrap_or(Err(ProxyError::Timeout(limit)))
}

#[cfg(test)]
mod tests;
