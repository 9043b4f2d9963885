//! A request's outcome, recorded in one place for both directions with one rule.
//!
//! Every proxied HTTP request ends in [`finish`], inbound and outbound alike, whether it was
//! answered by the upstream or failed in the proxy (policy, no endpoints, discovery, a loop, a bad
//! head, connect, timeout): the failure becomes its response ([`ProxyError::to_response`], with
//! `onemesh-error`), is counted in `proxy_error_total` by reason, and the response the client gets
//! is counted once in `response_total` and the latency histogram under the request's route labels.
//!
//! The rule: a request is classified by the response the client gets
//! ([`http_util::classify`]), whoever made it: a 5xx, a gRPC error, or an answer made by a proxy
//! (it carries `onemesh-error`) is a failure; anything else, an app's own 4xx included, a success.
//! A proxy-made `403 forbidden` is therefore a failure in both directions: on the inbound that
//! refused it, and on the caller's outbound that passed the refusal back to its app (as DESIGN.md
//! has it: "failure = 5xx or a proxy error"; a business refusal such as a 402 is a success).
//!
//! The same place offers the request to the tap hub ([`publish`], [`crate::tap`]) when the hub
//! captured the request's head (a tap is attached or access logs are on).
//!
//! What is not here: which labels a request is counted under is its direction's business (the
//! inbound's connection, the outbound's endpoint and route, or what was known when it failed
//! earlier); this module only records.

use std::time::Instant;

use http::Response;

use crate::body::Body;
use crate::error::ProxyError;
use crate::http_util;
use crate::metrics::{Direction, Metrics, RouteMetrics};
use crate::tap::Pending;

/// Records the outcome of a request counted under `route` (whose `request_total` was counted when
/// it started) and returns what the client gets.
pub fn finish(
    metrics: &Metrics,
    direction: Direction,
    route: &RouteMetrics,
    start: Instant,
    result: Result<Response<Body>, ProxyError>,
) -> Response<Body> {
    let rsp = match result {
        Ok(rsp) => rsp,
        Err(err) => {
            metrics.error(direction, err.outcome().reason);
            err.to_response()
        }
    };
    route.record(metrics, start, rsp.status(), http_util::classify(&rsp));
    rsp
}

/// Offers a request's event to the tap hub, when the hub captured its head (something listens).
#[inline]
pub fn publish(
    tap: Option<Box<Pending>>,
    direction: Direction,
    route: &RouteMetrics,
    start: Instant,
    rsp: &Response<Body>,
) {
    if let Some(pending) = tap {
        pending.publish(direction, &route.labels, start, rsp);
    }
}

#[cfg(test)]
mod tests;
