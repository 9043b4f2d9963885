//! The inbound's rate limits (`kind: RateLimitPolicy`): token buckets per workload (optionally
//! per port), in total and per caller identity, kept by this proxy alone (each replica has its
//! own buckets, as Linkerd's local rate limits).
//!
//! A bucket is a GCRA cell ([`Bucket`]): one `AtomicU64` holding the "theoretical arrival time"
//! in nanoseconds on a clock of the limit's own, updated by compare-and-swap. It refills by
//! arithmetic on the time of the request (no task, no timer per bucket), so it runs on tokio's
//! clock and tests drive it with paused time. A bucket of rate `r` and burst `b` lets `b`
//! requests through at once and then one every `1/r` s; a refused request learns when the next
//! one would pass (the `Retry-After`).
//!
//! Who is who: the caller is the verified peer identity of the mTLS connection, never a header
//! (`onemesh-client-id` from outside is removed before anything reads it). Callers without an
//! identity share one bucket. Callers named by an override share that override's bucket; every
//! other caller gets a bucket of its own, in a map of at most [`MAX_CALLERS`] entries: when it is
//! full, idle buckets (full again, so forgetting them loses nothing) are dropped, and if none is
//! idle the newcomer shares one overflow bucket at the per-identity rate until some go idle.
//!
//! A request must pass its caller's bucket and then the total one; a refusal takes no token from
//! the total. What this module does not do: decide the order of the inbound's stages, answer the
//! 429 ([`crate::error::ProxyError::RateLimited`]) or count it (the inbound does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashMap;
use onemesh_identity::SpiffeId;
use tokio::time::Instant;

use crate::path::CheckedPath;
use crate::policy::RouteMatch;

/// At most this many per-identity buckets per limit (see the module doc).
pub const MAX_CALLERS: usize = 1024;

/// A rate: requests per second, and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests that may pass at once after a quiet period (at least 1).
    pub burst: u32,
}

/// A per-caller rate for some callers, in one bucket they share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The rate.
    pub rate: Rate,
    /// Callers by identity.
    pub identities: Vec<SpiffeId>,
    /// Every meshed caller of these namespaces.
    pub namespaces: Vec<String>,
}

impl Override {
    fn names(&self, caller: &SpiffeId) -> bool {
        self.identities.contains(caller) || self.namespaces.iter().any(|n| n == caller.namespace())
    }
}

/// Which bucket refused a request (the `limit` label of `rate_limited_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The workload's (or port's) total.
    Total,
    /// The caller's own bucket (or the shared one of unauthenticated callers).
    Identity,
    /// An override's bucket.
    Override,
}

impl Scope {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Total => "total",
            Scope::Identity => "identity",
            Scope::Override => "override",
        }
    }
}

/// A refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Which bucket refused.
    pub scope: Scope,
    /// When the next request from this caller would pass.
    pub retry_after: Duration,
}

/// One rate limit in force, with its buckets.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// The policy's name (metric label, 429 body).
    pub name: Arc<str>,
    /// Workload ports (as the inbound sees them) it covers; empty = all.
    pub ports: Vec<u16>,
    /// The requests it covers on those ports (methods, path prefix; empty = every request).
    pub matches: RouteMatch,
    /// Every caller together.
    pub total: Option<Rate>,
    /// Each caller on its own (unauthenticated callers together).
    pub identity: Option<Rate>,
    /// Other per-caller rates for named callers.
    pub overrides: Vec<Override>,
    buckets: Arc<Buckets>,
}

/// Two limits are equal when their settings are: the buckets are state, not configuration.
impl PartialEq for RateLimit {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.ports == other.ports
            && self.matches == other.matches
            && self.total == other.total
            && self.identity == other.identity
            && self.overrides == other.overrides
    }
}

impl RateLimit {
    /// A limit with fresh (full) buckets.
    pub fn new(
        name: Arc<str>,
        ports: Vec<u16>,
        total: Option<Rate>,
        identity: Option<Rate>,
        overrides: Vec<Override>,
    ) -> Self {
        let buckets = Arc::new(Buckets {
            epoch: Instant::now(),
            total: total.map(Bucket::new),
            overrides: overrides.iter().map(|o| Bucket::new(o.rate)).collect(),
            unauthenticated: identity.map(Bucket::new),
            overflow: identity.map(Bucket::new),
            callers: Mutex::default(),
        });
        RateLimit {
            name,
            ports,
            matches: RouteMatch::default(),
            total,
            identity,
            overrides,
            buckets,
        }
    }

    /// Takes over the buckets of `old` if it is the same limit, so that a policy update that
    /// does not touch this limit does not refill its buckets.
    pub fn adopt(&mut self, old: &RateLimit) {
        if self == old {
            self.buckets = old.buckets.clone();
        }
    }

    /// The same limit, only for the requests `matches` matches.
    pub fn matching(mut self, matches: RouteMatch) -> Self {
        self.matches = matches;
        self
    }

    /// Whether the limit covers a request to `port`.
    pub fn covers(&self, port: u16, method: &http::Method, path: CheckedPath<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port)) && self.matches.matches(method, path)
    }

    /// Takes a token for a request from `caller` (its verified identity) at `now`.
    pub fn check(&self, caller: Option<&SpiffeId>, now: Instant) -> Result<(), Limited> {
        let b = &*self.buckets;
        let at = now.saturating_duration_since(b.epoch);
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let refused = |scope| move |retry_after| Limited { scope, retry_after };
        let over = caller.and_then(|id| self.overrides.iter().position(|o| o.names(id)));
        match (caller, over) {
            (Some(_), Some(i)) => {
                if let Some(bucket) = b.overrides.get(i) {
                    bucket.take(at).map_err(refused(Scope::Override))?;
                }
            }
            (Some(id), None) => {
                if let Some(rate) = self.identity {
                    b.take_for(id.as_str(), rate, at)
                        .map_err(refused(Scope::Identity))?;
                }
            }
            (None, _) => {
                if let Some(bucket) = &b.unauthenticated {
                    bucket.take(at).map_err(refused(Scope::Identity))?;
                }
            }
        }
        if let Some(total) = &b.total {
            total.take(at).map_err(refused(Scope::Total))?;
        }
        Ok(())
    }

    /// How many callers have a bucket of their own now.
    pub fn tracked_callers(&self) -> usize {
        self.buckets.callers().len()
    }
}

/// The buckets of one limit.
#[derive(Debug)]
struct Buckets {
    /// Time zero of every bucket of this limit.
    epoch: Instant,
    total: Option<Bucket>,
    /// One per override, in the same order.
    overrides: Vec<Bucket>,
    unauthenticated: Option<Bucket>,
    /// For identities beyond [`MAX_CALLERS`] while no bucket is idle.
    overflow: Option<Bucket>,
    callers: Mutex<HashMap<Box<str>, Bucket>>,
}

impl Buckets {
    fn callers(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Bucket>> {
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_for(&self, caller: &str, rate: Rate, at: u64) -> Result<(), Duration> {
        let mut callers = self.callers();
        if let Some(bucket) = callers.get(caller) {
            return bucket.take(at);
        }
        if callers.len() >= MAX_CALLERS {
            callers.retain(|_, b| !b.idle(at));
        }
        if callers.len() >= MAX_CALLERS {
            drop(callers);
            return match &self.overflow {
                Some(bucket) => bucket.take(at),
                None => Ok(()),
            };
        }
        let bucket = Bucket::new(rate);
        let taken = bucket.take(at);
        callers.insert(caller.into(), bucket);
        taken
    }
}

/// A token bucket as a GCRA cell: `tat` is the time (ns since the limit's epoch) at which the
/// bucket would be full again.
#[derive(Debug)]
struct Bucket {
    /// Time one token takes to come back, ns.
    interval: u64,
    /// `burst * interval`: how far ahead of now `tat` may run.
    tolerance: u64,
    tat: AtomicU64,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        let interval = 1_000_000_000 / u64::from(rate.per_second.max(1));
        Bucket {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1))),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token at `at`, or says how long until one is there.
    fn take(&self, at: u64) -> Result<(), Duration> {
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let next = current.max(at).saturating_add(self.interval);
            let ahead = next - at;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Full again: forgetting it changes nothing.
    fn idle(&self, at: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= at
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1: `0` would invite an immediate retry
/// that is refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The first limit covering the request (to `port`, its method and path) that refuses `caller`
/// now, with its refusal.
pub fn check<'a>(
    limits: &'a [RateLimit],
    (port, method, path): (u16, &http::Method, CheckedPath<'_>),
    caller: Option<&SpiffeId>,
    now: Instant,
) -> Result<(), (&'a RateLimit, Limited)> {
    for limit in limits.iter().filter(|l| l.covers(port, method, path)) {
        limit.check(caller, now).map_err(|l| (limit, l))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
