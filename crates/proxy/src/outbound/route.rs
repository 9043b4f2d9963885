//! The route stage of the outbound stack: the first of the service's routes that matches the
//! request's method and path decides its timeout, whether it may be retried although its method
//! is not idempotent, its split over backends, its own circuit breaker if any, and its `route`
//! metric label (`default` when none matches).

use std::sync::Arc;
use std::time::Duration;

use http::Request;

use crate::body::Body;
use crate::discover::{Backend, BreakerConfig, RetryPolicy, Service};

/// What the matched route says about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// The route's name (`None`: no route matched, counted as `default`).
    pub name: Option<Arc<str>>,
    /// Its timeout over every attempt.
    pub timeout: Option<Duration>,
    /// Whether a non-idempotent request may be retried.
    pub retryable: bool,
    /// The route's split (`None`: the service itself).
    pub backends: Option<Arc<[Backend]>>,
    /// Its retry policy (`None`: the default).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The route's own circuit breaker, if it has one.
    pub breaker: Option<Arc<BreakerConfig>>,
}

/// The route of `req` on `service` (nothing allocated: the name is shared).
pub fn matched(service: &Service, req: &Request<Body>) -> Matched {
    match service.route_for(req.method(), req.uri().path()) {
        Some(r) => Matched {
            name: Some(r.name.clone()),
            timeout: r.timeout,
            retryable: r.retryable,
            backends: r.backends.clone(),
            retry: r.retry.clone(),
            breaker: r.breaker.clone(),
        },
        None => Matched::default(),
    }
}

#[cfg(test)]
mod tests;
