//! The inbound's fault stage: delays and aborts declared on routes (`spec.fault` of a Route),
//! injected on the serving side so that callers' timeouts, retries and breakers meet them
//! exactly as they would meet a slow or failing service.
//!
//! A [`FaultRule`] comes from one route whose service (or one of whose backends) selects this
//! workload, limited to the ports that service reaches here. The inbound cannot tell which
//! service name a request was addressed to (the transport header carries a port, not a name), so
//! a rule matches by port, method, path prefix and, optionally, a header; two services over the
//! same workload port therefore share their faults. The first rule that matches a request
//! decides; a request no rule matches costs one `is_empty()` when none is declared.
//!
//! Draws: each percentage is drawn per request from `fastrand`'s thread-local generator (no lock,
//! no syscall); tests pass their own seeded generator to [`FaultRule::draw`]. A delay comes
//! before an abort (both may hit one request), as in Envoy. The delay is a timer inside the
//! request's own future: with HTTP/2 the connection's other streams go on meanwhile.
//!
//! What this module does not do: count (the inbound counts `fault_injected_total`), or build
//! the abort's response ([`crate::error::ProxyError::FaultAbort`] does, with
//! `onemesh-error: fault_injected`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::path::CheckedPath;
use crate::policy::RouteMatch;

/// How an aborted request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortWith {
    /// This HTTP status (4xx or 5xx).
    Http(StatusCode),
    /// A gRPC "trailers-only" answer (HTTP 200) with this `grpc-status` (1-16).
    Grpc(u32),
}

/// One fault, on the requests of one route.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// The route's name (the `route` label of `fault_injected_total`).
    pub route: Arc<str>,
    /// The workload ports (as the inbound sees them) it applies to; empty = all.
    pub ports: Vec<u16>,
    /// The route's method and path prefix.
    pub matches: RouteMatch,
    /// Only requests carrying this header (with this value, if given).
    pub header: Option<(HeaderName, Option<HeaderValue>)>,
    /// Answer instead of forwarding, for `percent` of the requests.
    pub abort: Option<(AbortWith, f64)>,
    /// Wait this long before forwarding, for `percent` of the requests.
    pub delay: Option<(Duration, f64)>,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Injection {
    /// Wait first.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<AbortWith>,
}

impl FaultRule {
    /// Whether the rule applies to this request.
    pub fn matches(
        &self,
        port: u16,
        method: &Method,
        path: CheckedPath<'_>,
        headers: &HeaderMap,
    ) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && self.matches.matches(method, path)
            && match &self.header {
                None => true,
                Some((name, None)) => headers.contains_key(name),
                Some((name, Some(value))) => headers.get_all(name).iter().any(|v| v == value),
            }
    }

    /// Draws this request's fate; `roll` yields uniform numbers in `[0, 1)`.
    pub fn draw(&self, mut roll: impl FnMut() -> f64) -> Injection {
        let hit = |percent: f64, roll: &mut dyn FnMut() -> f64| {
            percent >= 100.0 || (percent > 0.0 && roll() * 100.0 < percent)
        };
        Injection {
            delay: self.delay.and_then(|(d, p)| hit(p, &mut roll).then_some(d)),
            abort: self.abort.and_then(|(a, p)| hit(p, &mut roll).then_some(a)),
        }
    }
}

/// The first rule matching the request, if any.
pub fn find<'a>(
    rules: &'a [FaultRule],
    port: u16,
    method: &Method,
    path: CheckedPath<'_>,
    headers: &HeaderMap,
) -> Option<&'a FaultRule> {
    rules
        .iter()
        .find(|r| r.matches(port, method, path, headers))
}

#[cfg(test)]
mod tests;
