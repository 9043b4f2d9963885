//! The outbound side: the application's traffic to other services.
//!
//! Per connection ([`Outbound::handle`]), top to bottom:
//!
//! 1. accept: read the original destination (`SO_ORIGINAL_DST`) when iptables redirected us;
//! 2. opaque ports / opaque services skip detection;
//! 3. detect: HTTP/1, HTTP/2 or opaque (a timeout counts as opaque);
//! 4. HTTP: check the first request head, then serve HTTP/1 or HTTP/2, each request through the
//!    request stack below;
//! 5. opaque ([`Outbound::opaque`]): resolve the original destination (or the tcp forward's service) and
//!    splice bytes over mTLS (or plain, for egress); closed after
//!    `ONEMESH_PROXY_STREAM_IDLE_TIMEOUT` without a byte either way.
//!
//! Per HTTP request, the stack of stages ([`Outbound::proxy`]), assembled top to bottom in one
//! function, each stage a module:
//!
//! 1. refuse an `Upgrade: h2c` (or `HTTP2-Settings`) request with `400 h2c_upgrade`: the app must
//!    not tunnel HTTP/2 through its own proxy, where no later request would be seen;
//! 2. [`target`]: the absolute URI's authority, the Host header or the original destination,
//!    resolved by discovery (cached);
//! 3. [`egress`]: a name outside the mesh is forwarded plain, with loop detection;
//! 4. [`balance`]: the service's current endpoints and their load (P2C + peak EWMA);
//! 5. [`route`]: the first matching route (timeout, retry policy, split, breaker, metric label);
//! 6. [`split`]: a route with backends sends the request to one of them, by weight (another
//!    service: its own endpoints, balancer and breaker);
//! 7. [`breaker`]: the route's circuit breaker, else the service's (if any), picks an endpoint
//!    in rotation — one due for its probation first — and hears every attempt's outcome (none:
//!    `503 no_endpoints`; every one ejected: `503 circuit_open`); endpoints that answered `429`
//!    are avoided for their `Retry-After`, breaker or not;
//! 8. [`timeout`]: the route's timeout over every attempt (`504 timeout`);
//! 9. [`retry`]: a request safe to repeat that failed as the route's retry policy says goes again
//!    to another pick, up to the policy's attempts, within the route's budget;
//! 10. [`endpoint`]: the head rewritten for the hop (written once for every hop), then mTLS to the
//!     endpoint's inbound proxy: HTTP/1 on a pooled HTTP/1.1 connection (an upgrade keeps its
//!     connection), HTTP/2 on the shared HTTP/2 connection (and HTTP/1 too when
//!     `ONEMESH_PROXY_HTTP1_TRANSPORT=h2`).
//!
//! The request's outcome is recorded once, when it ends, by [`crate::telemetry::finish`] (one
//! rule for both directions: a 5xx, a gRPC error or a proxy's own answer is a failure), under
//! the endpoint and route it went to — or, for a request that failed before an endpoint was chosen
//! (h2c, malformed, discovery unavailable, no endpoints, circuit open), under what was known by
//! then: the service's namespace if resolved, the route if matched, no
//! `dst_workload` or `server_id`, `tls="no_identity"`. Every failure on this path becomes a
//! response through [`ProxyError::to_response`].

pub mod balance;
pub mod breaker;
pub mod egress;
pub mod endpoint;
mod opaque;
pub mod retry;
pub mod route;
pub mod split;
pub mod target;
pub mod timeout;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Instant;

use futures_util::FutureExt;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use self::balance::{Balancer, EndpointLoad};
use self::breaker::{Pick, Picker};
use self::egress::Egress;
use self::endpoint::{Endpoints, MeshClient, Upgrades};
use self::retry::{Prepared, Replay, Retry};
use self::target::{MAX_ROUTE_METRICS, Resolved, Targets};
use crate::body::{self, Body};
use crate::client::PlainClients;
use crate::config::Http1Transport;
use crate::detect::{self, Detected};
use crate::discover::{
    Backend, DEFAULT_RETRY, Discover, EndpointProtocol, Resolution, Service, Target,
};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http_util;
use crate::io::PrefixedIo;
use crate::metrics::{
    Direction, EdgeLabels, Metrics, ReasonLabels, RouteLabels, RouteMetrics, Tls,
};
use crate::orig_dst::original_dst;
use crate::server::{self, HttpLimits, HttpService};
use crate::telemetry;

pub use self::retry::{RETRY_RATIO, RETRY_RESERVE_MAX, RetryBudget};

/// Settings of the outbound side.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// Detection deadline.
    pub detect_timeout: std::time::Duration,
    /// How long a redirected client may stay silent before it is taken for a
    /// server-speaks-first protocol (see [`detect::detect`]).
    pub detect_first_byte: std::time::Duration,
    /// HTTP limits.
    pub limits: HttpLimits,
    /// TCP connect timeout (egress).
    pub connect_timeout: std::time::Duration,
    /// Ports carried as opaque TCP without detection.
    pub opaque_ports: std::collections::BTreeSet<u16>,
    /// This workload's namespace.
    pub namespace: Arc<str>,
    /// This workload's name.
    pub workload: Arc<str>,
    /// How the app's HTTP/1 requests travel to other proxies.
    pub http1_transport: Http1Transport,
    /// How long a spliced stream may move no byte before it is closed.
    pub stream_idle_timeout: std::time::Duration,
    /// Where requests are published for tap and access logs.
    pub tap: Arc<crate::tap::Hub>,
}

/// The outbound proxy.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OutboundSettings,
    targets: Targets,
    endpoints: Endpoints,
    egress: Egress,
    metrics: Arc<Metrics>,
    /// The metric handles of egress requests (made on the first).
    egress_metrics: OnceLock<Arc<RouteMetrics>>,
}

/// The labels a request's outcome is counted under.
enum Counted {
    /// The handles of the endpoint and route (or egress) it was sent to; its `request_total` was
    /// counted when it went out.
    Sent(Arc<RouteMetrics>),
    /// It failed before an endpoint was chosen: the service's namespace if it was resolved, and
    /// the route if one matched.
    Unsent {
        dst_namespace: Option<Arc<str>>,
        route: Option<Arc<str>>,
    },
}

/// Nothing known yet.
const UNKNOWN: Counted = Counted::Unsent {
    dst_namespace: None,
    route: None,
};

impl Outbound {
    /// Builds the outbound side. Fails only when the OS's random number generator does (the
    /// egress id comes from it).
    pub fn new(
        settings: OutboundSettings,
        discover: Arc<dyn Discover>,
        mesh: MeshClient,
        plain: PlainClients,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::BuildError> {
        // From the OS's cryptographic RNG, once per process: not derivable from anything else
        // the process made (fastrand is for jitter and balancer picks only).
        let egress_id: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| crate::BuildError::Random)?
            .expose();
        let upgrades = Upgrades {
            idle: settings.stream_idle_timeout,
            metrics: metrics.clone(),
            namespace: settings.namespace.clone(),
            workload: settings.workload.clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                targets: Targets::new(discover),
                endpoints: Endpoints {
                    mesh,
                    transport: settings.http1_transport,
                    upgrades: upgrades.clone(),
                },
                egress: Egress {
                    plain,
                    egress_id: HeaderValue::from(u64::from_ne_bytes(egress_id)),
                    upgrades,
                },
                settings,
                metrics,
                egress_metrics: OnceLock::new(),
            }),
        })
    }

    fn detected(&self, outcome: &'static str) {
        self.inner
            .metrics
            .detect_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Outbound,
                reason: outcome,
            })
            .inc();
    }

    /// Handles one connection accepted on the outbound listener.
    pub async fn handle(self, mut tcp: TcpStream, _peer: SocketAddr, drain: Drain) {
        // accept: where was this connection going before iptables sent it here?
        let orig_dst = original_dst(&tcp);
        // opaque ports and opaque services skip detection
        if let Some(dst) = orig_dst {
            let opaque_service = match self.inner.targets.resolve(&Target::Addr(dst)).await {
                Ok(r) => match &r.resolution {
                    Resolution::Mesh(rx) => rx
                        .borrow()
                        .endpoints
                        .first()
                        .is_some_and(|e| e.protocol == EndpointProtocol::Opaque),
                    Resolution::External => false,
                },
                Err(_) => false,
            };
            if opaque_service || self.inner.settings.opaque_ports.contains(&dst.port()) {
                self.detected("skipped");
                self.opaque(tcp, Target::Addr(dst)).await;
                return;
            }
        }
        // detect
        // A client that came through HTTP_PROXY speaks HTTP: only a redirected one may be waiting
        // for its server to speak first.
        let settings = &self.inner.settings;
        let first_byte = match orig_dst {
            Some(_) => settings.detect_first_byte,
            None => settings.detect_timeout,
        };
        let (found, mut buf) = detect::detect(&mut tcp, first_byte, settings.detect_timeout).await;
        self.detected(found.as_str());
        match found {
            Detected::Http1 => {
                let limits = self.inner.settings.limits;
                if !server::check_first_head(
                    &mut tcp,
                    &mut buf,
                    limits,
                    &self.inner.metrics,
                    Direction::Outbound,
                )
                .await
                {
                    return;
                }
                let io = PrefixedIo::new(buf.freeze(), tcp);
                let svc = self.service(orig_dst);
                server::serve_http1(io, svc, limits, &drain).await;
            }
            Detected::Http2 => {
                let io = PrefixedIo::new(buf.freeze(), tcp);
                let svc = self.service(orig_dst);
                server::serve_h2(io, svc, self.inner.settings.limits, &drain).await;
            }
            Detected::Opaque | Detected::Timeout => match orig_dst {
                Some(dst) => {
                    let io = PrefixedIo::new(buf.freeze(), tcp);
                    self.opaque(io, Target::Addr(dst)).await;
                }
                None => {
                    // A direct connection that is not HTTP has nowhere to go.
                    self.inner
                        .metrics
                        .error(Direction::Outbound, "no_original_dst");
                }
            },
        }
    }

    fn service(&self, orig_dst: Option<SocketAddr>) -> HttpService {
        let this = self.clone();
        HttpService::new(move |req: Request<Incoming>| {
            this.clone().proxy(req.map(body::boxed), orig_dst)
        })
    }

    fn edge(
        &self,
        dst_namespace: Arc<str>,
        dst_workload: Arc<str>,
        peer: Option<Arc<str>>,
        tls: Tls,
    ) -> EdgeLabels {
        EdgeLabels {
            direction: Direction::Outbound,
            namespace: self.inner.settings.namespace.clone(),
            workload: self.inner.settings.workload.clone(),
            dst_namespace,
            dst_workload,
            peer_id: peer,
            tls,
        }
    }

    /// Proxies one HTTP request from the application: the request stack, then its outcome
    /// recorded once.
    ///
    /// (Takes `self` and maps the result with a combinator rather than an `async` wrapper: each
    /// layer of `async` would add a copy of the whole request future, moved once per request.)
    pub fn proxy(
        self,
        req: Request<Body>,
        orig_dst: Option<SocketAddr>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        crate::memory::note_activity();
        let start = Instant::now();
        let tap = self.inner.settings.tap.capture(&req);
        let this = self.clone();
        self.stack(req, orig_dst)
            .map(move |(result, counted)| this.finish(counted, start, result, tap))
    }

    /// The request stack, top to bottom, a line per stage (see the module's list).
    async fn stack(
        self,
        req: Request<Body>,
        orig_dst: Option<SocketAddr>,
    ) -> (Result<Response<Body>, ProxyError>, Counted) {
        // refuse: an h2c upgrade would tunnel later requests past this proxy, mesh or not
        if http_util::is_h2c_upgrade(req.headers()) {
            return (Err(ProxyError::H2cUpgrade), UNKNOWN);
        }
        // target: the URI's authority, else the Host header, else the original destination
        let host = target::host_of(&req);
        let resolved = match self.inner.targets.of_request(host, orig_dst).await {
            Ok(resolved) => resolved,
            Err(err) => return (Err(err), UNKNOWN),
        };
        // egress: outside the mesh, forwarded plain (boxed: the rare path, kept out of every
        // mesh request's future)
        let rx = match &resolved.resolution {
            Resolution::Mesh(rx) => rx,
            Resolution::External => {
                let handles = self.egress_metrics();
                handles.request();
                let egress = &self.inner.egress;
                let forward = egress.forward(req, &resolved.target, &resolved.authority, orig_dst);
                return (Box::pin(forward).await, Counted::Sent(handles));
            }
        };
        // balance: the service as discovery has it now, and its endpoints' load
        let (service, balancer) = resolved.balancer.current(rx);
        // route: the first matching route (timeout, retry policy, split, metric label)
        let route = route::matched(&service, &req);
        // split: a route's backends by weight; another service brings its own endpoints (and its
        // own breaker)
        let (resolved, sent_to, balancer) = match route.backends.as_deref() {
            None => (resolved, service.clone(), balancer),
            Some(backends) => match split::backend(backends, &service, fastrand::u64(..)) {
                None => (resolved, service.clone(), balancer),
                // (boxed: the rare path, kept out of every request's future)
                Some(backend) => match Box::pin(self.backend(backend, service.port)).await {
                    Ok(found) => found,
                    Err(err) => {
                        let counted = Counted::Unsent {
                            dst_namespace: Some(service.namespace.clone()),
                            route: route.name,
                        };
                        return (Err(err), counted);
                    }
                },
            },
        };
        // breaker: the route's circuit breaker, else the service's, else none
        let breaker = (resolved.breakers).of(&sent_to, &route, &self.inner.metrics);
        let picker = Picker {
            balancer: &balancer,
            breaker: breaker.as_deref(),
        };
        // pick an endpoint (none: 503 no_endpoints; every one ejected: 503 circuit_open)
        let load = match picker.pick() {
            Pick::Endpoint(load) => load,
            unsent => {
                let name = sent_to.name.to_string();
                let err = match unsent {
                    Pick::CircuitOpen => ProxyError::CircuitOpen(name),
                    Pick::NoEndpoints | Pick::Endpoint(_) => ProxyError::NoEndpoints(name),
                };
                let counted = Counted::Unsent {
                    dst_namespace: Some(service.namespace.clone()),
                    route: route.name,
                };
                return (Err(err), counted);
            }
        };
        let handles = self.route_metrics(&resolved, &load, route.name.as_ref());
        handles.request();
        // timeout over retry over endpoint: the route's deadline over every attempt, a second
        // attempt elsewhere for a replayable request, the head rewritten and sent over mTLS
        let policy = route.retry.as_deref().unwrap_or(&DEFAULT_RETRY);
        let budget = resolved.budget(route.name.as_ref(), policy);
        let retry = Retry {
            picker,
            budget: &budget,
            policy,
            authority: &resolved.authority,
            metrics: &self.inner.metrics,
            dst_namespace: &service.namespace,
            route: route.name.as_ref(),
        };
        let (req, replay) = match Replay::at_once(req, policy, route.retryable) {
            Prepared::Ready(req, replay) => (req, replay),
            // a body to keep for another attempt, read whole first (boxed: the rarer path)
            Prepared::ReadBody(req) => match Box::pin(Replay::read_body(req, policy)).await {
                Ok(prepared) => prepared,
                Err(err) => return (Err(err), Counted::Sent(handles)),
            },
        };
        let attempts = retry.attempts(&self.inner.endpoints, req, replay, &load);
        let result = timeout::within(route.timeout, attempts).await;
        (result, Counted::Sent(handles))
    }

    /// A split's backend, resolved (cached after the first request), as discovery has it now,
    /// with its balancer.
    async fn backend(
        &self,
        backend: &Backend,
        port: u16,
    ) -> Result<(Arc<Resolved>, Arc<Service>, Arc<Balancer>), ProxyError> {
        let resolved = self
            .inner
            .targets
            .resolve(&split::target(backend, port))
            .await?;
        match &resolved.resolution {
            Resolution::Mesh(rx) => {
                let (service, balancer) = resolved.balancer.current(rx);
                Ok((resolved, service, balancer))
            }
            // (a backend that left the mesh: nothing to send to, as for an empty service)
            Resolution::External => Err(ProxyError::NoEndpoints(backend.name.to_string())),
        }
    }

    /// Records a request's outcome under the labels it is counted under.
    fn finish(
        &self,
        counted: Counted,
        start: Instant,
        result: Result<Response<Body>, ProxyError>,
        tap: Option<Box<crate::tap::Pending>>,
    ) -> Response<Body> {
        let metrics = &self.inner.metrics;
        let handles = match counted {
            Counted::Sent(handles) => handles,
            Counted::Unsent {
                dst_namespace,
                route,
            } => {
                // (A rare path: the family is looked up by its labels.)
                let dst_namespace = dst_namespace.unwrap_or_else(|| "".into());
                let edge = self.edge(dst_namespace, "".into(), None, Tls::NoIdentity);
                let route = route.unwrap_or_else(|| "default".into());
                let handles = metrics.route(RouteLabels { edge, route });
                handles.request();
                Arc::new(handles)
            }
        };
        let rsp = telemetry::finish(metrics, Direction::Outbound, &handles, start, result);
        telemetry::publish(tap, Direction::Outbound, &handles, start, &rsp);
        rsp
    }

    /// The metric handles of egress requests.
    fn egress_metrics(&self) -> Arc<RouteMetrics> {
        self.inner
            .egress_metrics
            .get_or_init(|| {
                let edge = self.edge("".into(), "".into(), None, Tls::NoIdentity);
                let route = "default".into();
                Arc::new(self.inner.metrics.route(RouteLabels { edge, route }))
            })
            .clone()
    }

    /// The metric handles of `route` on the endpoint `load` (looked up once, then cached).
    fn route_metrics(
        &self,
        resolved: &Resolved,
        load: &Arc<EndpointLoad>,
        route: Option<&Arc<str>>,
    ) -> Arc<RouteMetrics> {
        let key = (Arc::as_ptr(load) as usize, route.cloned());
        let mut routes = resolved
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, m)) = routes.get(&key) {
            return m.clone();
        }
        let ep = &load.endpoint;
        if routes.len() >= MAX_ROUTE_METRICS {
            routes.clear();
        }
        let labels = RouteLabels {
            edge: self.edge(
                ep.namespace.clone(),
                ep.workload.clone(),
                Some(load.server_id.clone()),
                Tls::True,
            ),
            route: route.cloned().unwrap_or_else(|| "default".into()),
        };
        let metrics = Arc::new(self.inner.metrics.route(labels));
        routes.insert(key, (load.clone(), metrics.clone()));
        metrics
    }
}

#[cfg(test)]
mod tests;
