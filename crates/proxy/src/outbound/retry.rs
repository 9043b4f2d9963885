//! The retry stage of the outbound stack: a request whose first attempt failed before any answer
//! (connect, TLS, a broken connection: [`ProxyError::is_retryable`]), or that the endpoint's
//! proxy could not deliver to its app (`502`/`503` with `onemesh-error: connect_failed`,
//! `upstream_failed` or `awaiting_policy`: a pod going away, [`ProxyError::peer_did_not_deliver`]),
//! is sent once more, to another pick of the balancer, when it can be replayed and the target's
//! [`RetryBudget`] allows.
//!
//! Replayable means bodiless (the body is streamed, never buffered), not an upgrade, and
//! idempotent by method or on a route marked `retryable`. Each attempt's latency (or failure) is
//! recorded on the endpoint it went to (the balancer's load state, the request's circuit breaker:
//! [`super::breaker::Attempt`]); the second pick skips ejected endpoints, and none is made when the
//! breaker's circuit is open. Retries are counted in `retry_total` (`retried`, or
//! `budget_exhausted` when the budget said no). The route's timeout covers both attempts (the
//! timeout stage sits above this one).

use std::sync::{Arc, Mutex, PoisonError};

use http::{Request, Response};
use http_body::Body as _;

use super::balance::EndpointLoad;
use super::breaker::{Pick, Picker};
use super::endpoint::Endpoints;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::http_util;
use crate::metrics::{Direction, Metrics, ReasonLabels};

/// Limits retries to a fraction of requests: each request deposits [`RETRY_RATIO`] tokens (up to
/// [`RETRY_RESERVE_MAX`]), each retry spends one. It starts with one token in reserve.
#[derive(Debug)]
pub struct RetryBudget {
    balance: Mutex<f64>,
}

/// Retries allowed per request, on average (20 % extra load at most).
pub const RETRY_RATIO: f64 = 0.2;
/// The most retry tokens saved up.
pub const RETRY_RESERVE_MAX: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            balance: Mutex::new(1.0),
        }
    }
}

impl RetryBudget {
    /// Records a request.
    pub fn deposit(&self) {
        let mut b = self.balance.lock().unwrap_or_else(PoisonError::into_inner);
        *b = (*b + RETRY_RATIO).min(RETRY_RESERVE_MAX);
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.balance.lock().unwrap_or_else(PoisonError::into_inner);
        if *b >= 1.0 {
            *b -= 1.0;
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

/// A copy of a replayable request's head, kept to send it again (none for a request that cannot
/// be replayed).
#[derive(Debug)]
pub struct Replay(Option<Request<()>>);

impl Replay {
    /// Keeps `req`'s head if it may be sent twice: bodiless, not an upgrade, and idempotent or
    /// on a `retryable` route.
    pub fn of(req: &Request<Body>, retryable_route: bool) -> Self {
        let retryable = retryable_route || is_idempotent(req.method());
        Self(
            (retryable && !http_util::is_upgrade(req) && req.body().is_end_stream())
                .then(|| clone_head(req)),
        )
    }
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

/// What the retry stage needs of the target: its balancer, its budget and its `host:port`.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    /// Where a second attempt is picked (through the request's breaker, if any).
    pub picker: Picker<'a>,
    /// The target's retry budget.
    pub budget: &'a RetryBudget,
    /// The target's `host:port`.
    pub authority: &'a str,
    /// Where retries are counted.
    pub metrics: &'a Metrics,
}

impl Retry<'_> {
    /// Sends `req` to `first`, and once more elsewhere as the module says.
    pub async fn attempts(
        self,
        endpoints: &Endpoints,
        req: Request<Body>,
        replay: Replay,
        first: &Arc<EndpointLoad>,
    ) -> Result<Response<Body>, ProxyError> {
        self.budget.deposit();
        // (Each attempt written out rather than an `async fn`: one future less to move per
        // request.)
        let attempt = self.picker.start(first);
        let result = endpoints
            .send(req, &first.endpoint, &first.key, self.authority)
            .await;
        attempt.finish(&result);
        let again = match &result {
            Err(err) => err.is_retryable(),
            Ok(rsp) if ProxyError::peer_did_not_deliver(rsp) => {
                first.penalize();
                true
            }
            Ok(_) => false,
        };
        let Some(head) = replay.0.filter(|_| again) else {
            return result;
        };
        if !self.budget.withdraw() {
            self.count("budget_exhausted");
            return result;
        }
        let Pick::Endpoint(next) = self.picker.pick() else {
            return result;
        };
        self.count("retried");
        let attempt = self.picker.start(&next);
        let req = head.map(|()| body::empty());
        let result = endpoints
            .send(req, &next.endpoint, &next.key, self.authority)
            .await;
        attempt.finish(&result);
        result
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .retry_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Outbound,
                reason: outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests;
