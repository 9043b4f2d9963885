//! The outbound side: the application's traffic to other services.
//!
//! The stack, top to bottom ([`Outbound::handle`]):
//!
//! 1. accept: read the original destination (`SO_ORIGINAL_DST`) when iptables redirected us;
//! 2. opaque ports / opaque services skip detection;
//! 3. detect: HTTP/1, HTTP/2 or opaque (a timeout counts as opaque);
//! 4. HTTP: check the first request head, then serve HTTP/1 or HTTP/2; per request
//!    ([`Outbound::proxy`]): target from the absolute URI, the Host header or the original
//!    destination → discovery → route (timeout) → balancer (P2C + peak EWMA) → mTLS to the
//!    endpoint's inbound proxy: HTTP/1 on a pooled HTTP/1.1 connection (an upgrade keeps its
//!    connection), HTTP/2 on the shared HTTP/2 connection (and HTTP/1 too when
//!    `ONEMESH_PROXY_HTTP1_TRANSPORT=h2`); a bodiless idempotent (or `retryable` route) request
//!    that failed before an answer, or that the endpoint's proxy could not deliver to its app
//!    (`502`/`503` with `onemesh-error: connect_failed|upstream_failed|awaiting_policy`: a pod
//!    going away), is sent once more to another pick, within a 20 % [`RetryBudget`]. Names outside the mesh are forwarded plain (egress, `tls="no_identity"`),
//!    those without an original destination marked with this proxy's random `onemesh-egress-id`:
//!    one that comes back (its destination is the proxy itself) is answered `502 loop_detected`
//!    instead of going round until the proxy runs out of sockets;
//! 5. opaque: resolve the original destination (or the tcp forward's service) and splice bytes
//!    over mTLS (or plain, for egress).
//!
//! An `Upgrade: h2c` (or `HTTP2-Settings`) request is refused with `400 h2c_upgrade` before
//! anything else: the app must not tunnel HTTP/2 through its own proxy, where no later request
//! would be seen. Spliced streams (opaque, upgrades) are closed after
//! `ONEMESH_PROXY_STREAM_IDLE_TIMEOUT` without a byte either way.
//!
//! Every failure on this path becomes a response through [`ProxyError::to_response`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use foldhash::HashMap;
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::balance::{Balancer, EndpointLoad};
use crate::body::{self, Body};
use crate::client::{MeshClient, PlainClients, plain_error};
use crate::config::Http1Transport;
use crate::detect::{self, Detected};
use crate::discover::{Discover, EndpointProtocol, Resolution, Service, Target};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http_util::{self, EGRESS_ID, ORIG_PROTO};
use crate::io::{ByteCounters, PrefixedIo, SpliceError};
use crate::metrics::{
    Classification, Direction, EdgeLabels, Metrics, ReasonLabels, RouteLabels, RouteMetrics, Tls,
};
use crate::orig_dst::original_dst;
use crate::server::{self, HttpLimits, HttpService};
use crate::transport_header::Protocol;

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
}

/// Limits retries to a fraction of requests: each request deposits [`RETRY_RATIO`] tokens (up to
/// [`RETRY_RESERVE_MAX`]), each retry spends one. It starts with one token in reserve.
#[derive(Debug)]
pub struct RetryBudget {
    balance: Mutex<f64>,
}

/// Retries allowed per request, on average (20 % extra load at most).
pub const RETRY_RATIO: f64 = 0.2;
/// The most retry tokens saved up.
pub const RETRY_RESERVE_MAX: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            balance: Mutex::new(1.0),
        }
    }
}

impl RetryBudget {
    /// Records a request.
    pub fn deposit(&self) {
        let mut b = self.balance.lock().unwrap_or_else(PoisonError::into_inner);
        *b = (*b + RETRY_RATIO).min(RETRY_RESERVE_MAX);
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.balance.lock().unwrap_or_else(PoisonError::into_inner);
        if *b >= 1.0 {
            *b -= 1.0;
            true
        } else {
            false
        }
    }
}

fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// The request without its body, to send again.
fn clone_head(req: &Request<Body>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

/// A resolved target, cached: its discovery watch, its balancer, its retry budget and the metric
/// handles of each endpoint and route it has sent to.
struct Resolved {
    target: Target,
    /// `host:port` of the target (the transport header's authority, and the Host of a request
    /// that had none).
    authority: Box<str>,
    budget: RetryBudget,
    resolution: Resolution,
    balancer: Mutex<Option<(Arc<Service>, Arc<Balancer>)>>,
    routes: Mutex<HashMap<RouteKey, RouteHandles>>,
}

/// An endpoint's load state, by address (the map holds the `Arc`, so the address cannot be
/// reused while cached; an endpoint whose identity or workload changed has new state, hence new
/// labels), and a route name (`None`: `default`).
type RouteKey = (usize, Option<Arc<str>>);

/// An endpoint's load state (held, so that its address in the key stays its own) and the metric
/// handles of one of its routes.
type RouteHandles = (Arc<EndpointLoad>, Arc<RouteMetrics>);

/// The most endpoint × route handles kept per target (discovery churn must not grow memory).
const MAX_ROUTE_METRICS: usize = 1024;

/// The most targets (and, separately, spellings of request hosts) cached: a flood of distinct
/// external names must not grow memory without limit.
const MAX_RESOLVED: usize = 10_000;

impl Resolved {
    /// The current service and balancer (rebuilt when discovery changed the service).
    fn current(&self, rx: &watch::Receiver<Arc<Service>>) -> (Arc<Service>, Arc<Balancer>) {
        let service = rx.borrow().clone();
        let mut cached = self.balancer.lock().unwrap_or_else(PoisonError::into_inner);
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

/// The outbound proxy.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OutboundSettings,
    discover: Arc<dyn Discover>,
    /// (SipHash, not foldhash: the keys come from request data, and this map must stay fast under
    /// hosts chosen to collide.)
    resolved: Mutex<std::collections::HashMap<Target, Arc<Resolved>>>,
    /// The same, by the request's host exactly as written (the URI's authority or the Host
    /// header), so that a request parses no host once its spelling has been seen.
    by_host: Mutex<std::collections::HashMap<Box<[u8]>, Arc<Resolved>>>,
    mesh: MeshClient,
    plain: PlainClients,
    metrics: Arc<Metrics>,
    /// This outbound's [`EGRESS_ID`] value.
    egress_id: HeaderValue,
}

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
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                discover,
                resolved: Mutex::default(),
                by_host: Mutex::default(),
                mesh,
                plain,
                metrics,
                egress_id: HeaderValue::from(u64::from_ne_bytes(egress_id)),
            }),
        })
    }

    fn retried(&self, outcome: &'static str) {
        self.inner
            .metrics
            .retry_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Outbound,
                reason: outcome,
            })
            .inc();
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
            let opaque_service = match self.resolve(&Target::Addr(dst)).await {
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

    async fn resolve(&self, target: &Target) -> Result<Arc<Resolved>, ProxyError> {
        if let Some(r) = self
            .inner
            .resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
        {
            return Ok(r.clone());
        }
        let resolution = self
            .inner
            .discover
            .resolve(target)
            .await
            .map_err(|e| ProxyError::DiscoveryUnavailable(e.to_string()))?;
        let resolved = Arc::new(Resolved {
            target: target.clone(),
            authority: target.authority().into(),
            budget: RetryBudget::default(),
            resolution,
            balancer: Mutex::new(None),
            routes: Mutex::default(),
        });
        let mut cache = self
            .inner
            .resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_RESOLVED {
            cache.clear();
            // The spellings go too, so that a target never has two live states (two retry
            // budgets, two balancers). (Lock order: `resolved`, then `by_host`.)
            self.inner
                .by_host
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        Ok(cache.entry(target.clone()).or_insert(resolved).clone())
    }

    /// [`Outbound::resolve`] for a request's host as written (`default port 80`).
    async fn resolve_host(&self, host: &[u8]) -> Result<Arc<Resolved>, ProxyError> {
        let cached = (self.inner.by_host.lock())
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
        let mut by_host = self
            .inner
            .by_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if by_host.len() >= MAX_RESOLVED {
            by_host.clear();
        }
        by_host.insert(host.into(), resolved.clone());
        Ok(resolved)
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

    /// Proxies one HTTP request from the application.
    ///
    /// (Takes `self` and maps the result with a combinator rather than an `async` wrapper: each
    /// layer of `async` would add a copy of the whole request future, moved once per request.)
    pub fn proxy(
        self,
        req: Request<Body>,
        orig_dst: Option<SocketAddr>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        crate::memory::note_activity();
        let metrics = self.inner.metrics.clone();
        self.proxy_inner(req, orig_dst)
            .map(move |result| match result {
                Ok(rsp) => rsp,
                Err(err) => {
                    metrics.error(Direction::Outbound, err.outcome().reason);
                    err.to_response()
                }
            })
    }

    async fn proxy_inner(
        self,
        req: Request<Body>,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        // An h2c upgrade would tunnel later requests past this proxy, to a mesh service or not.
        if http_util::is_h2c_upgrade(req.headers()) {
            return Err(ProxyError::H2cUpgrade);
        }
        // target: absolute URI, else Host header, else the original destination
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| req.headers().get(header::HOST).map(HeaderValue::as_bytes));
        // discovery
        let resolved = match (host, orig_dst) {
            (Some(host), _) => self.resolve_host(host).await?,
            (None, Some(dst)) => self.resolve(&Target::Addr(dst)).await?,
            (None, None) => return Err(ProxyError::Malformed("the request names no host")),
        };
        let rx = match &resolved.resolution {
            Resolution::Mesh(rx) => rx.clone(),
            // Boxed: egress is the rare path, kept out of every mesh request's future.
            Resolution::External => {
                return Box::pin(self.egress(req, &resolved.target, orig_dst)).await;
            }
        };
        // route and balancer
        let (service, balancer) = resolved.current(&rx);
        let route = service.route_for(req.method(), req.uri().path()).cloned();
        let load = balancer
            .pick()
            .ok_or_else(|| ProxyError::NoEndpoints(service.name.to_string()))?;
        let metrics = self.route_metrics(&resolved, &load, route.as_ref().map(|r| &r.name));
        let authority = &*resolved.authority;
        metrics.request();
        let start = Instant::now();
        // retries: only bodiless requests (replayable), idempotent or on a retryable route,
        // within the service's budget; the route timeout covers every attempt
        let retryable = route.as_ref().is_some_and(|r| r.retryable) || is_idempotent(req.method());
        let replay = (retryable && !http_util::is_upgrade(&req) && req.body().is_end_stream())
            .then(|| clone_head(&req));
        resolved.budget.deposit();
        let forward = async {
            let first = self.forward_mesh(req, &load, authority).await;
            let again = match &first {
                Err(err) => err.is_retryable(),
                Ok(rsp) if ProxyError::peer_did_not_deliver(rsp) => {
                    load.penalize();
                    true
                }
                Ok(_) => false,
            };
            let Some(head) = replay.filter(|_| again) else {
                return first;
            };
            if !resolved.budget.withdraw() {
                self.retried("budget_exhausted");
                return first;
            }
            let Some(next) = balancer.pick() else {
                return first;
            };
            self.retried("retried");
            self.forward_mesh(head.map(|()| body::empty()), &next, authority)
                .await
        };
        let result = match route.as_ref().and_then(|r| r.timeout) {
            Some(t) => tokio::time::timeout(t, forward)
                .await
                .unwrap_or(Err(ProxyError::Timeout(t))),
            None => forward.await,
        };
        let (status, class) = match &result {
            Ok(rsp) => (rsp.status(), http_util::classify(rsp)),
            Err(err) => (err.outcome().status, Classification::Failure),
        };
        metrics.record(&self.inner.metrics, start, status, class);
        result
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

    async fn forward_mesh(
        &self,
        mut req: Request<Body>,
        load: &Arc<EndpointLoad>,
        authority: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let in_flight = load.start();
        let original = req.version();
        let upgrade = http_util::is_upgrade(&req);
        let pooled_http1 = original != Version::HTTP_2
            && self.inner.settings.http1_transport == Http1Transport::Http1;
        if upgrade || pooled_http1 {
            // HTTP/1.1 on a pooled connection, as the app sent it (h2 cannot carry an upgrade;
            // an upgraded connection is spliced and never goes back to the pool).
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            if !upgrade {
                http_util::strip_hop_by_hop(req.headers_mut());
            }
            http_util::take(req.headers_mut(), &ORIG_PROTO);
            set_origin_form(&mut req, authority)?;
            *req.version_mut() = Version::HTTP_11;
            let mut rsp = self.inner.mesh.send_http1(load, authority, req).await?;
            in_flight.complete();
            if let Some(client_upgrade) = client_upgrade
                && rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            {
                let upstream = hyper::upgrade::on(&mut rsp);
                self.splice_upgrades(client_upgrade, upstream);
                return Ok(rsp.map(body::boxed));
            }
            strip_response(rsp.headers_mut());
            *rsp.version_mut() = original;
            return Ok(rsp.map(body::boxed));
        }
        let (mut parts, body) = req.into_parts();
        http_util::strip_hop_by_hop(&mut parts.headers);
        http_util::take(&mut parts.headers, &ORIG_PROTO);
        if let Some(v) = http_util::version_name(original) {
            parts.headers.insert(ORIG_PROTO, v);
        }
        parts.headers.remove(header::HOST);
        parts.uri = absolute(&parts.uri, authority)?;
        parts.version = Version::HTTP_2;
        let rsp = self
            .inner
            .mesh
            .send_h2(load, authority, Request::from_parts(parts, body))
            .await?;
        in_flight.complete();
        let (mut parts, body) = rsp.into_parts();
        strip_response(&mut parts.headers);
        parts.version = original;
        Ok(Response::from_parts(parts, body::boxed(body)))
    }

    /// Forwards a request for a name outside the mesh, plain.
    async fn egress(
        &self,
        mut req: Request<Body>,
        target: &Target,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let metrics = self.inner.metrics.route(RouteLabels {
            edge: self.edge("".into(), "".into(), None, Tls::NoIdentity),
            route: "default".into(),
        });
        // Connect to the original destination when we have one, else the name as given.
        let connect_to = match (orig_dst, target) {
            (Some(dst), _) => dst.to_string(),
            (None, t) => t.authority(),
        };
        // A request this outbound already sent out came back: its destination is the proxy.
        // Only a request without an original destination can (the proxy's own connections are
        // not redirected back to it), so only those carry the id out.
        if http_util::find(req.headers(), &EGRESS_ID) == Some(&self.inner.egress_id) {
            return Err(ProxyError::Loop(connect_to));
        }
        if orig_dst.is_none() {
            req.headers_mut()
                .insert(EGRESS_ID, self.inner.egress_id.clone());
        }
        metrics.request();
        let start = Instant::now();
        let upgrade = http_util::is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let host = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| HeaderValue::from_str(&target.authority()).ok());
        let (mut parts, body) = req.into_parts();
        if !upgrade {
            http_util::strip_hop_by_hop(&mut parts.headers);
        }
        parts.uri = absolute(&parts.uri, &connect_to)?;
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        parts.version = Version::HTTP_11;
        let result = self
            .inner
            .plain
            .http1
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| plain_error(&connect_to, e));
        match result {
            Ok(mut rsp) => {
                let class = http_util::classify(&rsp);
                metrics.record(&self.inner.metrics, start, rsp.status(), class);
                if let Some(client_upgrade) = client_upgrade
                    && rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                {
                    let upstream = hyper::upgrade::on(&mut rsp);
                    self.splice_upgrades(client_upgrade, upstream);
                }
                Ok(rsp.map(body::boxed))
            }
            Err(err) => {
                let status = err.outcome().status;
                metrics.record(&self.inner.metrics, start, status, Classification::Failure);
                Err(err)
            }
        }
    }

    /// Carries an opaque stream to `target`.
    pub async fn opaque<I>(&self, mut io: I, target: Target)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let resolved = match self.resolve(&target).await {
            Ok(r) => r,
            Err(err) => {
                self.inner
                    .metrics
                    .error(Direction::Outbound, err.outcome().reason);
                return;
            }
        };
        match &resolved.resolution {
            Resolution::Mesh(rx) => {
                let (service, balancer) = resolved.current(rx);
                let Some(load) = balancer.pick() else {
                    self.inner
                        .metrics
                        .error(Direction::Outbound, "no_endpoints");
                    debug!(service = %service.name, "no endpoints for opaque connection");
                    return;
                };
                let in_flight = load.start();
                let mut upstream = match self
                    .inner
                    .mesh
                    .connect(&load.endpoint, Protocol::Opaque, &target.authority())
                    .await
                {
                    Ok(tls) => tls,
                    Err(err) => {
                        self.inner
                            .metrics
                            .error(Direction::Outbound, err.outcome().reason);
                        return;
                    }
                };
                in_flight.complete();
                let guard = self.inner.metrics.open_tcp(self.edge(
                    load.endpoint.namespace.clone(),
                    load.endpoint.workload.clone(),
                    Some(load.server_id.clone()),
                    Tls::True,
                ));
                self.splice(&mut io, &mut upstream, guard.counters()).await;
            }
            Resolution::External => {
                let dst = target.authority();
                let connect = TcpStream::connect(dst.as_str());
                let mut upstream = match tokio::time::timeout(
                    self.inner.settings.connect_timeout,
                    connect,
                )
                .await
                {
                    Ok(Ok(tcp)) => tcp,
                    _ => {
                        self.inner
                            .metrics
                            .error(Direction::Outbound, "connect_failed");
                        return;
                    }
                };
                let guard = self.inner.metrics.open_tcp(self.edge(
                    "".into(),
                    "".into(),
                    None,
                    Tls::NoIdentity,
                ));
                self.splice(&mut io, &mut upstream, guard.counters()).await;
            }
        }
    }

    /// Splices an opaque stream, counting an idle close.
    async fn splice<A, U>(&self, io: &mut A, upstream: &mut U, counters: &ByteCounters)
    where
        A: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let idle = self.inner.settings.stream_idle_timeout;
        if let Err(error @ SpliceError::Idle(_)) =
            crate::io::splice(io, upstream, counters, idle).await
        {
            debug!(%error, "opaque stream closed");
            self.inner
                .metrics
                .error(Direction::Outbound, http_util::IDLE_TIMEOUT_REASON);
        }
    }

    fn splice_upgrades(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
    ) {
        http_util::splice_upgrades(
            client,
            upstream,
            self.inner.settings.stream_idle_timeout,
            self.inner.metrics.clone(),
            Direction::Outbound,
        );
    }
}

/// `http://<authority><path>`.
fn absolute(uri: &Uri, authority: &str) -> Result<Uri, ProxyError> {
    let authority: Authority = authority
        .parse()
        .map_err(|_| ProxyError::Malformed("the request's host is not a valid authority"))?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).map_err(|_| ProxyError::Malformed("the request uri is invalid"))
}

/// Origin-form URI with a Host header (an HTTP/1.1 request to another proxy).
fn set_origin_form(req: &mut Request<Body>, authority: &str) -> Result<(), ProxyError> {
    if !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(authority)
            .map_err(|_| ProxyError::Malformed("the request's host is not a valid header"))?;
        req.headers_mut().insert(header::HOST, host);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    Ok(())
}

/// Removes hop-by-hop headers from a response going back to the application.
fn strip_response(headers: &mut http::HeaderMap) {
    // (A message without hop-by-hop headers has no TE either.)
    if http_util::strip_hop_by_hop(headers) {
        headers.remove(header::TE);
    }
}
