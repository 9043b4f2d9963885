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

use std::sync::atomic::{AtomicUsize, Ordering};
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

    /// Picks an endpoint (power of two choices), `None` when there are none.
    pub fn pick(&self) -> Option<Arc<EndpointLoad>> {
        self.pick_with(&mut fastrand::Rng::new())
    }

    /// Same with a given random source (tests).
    pub fn pick_with(&self, rng: &mut fastrand::Rng) -> Option<Arc<EndpointLoad>> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0].clone()),
            n => {
                let a = rng.usize(..n);
                let mut b = rng.usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                Some(if eb.cost() < ea.cost() { eb } else { ea }.clone())
            }
        }
    }
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
