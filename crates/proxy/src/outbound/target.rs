//! The target stage of the outbound stack: what a request (or an opaque stream) is for — the
//! absolute URI's authority, else the Host header, else the original destination — resolved by
//! discovery into a [`Resolved`] target, cached.
//!
//! A resolved target holds what every request to it shares: its discovery watch, its balancer,
//! its retry budget, its circuit breakers and the metric handles of each endpoint × route it has
//! sent to. Targets are
//! cached by [`Target`] and, so that a request parses no host once its spelling has been seen, by
//! the host exactly as written; both caches are bounded ([`MAX_RESOLVED`]): a flood of distinct
//! external names must not grow memory without limit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::HashMap;
use http::Request;
use http::header::{self, HeaderValue};

use super::balance::{BalancerCache, EndpointLoad};
use super::breaker::Breakers;
use super::retry::RetryBudget;
use crate::body::Body;
use crate::discover::{Discover, Resolution, RetryPolicy, Target};
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;

/// A resolved target, cached.
pub struct Resolved {
    /// What was resolved.
    pub target: Target,
    /// `host:port` of the target (the transport header's authority, and the Host of a request
    /// that had none).
    pub authority: Box<str>,
    /// Retries to this target on requests no route matched.
    pub budget: Arc<RetryBudget>,
    /// Retries on each named route.
    pub budgets: Mutex<HashMap<Arc<str>, Arc<RetryBudget>>>,
    /// In the mesh (a watch of the service) or not.
    pub resolution: Resolution,
    /// The balancer of the service as last seen.
    pub balancer: BalancerCache,
    /// Metric handles by endpoint and route.
    pub routes: Mutex<HashMap<RouteKey, RouteHandles>>,
    /// The circuit breakers of the service and its routes.
    pub breakers: Breakers,
}

impl Resolved {
    /// The retry budget of `route` (`None`: requests no route matched), made anew when the
    /// route's policy asks for another.
    pub fn budget(&self, route: Option<&Arc<str>>, policy: &RetryPolicy) -> Arc<RetryBudget> {
        let Some(route) = route else {
            return self.budget.clone();
        };
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        match budgets.get(route) {
            Some(b) if b.is_for(policy) => b.clone(),
            _ => {
                if budgets.len() >= MAX_ROUTE_METRICS {
                    budgets.clear();
                }
                let b = Arc::new(RetryBudget::of(policy));
                budgets.insert(route.clone(), b.clone());
                b
            }
        }
    }
}

/// An endpoint's load state, by address (the map holds the `Arc`, so the address cannot be
/// reused while cached; an endpoint whose identity or workload changed has new state, hence new
/// labels), and a route name (`None`: `default`).
pub type RouteKey = (usize, Option<Arc<str>>);

/// An endpoint's load state (held, so that its address in the key stays its own) and the metric
/// handles of one of its routes.
pub type RouteHandles = (Arc<EndpointLoad>, Arc<RouteMetrics>);

/// The most endpoint × route handles kept per target (discovery churn must not grow memory).
pub const MAX_ROUTE_METRICS: usize = 1024;

/// The most targets (and, separately, spellings of request hosts) cached.
pub const MAX_RESOLVED: usize = 10_000;

/// The resolved targets.
pub struct Targets {
    discover: Arc<dyn Discover>,
    /// (SipHash, not foldhash: the keys come from request data, and this map must stay fast under
    /// hosts chosen to collide.)
    resolved: Mutex<std::collections::HashMap<Target, Arc<Resolved>>>,
    /// The same, by the request's host exactly as written (the URI's authority or the Host
    /// header).
    by_host: Mutex<std::collections::HashMap<Box<[u8]>, Arc<Resolved>>>,
}

/// The host a request names as written: its absolute URI's authority, else its Host header.
pub fn host_of(req: &Request<Body>) -> Option<&[u8]> {
    req.uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(header::HOST).map(HeaderValue::as_bytes))
}

impl Targets {
    /// No target resolved yet.
    pub fn new(discover: Arc<dyn Discover>) -> Self {
        Self {
            discover,
            resolved: Mutex::default(),
            by_host: Mutex::default(),
        }
    }

    /// The target of a request that names `host` (see [`host_of`]), else its original
    /// destination.
    pub async fn of_request(
        &self,
        host: Option<&[u8]>,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Arc<Resolved>, ProxyError> {
        match (host, orig_dst) {
            (Some(host), _) => self.resolve_host(host).await,
            (None, Some(dst)) => self.resolve(&Target::Addr(dst)).await,
            (None, None) => Err(ProxyError::Malformed("the request names no host")),
        }
    }

    /// Resolves `target` (once; then from the cache).
    pub async fn resolve(&self, target: &Target) -> Result<Arc<Resolved>, ProxyError> {
        if let Some(r) = self
            .resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
        {
            return Ok(r.clone());
        }
        let resolution = self
            .discover
            .resolve(target)
            .await
            .map_err(|e| ProxyError::DiscoveryUnavailable(e.to_string()))?;
        let resolved = Arc::new(Resolved {
            target: target.clone(),
            authority: target.authority().into(),
            budget: Arc::default(),
            budgets: Mutex::default(),
            resolution,
            balancer: BalancerCache::default(),
            routes: Mutex::default(),
            breakers: Breakers::default(),
        });
        let mut cache = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_RESOLVED {
            cache.clear();
            // The spellings go too, so that a target never has two live states (two retry
            // budgets, two balancers). (Lock order: `resolved`, then `by_host`.)
            self.by_host
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        Ok(cache.entry(target.clone()).or_insert(resolved).clone())
    }

    /// [`Targets::resolve`] for a request's host as written (default port 80).
    async fn resolve_host(&self, host: &[u8]) -> Result<Arc<Resolved>, ProxyError> {
        let cached = (self.by_host.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned();
        if let Some(r) = cached {
            return Ok(r);
        }
        let target = std::str::from_utf8(host)
            .ok()
            .and_then(|a| Target::from_authority(a, 80))
            .ok_or(ProxyError::Malformed(
                "the request's host is not a valid authority",
            ))?;
        let resolved = self.resolve(&target).await?;
        let mut by_host = self.by_host.lock().unwrap_or_else(PoisonError::into_inner);
        if by_host.len() >= MAX_RESOLVED {
            by_host.clear();
        }
        by_host.insert(host.into(), resolved.clone());
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests;
