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
//! The balancer does not own connections; [`crate::client`] does. Endpoint state survives
//! discovery updates for endpoints that stay (matched by address and target port).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client::{EndpointKey, endpoint_key};
use crate::discover::Endpoint;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: ([127, 0, 0, 1], port).into(),
            target_port: 80,
            identity: "spiffe://cluster.local/ns/a/sa/a".parse().unwrap(),
            workload: "a".into(),
            namespace: "a".into(),
            weight: 1,
            protocol: crate::discover::EndpointProtocol::Http,
        }
    }

    #[test]
    fn empty_and_single() {
        assert!(Balancer::default().pick().is_none());
        let b = Balancer::default().update(&[ep(1)]);
        assert_eq!(b.pick().unwrap().endpoint.addr.port(), 1);
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let b = Balancer::default().update(&[ep(1), ep(2)]);
        // endpoint 1 is slow: one observation of 500 ms
        let slow = b.endpoints[0].clone();
        slow.observe(Duration::from_millis(500));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100 {
            assert_eq!(b.pick_with(&mut rng).unwrap().endpoint.addr.port(), 2);
        }
    }

    #[test]
    fn in_flight_requests_raise_cost() {
        let b = Balancer::default().update(&[ep(1), ep(2)]);
        let busy: Vec<_> = (0..5).map(|_| b.endpoints[1].start()).collect();
        assert!(b.endpoints[1].cost() > b.endpoints[0].cost());
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(b.pick_with(&mut rng).unwrap().endpoint.addr.port(), 1);
        drop(busy);
        assert_eq!(b.endpoints[1].pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_endpoint_is_tried_again_once_its_penalty_decays() {
        let b = Balancer::default().update(&[ep(1), ep(2)]);
        let (failed, healthy) = (b.endpoints[0].clone(), b.endpoints[1].clone());
        drop(failed.start()); // a failure: counted as a 1 s response
        healthy.observe(Duration::from_millis(2));
        let now = Instant::now();
        assert!(failed.cost_at(now) > healthy.cost_at(now));
        // A minute without traffic later the failed one is cheaper than a busy healthy one, and
        // soon cheaper than an idle one: it gets a request again.
        let later = now + Duration::from_secs(60);
        let _busy = healthy.start();
        assert!(failed.cost_at(later) < healthy.cost_at(now));
        assert!(failed.cost_at(later + Duration::from_secs(60)) < 0.1);
    }

    #[test]
    fn update_keeps_known_state() {
        let b = Balancer::default().update(&[ep(1), ep(2)]);
        b.endpoints[0].observe(Duration::from_millis(900));
        let c = b.update(&[ep(1), ep(3)]);
        assert_eq!(c.len(), 2);
        assert!(Arc::ptr_eq(&b.endpoints[0], &c.endpoints[0]));
        assert!(c.endpoints[0].cost() > c.endpoints[1].cost());
    }
}
