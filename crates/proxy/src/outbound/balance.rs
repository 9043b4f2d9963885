//! Endpoint selection: power of two choices over a peak-EWMA latency estimate.
//!
//! Each endpoint keeps an exponentially weighted moving average of its response latency that
//! jumps up at once on a slow response (the "peak") and decays towards faster ones with time
//! constant [`DECAY`]; its cost is that estimate times (in-flight requests + 1), divided by its
//! weight. The estimate also decays towards zero while no response is observed (as tower's and
//! Linkerd's peak-EWMA do): an endpoint that failed once, and so lost every draw since, becomes
//! cheap again and is tried, instead of being starved for good. To pick, two distinct endpoints are drawn at random and the cheaper one wins: this
//! avoids herding onto one "best" endpoint while still steering away from slow ones.
//!
//! The balance stage of the outbound stack: [`BalancerCache::current`] gives a target's balancer
//! for the service discovery currently reports (rebuilt, keeping known endpoints' state, when the
//! service changed), and [`Balancer::pick`] chooses the endpoint. The balancer does not own
//! connections; [`super::endpoint`] does. Endpoint state survives discovery updates for endpoints
//! that stay (matched by address and target port).
//!
//! An endpoint that answered `429` with a `Retry-After` is avoided until then
//! ([`EndpointLoad::avoid_for`], see [`super::breaker`]): a draw that meets one falls back to
//! picking among the others, and, when every endpoint is avoided, among all of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::endpoint::{EndpointKey, endpoint_key};
use crate::discover::{Endpoint, Service};

/// The estimate a new endpoint starts with.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// What a failure counts as: a response this slow.
pub const FAILURE_RTT: Duration = Duration::from_secs(1);
/// How fast the estimate decays towards faster observations.
pub const DECAY: Duration = Duration::from_secs(10);

/// Load state of one endpoint.
#[derive(Debug)]
pub struct EndpointLoad {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The endpoint's identity as a metric label value (built once).
    pub server_id: Arc<str>,
    /// The endpoint's connection pool key (built once).
    pub key: EndpointKey,
    pending: AtomicUsize,
    ewma: Mutex<(f64, Instant)>,
    /// Whether `avoid_until` is set (read on every draw; the mutex only when set).
    avoided: AtomicBool,
    /// Not picked before this (a `429` with `Retry-After`); tokio's clock, for tests.
    avoid_until: Mutex<Option<tokio::time::Instant>>,
}

impl EndpointLoad {
    /// New state for an endpoint.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            server_id: endpoint.identity.as_str().into(),
            key: endpoint_key(&endpoint),
            endpoint,
            pending: AtomicUsize::new(0),
            ewma: Mutex::new((DEFAULT_RTT.as_secs_f64() * 1e3, Instant::now())),
            avoided: AtomicBool::new(false),
            avoid_until: Mutex::new(None),
        }
    }

    /// Keeps the endpoint out of picks for `wait` (while another endpoint can be picked).
    pub fn avoid_for(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut guard = self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *guard = Some(guard.map_or(until, |u| u.max(until)));
        self.avoided.store(true, Ordering::Relaxed);
    }

    /// Whether the endpoint is avoided now.
    pub fn is_avoided(&self) -> bool {
        self.avoided.load(Ordering::Relaxed) && self.still_avoided()
    }

    #[cold]
    fn still_avoided(&self) -> bool {
        let mut guard = self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *guard {
            Some(until) if tokio::time::Instant::now() < until => true,
            _ => {
                *guard = None;
                self.avoided.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    /// The current cost (lower is better).
    pub fn cost(&self) -> f64 {
        self.cost_at(Instant::now())
    }

    /// The cost at `now`: the estimate decayed for the time since the last observation.
    fn cost_at(&self, now: Instant) -> f64 {
        let (ewma, last) = *self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        ewma * decay(last, now) * (pending + 1.0) / f64::from(self.endpoint.weight.max(1))
    }

    /// Records a request's start; the guard records its end and latency.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self.clone(),
            start: Instant::now(),
            done: false,
        }
    }

    /// Counts a failure the endpoint's proxy answered (its app unreachable) like a failed
    /// request: the endpoint is avoided for a while.
    pub fn penalize(&self) {
        self.observe(FAILURE_RTT);
    }

    fn observe(&self, rtt: Duration) {
        let rtt_ms = rtt.as_secs_f64() * 1e3;
        let mut guard = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        let (ewma, last) = *guard;
        let now = Instant::now();
        let w = decay(last, now);
        let next = if rtt_ms > ewma * w {
            rtt_ms
        } else {
            ewma * w + rtt_ms * (1.0 - w)
        };
        *guard = (next, now);
    }
}

/// The weight left to an estimate made at `last`, at `now`.
fn decay(last: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(last).as_secs_f64();
    (-elapsed / DECAY.as_secs_f64()).exp()
}

/// One in-flight request on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<EndpointLoad>,
    start: Instant,
    done: bool,
}

impl InFlight {
    /// Records that the response arrived now (latency observed).
    pub fn complete(mut self) {
        self.load.observe(self.start.elapsed());
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            // A failure: count it as slow so the endpoint is avoided for a while.
            self.load.observe(self.start.elapsed().max(FAILURE_RTT));
        }
        self.load.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one service and their load.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: Vec<Arc<EndpointLoad>>,
}

impl Balancer {
    /// Builds from a list, keeping the state of endpoints that were already known.
    pub fn update(&self, endpoints: &[Endpoint]) -> Balancer {
        let endpoints = endpoints
            .iter()
            .map(|e| {
                self.endpoints
                    .iter()
                    .find(|old| old.endpoint == *e)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointLoad::new(e.clone())))
            })
            .collect();
        Balancer { endpoints }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Arc<EndpointLoad>] {
        &self.endpoints
    }

    /// Picks an endpoint (power of two choices), `None` when there are none.
    pub fn pick(&self) -> Option<Arc<EndpointLoad>> {
        self.pick_with(&mut fastrand::Rng::new())
    }

    /// Same with a given random source (tests).
    pub fn pick_with(&self, rng: &mut fastrand::Rng) -> Option<Arc<EndpointLoad>> {
        self.pick_where(rng, |_| true)
    }

    /// Picks among the endpoints `allowed` accepts, those not avoided (`429`) first; `None`
    /// when `allowed` accepts none.
    pub fn pick_where(
        &self,
        rng: &mut fastrand::Rng,
        allowed: impl Fn(&EndpointLoad) -> bool,
    ) -> Option<Arc<EndpointLoad>> {
        self.draw(rng, |e| !e.is_avoided() && allowed(e))
            .or_else(|| self.draw(rng, &allowed))
    }

    /// Power of two choices among the endpoints `ok` accepts.
    fn draw(
        &self,
        rng: &mut fastrand::Rng,
        ok: impl Fn(&EndpointLoad) -> bool,
    ) -> Option<Arc<EndpointLoad>> {
        let n = self.endpoints.len();
        if n == 1 {
            let e = &self.endpoints[0];
            return ok(e).then(|| e.clone());
        }
        if n == 0 {
            return None;
        }
        let (a, b) = two_of(rng, n);
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        if ok(ea) && ok(eb) {
            return Some(cheaper(ea, eb).clone());
        }
        // (the rare path: an endpoint is avoided or out of rotation) draw among the others
        let k = self.endpoints.iter().filter(|e| ok(e)).count();
        let nth = |i: usize| self.endpoints.iter().filter(|e| ok(e)).nth(i).cloned();
        match k {
            0 => None,
            1 => nth(0),
            k => {
                let (a, b) = two_of(rng, k);
                let (ea, eb) = (nth(a)?, nth(b)?);
                Some(if eb.cost() < ea.cost() { eb } else { ea })
            }
        }
    }
}

/// Two distinct indices below `n` (at least 2).
fn two_of(rng: &mut fastrand::Rng, n: usize) -> (usize, usize) {
    let a = rng.usize(..n);
    let mut b = rng.usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

fn cheaper<'a>(a: &'a Arc<EndpointLoad>, b: &'a Arc<EndpointLoad>) -> &'a Arc<EndpointLoad> {
    if b.cost() < a.cost() { b } else { a }
}

/// A target's balancer for the service it was built from.
#[derive(Debug, Default)]
pub struct BalancerCache {
    current: Mutex<Option<(Arc<Service>, Arc<Balancer>)>>,
}

impl BalancerCache {
    /// The current service and its balancer (rebuilt when discovery changed the service).
    pub fn current(&self, rx: &watch::Receiver<Arc<Service>>) -> (Arc<Service>, Arc<Balancer>) {
        let service = rx.borrow().clone();
        let mut cached = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match cached.as_ref() {
            Some((s, b)) if Arc::ptr_eq(s, &service) => (s.clone(), b.clone()),
            other => {
                let previous = other.map(|(_, b)| b.clone()).unwrap_or_default();
                let next = Arc::new(previous.update(&service.endpoints));
                *cached = Some((service.clone(), next.clone()));
                (service, next)
            }
        }
    }
}

#[cfg(test)]
mod tests;
