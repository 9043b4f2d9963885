//! The breaker stage of the outbound stack: circuit breaking per service and per route, and
//! avoidance of endpoints that answered `429` with a `Retry-After`.
//!
//! A [`Breaker`] watches the outcome of every attempt its requests make on each endpoint
//! ([`Attempt::finish`]) and ejects an endpoint that fails: after
//! [`BreakerConfig::consecutive_failures`] failures in a row, or when its success rate over a
//! sliding window ([`SuccessRate`]) falls below the threshold once the window holds at least
//! `min_requests`. An ejected endpoint is not picked for `base_ejection × 2^(n-1)` (capped at
//! `max_ejection`, then jittered down by up to half, so that callers do not probe in step), `n`
//! being the ejections in a row. Then it is on probation: the next request is sent to it (one
//! real request, no synthetic probe); a success makes it healthy again (and resets `n`), a failure
//! ejects it again for longer.
//!
//! At most `max_ejection_percent` of the endpoints are ejected at once: an endpoint that trips
//! beyond the cap stays in rotation, marked failing. When every endpoint is ejected or failing,
//! the failing ones are ejected too, and while every endpoint is ejected requests fail fast with
//! `503 circuit_open` instead of waiting for a dead service ([`Pick::CircuitOpen`]).
//!
//! What is a failure (the outcome rule of [`crate::telemetry`], seen from the endpoint): no
//! response (connect, TLS, a broken connection), a 5xx (the peer proxy's own `502`/`503` included:
//! its app is gone), a gRPC error in the response head, and an attempt dropped before its
//! response (the route's timeout fired: a hung endpoint is a sick one). Not a failure: any 4xx,
//! proxy-made or not (a `403 forbidden` is the caller's policy, a `429 rate_limited` the caller's
//! own rate, neither says the endpoint is sick; a 429 is handled by the avoidance below).
//!
//! Which breaker counts a request: its route's, when the route declares one (it keeps its own
//! endpoint states, and counts only that route's requests); else the service's; else none.
//!
//! `429` avoidance applies with or without a breaker: an endpoint that answered `429` with a
//! `Retry-After` (delta-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`]; anything else is
//! ignored: the header comes from a peer) is not picked until then, unless every endpoint is
//! avoided: a rate limit must not become an outage ([`super::balance::Balancer::pick`]).
//!
//! Cost without a breaker: one `Option` test when the route is matched, one status comparison
//! per attempt, and, while no endpoint is avoided, one relaxed atomic load per candidate in the
//! balancer's draw. With a breaker: one mutex per pick and one per attempt's end; the pick scans
//! the endpoints only while one of them is ejected or on probation.
//!
//! States are exported as `breaker_endpoint_state{dst_service, route, endpoint, state}` (1 for the
//! endpoint's current state of `healthy|ejected|probation|failing`, 0 for the others; `route` is
//! empty for a service's breaker) and ejections as `breaker_ejection_total`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use foldhash::HashMap;
use http::{Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::balance::{Balancer, EndpointLoad, InFlight};
use super::route::Matched;
use crate::body::Body;
use crate::discover::{BreakerConfig, Service, SuccessRate};
use crate::error::ProxyError;
use crate::http_util;
use crate::metrics::{BreakerLabels, BreakerStateLabels, Classification, Metrics};

/// How long a probe may stay unanswered before another request probes the endpoint.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a `Retry-After` keeps an endpoint avoided.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// An endpoint as a breaker keys it: its inbound address and the app port behind it.
type Key = (SocketAddr, u16);

fn key(load: &EndpointLoad) -> Key {
    (load.endpoint.addr, load.endpoint.target_port)
}

/// An endpoint's state in one breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// In rotation; `failing`: it tripped while the ejection cap was reached.
    Healthy {
        /// Tripped but kept in rotation by the cap.
        failing: bool,
    },
    /// Not picked until then.
    Ejected {
        /// End of the ejection.
        until: Instant,
    },
    /// Its ejection ended: the next request probes it.
    Probation {
        /// Since when a probe request is in flight (others keep away); a probe that never
        /// reported (its request was dropped before it was sent) is given up after
        /// [`PROBE_TIMEOUT`].
        probing: Option<Instant>,
    },
}

impl Health {
    fn label(self) -> &'static str {
        match self {
            Health::Healthy { failing: false } => "healthy",
            Health::Healthy { failing: true } => "failing",
            Health::Ejected { .. } => "ejected",
            Health::Probation { .. } => "probation",
        }
    }

    fn out_of_rotation(self) -> bool {
        !matches!(self, Health::Healthy { .. })
    }
}

/// Every state label, for the gauges.
const STATES: [&str; 4] = ["healthy", "failing", "ejected", "probation"];

/// The success-rate window: the current window's counts and the previous one's, weighed by how
/// much of it still overlaps the sliding window.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    ok: u32,
    failed: u32,
    prev_ok: u32,
    prev_failed: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            ok: 0,
            failed: 0,
            prev_ok: 0,
            prev_failed: 0,
        }
    }

    fn record(&mut self, now: Instant, len: Duration, failed: bool) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= len * 2 {
            *self = Window::new(now);
        } else if elapsed >= len {
            self.prev_ok = self.ok;
            self.prev_failed = self.failed;
            self.ok = 0;
            self.failed = 0;
            self.start += len;
        }
        if failed {
            self.failed = self.failed.saturating_add(1);
        } else {
            self.ok = self.ok.saturating_add(1);
        }
    }

    /// (requests, successes) over the sliding window ending at `now`.
    fn totals(&self, now: Instant, len: Duration) -> (f64, f64) {
        let into = now.saturating_duration_since(self.start).as_secs_f64();
        let prev_weight = (1.0 - into / len.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
        let ok = f64::from(self.ok) + f64::from(self.prev_ok) * prev_weight;
        let failed = f64::from(self.failed) + f64::from(self.prev_failed) * prev_weight;
        (ok + failed, ok)
    }

    /// Whether the rate is below the rule's threshold with enough requests to say so.
    fn tripped(&self, now: Instant, rule: &SuccessRate) -> bool {
        let (total, ok) = self.totals(now, rule.window);
        total >= f64::from(rule.min_requests.max(1))
            && ok * 1000.0 < f64::from(rule.min_permille) * total
    }
}

/// One endpoint in one breaker.
#[derive(Debug)]
struct EndpointState {
    health: Health,
    consecutive: u32,
    window: Window,
    /// Ejections in a row (reset by a successful probe).
    ejections: u32,
    /// The state gauges, by [`STATES`] order.
    gauges: Option<[Gauge; 4]>,
}

impl EndpointState {
    fn set(&mut self, health: Health) {
        if let Some(gauges) = &self.gauges {
            let (old, new) = (self.health.label(), health.label());
            for (gauge, state) in gauges.iter().zip(STATES) {
                if state == old {
                    gauge.set(0);
                }
                if state == new {
                    gauge.set(1);
                }
            }
        }
        self.health = health;
    }
}

struct State {
    endpoints: HashMap<Key, EndpointState>,
    /// Endpoints ejected or on probation (0: a pick need not look at states).
    out: usize,
    rng: fastrand::Rng,
}

/// Where a breaker's metrics go.
struct Labels {
    metrics: Arc<Metrics>,
    dst_service: Arc<str>,
    route: Arc<str>,
}

/// The circuit breaker of a service or a route: the endpoint states it keeps.
pub struct Breaker {
    config: Arc<BreakerConfig>,
    labels: Option<Labels>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a pick found.
#[derive(Debug)]
pub enum Pick {
    /// Send the request there.
    Endpoint(Arc<EndpointLoad>),
    /// The service has no endpoints.
    NoEndpoints,
    /// Every endpoint is ejected.
    CircuitOpen,
}

impl Breaker {
    /// A breaker with no state yet; its gauges go to `metrics` under `dst_service` and `route`
    /// (empty for a service's breaker).
    pub fn new(
        config: Arc<BreakerConfig>,
        metrics: Arc<Metrics>,
        dst_service: Arc<str>,
        route: Arc<str>,
    ) -> Self {
        let labels = Labels {
            metrics,
            dst_service,
            route,
        };
        Self::with(config, Some(labels), fastrand::Rng::new())
    }

    fn with(config: Arc<BreakerConfig>, labels: Option<Labels>, rng: fastrand::Rng) -> Self {
        Self {
            config,
            labels,
            state: Mutex::new(State {
                endpoints: HashMap::default(),
                out: 0,
                rng,
            }),
        }
    }

    /// A breaker without metrics and with a seeded jitter (tests).
    #[cfg(test)]
    pub fn for_test(config: BreakerConfig, seed: u64) -> Self {
        Self::with(Arc::new(config), None, fastrand::Rng::with_seed(seed))
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Arc<BreakerConfig> {
        &self.config
    }

    /// The state of the endpoint at `addr` (healthy when it has none yet).
    pub fn health(&self, addr: SocketAddr, target_port: u16) -> Health {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .endpoints
            .get(&(addr, target_port))
            .map_or(Health::Healthy { failing: false }, |e| e.health)
    }

    /// Picks an endpoint of `balancer` as the module says: an endpoint due for its probe first,
    /// else the balancer's pick among the endpoints in rotation.
    pub fn pick(&self, balancer: &Balancer) -> Pick {
        if balancer.is_empty() {
            return Pick::NoEndpoints;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.out == 0 {
            drop(state);
            return balancer.pick().map_or(Pick::NoEndpoints, Pick::Endpoint);
        }
        let now = Instant::now();
        let state = &mut *state;
        let mut probe = None;
        for load in balancer.endpoints() {
            let Some(e) = state.endpoints.get_mut(&key(load)) else {
                continue;
            };
            if let Health::Ejected { until } = e.health
                && until <= now
            {
                e.set(Health::Probation { probing: None });
            }
            let due = match e.health {
                Health::Probation { probing: None } => true,
                Health::Probation {
                    probing: Some(since),
                } => now.saturating_duration_since(since) >= PROBE_TIMEOUT,
                _ => false,
            };
            if probe.is_none() && due {
                e.set(Health::Probation { probing: Some(now) });
                probe = Some(load.clone());
            }
        }
        if let Some(load) = probe {
            return Pick::Endpoint(load);
        }
        let endpoints = &state.endpoints;
        balancer
            .pick_where(&mut state.rng, |load| {
                endpoints
                    .get(&key(load))
                    .is_none_or(|e| !e.health.out_of_rotation())
            })
            .map_or(Pick::CircuitOpen, Pick::Endpoint)
    }

    /// Records the outcome of an attempt on `load` (an endpoint of `balancer`).
    pub fn record(&self, balancer: &Balancer, load: &EndpointLoad, failed: bool) {
        let now = Instant::now();
        let config = &*self.config;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        if state.endpoints.len() > 2 * balancer.len() + 16 {
            self.prune(state, balancer);
        }
        let e = match state.endpoints.entry(key(load)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let gauges = self.labels.as_ref().map(|l| {
                    STATES.map(|state| {
                        l.metrics
                            .breaker_endpoint_state
                            .get_or_create_owned(&BreakerStateLabels {
                                endpoint: self.endpoint_labels(l, load.endpoint.addr),
                                state,
                            })
                    })
                });
                let e = EndpointState {
                    health: Health::Healthy { failing: false },
                    consecutive: 0,
                    window: Window::new(now),
                    ejections: 0,
                    gauges,
                };
                if let Some(g) = &e.gauges {
                    g[0].set(1);
                }
                v.insert(e)
            }
        };
        match e.health {
            Health::Probation { .. } => {
                if failed {
                    self.eject(e, load.endpoint.addr, now, &mut state.rng);
                } else {
                    e.set(Health::Healthy { failing: false });
                    e.ejections = 0;
                    e.consecutive = 0;
                    e.window = Window::new(now);
                    state.out -= 1;
                }
                return;
            }
            // The answer to a request sent before the ejection: the endpoint is out already.
            Health::Ejected { .. } => return,
            Health::Healthy { .. } => {}
        }
        if let Some(rule) = &config.success_rate {
            e.window.record(now, rule.window, failed);
        }
        if !failed {
            e.consecutive = 0;
            if e.health == (Health::Healthy { failing: true })
                && !config
                    .success_rate
                    .as_ref()
                    .is_some_and(|r| e.window.tripped(now, r))
            {
                e.set(Health::Healthy { failing: false });
            }
            return;
        }
        e.consecutive = e.consecutive.saturating_add(1);
        let tripped = (config.consecutive_failures > 0
            && e.consecutive >= config.consecutive_failures)
            || config
                .success_rate
                .as_ref()
                .is_some_and(|r| e.window.tripped(now, r));
        if !tripped {
            return;
        }
        // the cap: (out + 1) / n ≤ max_ejection_percent, among the endpoints discovery has now
        let out = balancer
            .endpoints()
            .iter()
            .filter(|l| {
                state
                    .endpoints
                    .get(&key(l))
                    .is_some_and(|e| e.health.out_of_rotation())
            })
            .count();
        let n = balancer.len().max(1);
        let Some(e) = state.endpoints.get_mut(&key(load)) else {
            return;
        };
        if (out + 1) * 100 <= usize::from(config.max_ejection_percent) * n {
            self.eject(e, load.endpoint.addr, now, &mut state.rng);
            state.out += 1;
            return;
        }
        e.set(Health::Healthy { failing: true });
        // every endpoint out or failing: the service is down, eject the failing ones too
        let all_failing = balancer.endpoints().iter().all(|l| {
            state
                .endpoints
                .get(&key(l))
                .is_some_and(|e| e.health != (Health::Healthy { failing: false }))
        });
        if all_failing {
            for l in balancer.endpoints() {
                if let Some(e) = state.endpoints.get_mut(&key(l))
                    && e.health == (Health::Healthy { failing: true })
                {
                    self.eject(e, l.endpoint.addr, now, &mut state.rng);
                    state.out += 1;
                }
            }
        }
    }

    /// Ejects `e` (the state of `addr`) for its next backoff.
    fn eject(
        &self,
        e: &mut EndpointState,
        addr: SocketAddr,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) {
        e.ejections = e.ejections.saturating_add(1);
        let until = now + backoff(&self.config, e.ejections, rng);
        e.set(Health::Ejected { until });
        e.consecutive = 0;
        e.window = Window::new(now);
        if let Some(l) = &self.labels {
            // (labels built on an ejection only: a rare event)
            l.metrics
                .breaker_ejection_total
                .get_or_create(&self.endpoint_labels(l, addr))
                .inc();
        }
    }

    fn endpoint_labels(&self, l: &Labels, addr: SocketAddr) -> BreakerLabels {
        BreakerLabels {
            dst_service: l.dst_service.clone(),
            route: l.route.clone(),
            endpoint: addr.to_string().into(),
        }
    }

    /// Forgets endpoints the balancer no longer has (and their gauges).
    fn prune(&self, state: &mut State, balancer: &Balancer) {
        let mut removed = Vec::new();
        state.endpoints.retain(|k, e| {
            let keep = balancer.endpoints().iter().any(|l| key(l) == *k);
            if !keep {
                removed.push((*k, e.health));
            }
            keep
        });
        for (k, health) in removed {
            if health.out_of_rotation() {
                state.out -= 1;
            }
            if let Some(l) = &self.labels {
                for state in STATES {
                    l.metrics
                        .breaker_endpoint_state
                        .remove(&BreakerStateLabels {
                            endpoint: self.endpoint_labels(l, k.0),
                            state,
                        });
                }
            }
        }
    }
}

impl Drop for Breaker {
    /// Removes its gauges (a breaker replaced by a new configuration, or whose target left the
    /// cache, must not leave its last states behind).
    fn drop(&mut self) {
        let Some(l) = &self.labels else {
            return;
        };
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for k in state.endpoints.keys() {
            for s in STATES {
                l.metrics
                    .breaker_endpoint_state
                    .remove(&BreakerStateLabels {
                        endpoint: BreakerLabels {
                            dst_service: l.dst_service.clone(),
                            route: l.route.clone(),
                            endpoint: k.0.to_string().into(),
                        },
                        state: s,
                    });
            }
        }
    }
}

/// The length of the `ejections`-th ejection in a row: `base × 2^(ejections-1)`, capped at
/// `max`, then jittered into `[d/2, d]`.
pub fn backoff(config: &BreakerConfig, ejections: u32, rng: &mut fastrand::Rng) -> Duration {
    let doublings = ejections.saturating_sub(1).min(31);
    let full = config
        .base_ejection
        .saturating_mul(1 << doublings)
        .min(config.max_ejection);
    full.mul_f64(1.0 - rng.f64() * 0.5)
}

/// The breakers of one target: the service's and each route's, rebuilt when their configuration
/// changes (their states start over then).
#[derive(Default)]
pub struct Breakers {
    service: Mutex<Option<Arc<Breaker>>>,
    routes: Mutex<Vec<(Arc<str>, Arc<Breaker>)>>,
}

/// The most route breakers kept per target.
const MAX_ROUTE_BREAKERS: usize = 64;

impl Breakers {
    /// The breaker that counts a request to `service` on `route`, if any.
    pub fn of(
        &self,
        service: &Service,
        route: &Matched,
        metrics: &Arc<Metrics>,
    ) -> Option<Arc<Breaker>> {
        if let (Some(config), Some(name)) = (&route.breaker, &route.name) {
            let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = routes.iter().position(|(n, _)| n == name) {
                if routes[i].1.config == *config {
                    return Some(routes[i].1.clone());
                }
                routes.swap_remove(i);
            }
            if routes.len() >= MAX_ROUTE_BREAKERS {
                routes.clear();
            }
            let b = Arc::new(Breaker::new(
                config.clone(),
                metrics.clone(),
                service.name.clone(),
                name.clone(),
            ));
            routes.push((name.clone(), b.clone()));
            return Some(b);
        }
        let config = service.breaker.as_ref()?;
        let mut current = self.service.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(b) if b.config == *config => Some(b.clone()),
            _ => {
                let b = Arc::new(Breaker::new(
                    config.clone(),
                    metrics.clone(),
                    service.name.clone(),
                    "".into(),
                ));
                *current = Some(b.clone());
                Some(b)
            }
        }
    }
}

/// The balancer as a request's breaker (if any) lets it pick, and the recording of each attempt.
#[derive(Clone, Copy)]
pub struct Picker<'a> {
    /// The service's endpoints and their load.
    pub balancer: &'a Balancer,
    /// The request's breaker.
    pub breaker: Option<&'a Breaker>,
}

impl<'a> Picker<'a> {
    /// Picks an endpoint.
    pub fn pick(&self) -> Pick {
        match self.breaker {
            None => self
                .balancer
                .pick()
                .map_or(Pick::NoEndpoints, Pick::Endpoint),
            Some(b) => b.pick(self.balancer),
        }
    }

    /// Starts an attempt on `load`.
    pub fn start(&self, load: &'a Arc<EndpointLoad>) -> Attempt<'a> {
        Attempt {
            in_flight: Some(load.start()),
            load,
            breaker: self.breaker.map(|b| (b, self.balancer)),
        }
    }
}

/// One attempt on an endpoint: its end is recorded on the balancer's load state, on the breaker,
/// and, for a `429` with `Retry-After`, as an avoidance. Dropped unfinished (the route's timeout
/// fired), it counts as a failure.
pub struct Attempt<'a> {
    in_flight: Option<InFlight>,
    load: &'a Arc<EndpointLoad>,
    breaker: Option<(&'a Breaker, &'a Balancer)>,
}

impl Attempt<'_> {
    /// Records the attempt's outcome.
    pub fn finish(mut self, result: &Result<Response<Body>, ProxyError>) {
        if let Ok(rsp) = result {
            if let Some(in_flight) = self.in_flight.take() {
                in_flight.complete();
            }
            if rsp.status() == StatusCode::TOO_MANY_REQUESTS {
                self.rate_limited(rsp);
            }
        }
        // (classified only for a breaker: the headers are not scanned otherwise)
        if let Some((breaker, balancer)) = self.breaker.take() {
            let failed = result.as_ref().map_or(true, is_failure);
            breaker.record(balancer, self.load, failed);
        }
    }

    #[cold]
    fn rate_limited(&self, rsp: &Response<Body>) {
        let value = rsp.headers().get(http::header::RETRY_AFTER);
        if let Some(wait) = value.and_then(|v| retry_after(v.as_bytes(), SystemTime::now())) {
            self.load.avoid_for(wait);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some((breaker, balancer)) = self.breaker.take() {
            breaker.record(balancer, self.load, true);
        }
    }
}

/// Whether a response says the endpoint is failing (see the module): a 5xx or a gRPC error; never
/// a 4xx.
pub fn is_failure<B>(rsp: &Response<B>) -> bool {
    !rsp.status().is_client_error() && http_util::classify(rsp) == Classification::Failure
}

/// How long a `Retry-After` value asks to wait from `now`: delta-seconds or an HTTP-date, capped
/// at [`MAX_RETRY_AFTER`]; `None` for anything else (or a date already past).
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    if value.is_empty() {
        return None;
    }
    let wait = if value.iter().all(u8::is_ascii_digit) {
        // delta-seconds; a number too long for u64 is far beyond the cap anyway
        let secs = std::str::from_utf8(value)
            .ok()?
            .parse::<u64>()
            .unwrap_or(u64::MAX);
        Duration::from_secs(secs)
    } else {
        let date = httpdate::parse_http_date(std::str::from_utf8(value).ok()?).ok()?;
        date.duration_since(now).ok()?
    };
    (!wait.is_zero()).then(|| wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests;
