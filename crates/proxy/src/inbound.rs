//! The inbound side: traffic from other proxies (mTLS) and unmeshed callers (plain) to the local
//! application.
//!
//! The stack, top to bottom ([`Inbound::handle`]):
//!
//! 1. accept, and peek one byte: a TLS ClientHello (0x16) is a meshed caller, anything else is
//!    unauthenticated;
//! 2. TLS: terminate mTLS with this workload's certificate (the client must present a valid mesh
//!    identity; failures are counted by [`HandshakeFailure`] reason), learn the caller's
//!    [`SpiffeId`], then read the [`TransportHeader`] (protocol + target port);
//!    plain: the target port is the original destination's (iptables); without one the
//!    connection is refused; then detect the protocol;
//! 3. target port ([`crate::policy::check_port`], once per connection): only the workload's
//!    declared ports, never the proxy's own listeners (inbound, outbound, admin, tcp forwards),
//!    else nothing is forwarded: a mesh HTTP connection gets `403` with `onemesh-error:
//!    undeclared_port` / `proxy_port` for each request, opaque and plain connections are closed;
//!    counted in `proxy_error_total` once per connection, logged at debug (and a warning at most
//!    once a minute). Before the first policy nothing is declared, so nothing is forwarded;
//! 4. per HTTP request, before policy: an `Upgrade: h2c` / `HTTP2-Settings` request is refused
//!    (`400 h2c_upgrade`: it would open a tunnel no policy sees), and so is a path the app could
//!    read differently from policy (`400 ambiguous_path`, [`crate::path`]); the path that policy
//!    matches is then exactly the path the app receives;
//! 5. policy ([`crate::policy::authorize`]): per request for HTTP (403 `forbidden` naming the
//!    caller, the policy and the `onemesh authz explain` command), per connection for opaque TCP
//!    (closed and counted); a denial in audit mode (`would_deny`) is counted, logged (throttled)
//!    and let through like an allowed request. Each decision goes to the decision log
//!    ([`crate::audit`], when on): an allowed request bumps a counter its connection holds, a
//!    denial is queued;
//! 6. rate limits ([`limit`]: 429 `rate_limited` with `Retry-After`), then the matching route's
//!    fault ([`fault`]: a delay, then an abort `fault_injected`), HTTP only. Authorization comes
//!    first so that a refused caller spends nobody's tokens; limits before faults so that a limit
//!    keeps protecting the app while faults are tested; faults last, where the app's own failure
//!    would be. With none declared they cost two `is_empty()` checks;
//! 7. forward to `ONEMESH_PROXY_INBOUND_APP_HOST:<target port>`: HTTP/1.1 to an HTTP/1.1 app
//!    (an HTTP/1.1 mesh connection, or the `onemesh-orig-proto` header on HTTP/2, says so) on a
//!    pooled connection ([`crate::pool`]), HTTP/2 to an h2/gRPC app, upgrades spliced, opaque
//!    bytes copied (both closed after `ONEMESH_PROXY_STREAM_IDLE_TIMEOUT` without a byte). The
//!    caller's identity goes to the app in `onemesh-client-id` (any such header from outside is
//!    removed).
//!
//! A policy update that removes a declared port applies to connections opened after it; one
//! already open keeps its port until it closes (the check is per connection, so that requests
//! pay nothing for it).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use onemesh_identity::{CredentialStore, HandshakeFailure, SpiffeId, peer_id};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditLog, Denial, Key as AuditKey, Kind, Slot};
use crate::body::{self, Body};
use crate::client::{ALPN, PlainClients, plain_error};
use crate::detect::{self, Detected};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http_util::{self, CLIENT_ID, EGRESS_ID, ORIG_PROTO};
use crate::io::{CountingIo, PrefixedIo, SpliceError};
use crate::metrics::{
    AuthzLabels, DenyLabels, Direction, EdgeLabels, FaultLabels, LimitLabels, Metrics,
    ReasonLabels, RouteLabels, RouteMetrics, TcpGuard, Tls,
};
use crate::orig_dst::original_dst;
use crate::policy::{
    Authorizations, Decision, PortRefusal, Verdict, authorize, check_port, plain_target,
};
use crate::pool::{self, Http1Pool};
use crate::server::{self, HttpLimits, HttpService};
use crate::telemetry;
use crate::transport_header::{Protocol, TransportHeader};
use fault::FaultRule;
use prometheus_client::metrics::counter::Counter;

pub mod fault;
pub mod limit;

/// Settings of the inbound side.
#[derive(Clone, Debug)]
pub struct InboundSettings {
    /// Detection (and transport header) deadline.
    pub detect_timeout: Duration,
    /// How long a plain redirected client may stay silent before it is taken for a
    /// server-speaks-first protocol (see [`detect::detect`]).
    pub detect_first_byte: Duration,
    /// TLS handshake and app connect deadline.
    pub connect_timeout: Duration,
    /// HTTP limits.
    pub limits: HttpLimits,
    /// Ports carried as opaque TCP without detection (plain callers).
    pub opaque_ports: std::collections::BTreeSet<u16>,
    /// Where the application listens.
    pub app_host: IpAddr,
    /// This workload's namespace.
    pub namespace: Arc<str>,
    /// This workload's name.
    pub workload: Arc<str>,
    /// The proxy's own listening ports (inbound, outbound, admin, tcp forwards): never a target.
    pub proxy_ports: Vec<u16>,
    /// How long a spliced stream may move no byte before it is closed.
    pub stream_idle_timeout: Duration,
    /// Where requests are published for tap and access logs.
    pub tap: Arc<crate::tap::Hub>,
    /// The decision log ([`crate::audit`]), when on.
    pub audit: Option<AuditLog>,
}

/// How the caller speaks HTTP on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Http1,
    H2,
}

/// What is known about an accepted connection.
#[derive(Debug)]
struct Conn {
    client: Option<SpiffeId>,
    client_header: Option<HeaderValue>,
    target_port: u16,
    edge: EdgeLabels,
    mode: Mode,
}

/// What every request of one HTTP connection shares, built once when it is served.
#[derive(Debug)]
struct HttpConn {
    conn: Conn,
    /// The application's `host:port` for this connection's target port.
    app: Authority,
    /// Inbound requests have one route, `default`.
    route: RouteMetrics,
    /// The connection's TCP metrics; an upgrade's splice holds it until the stream closes.
    tcp: Arc<TcpGuard>,
    /// The counters of the first policy that allowed a request on this connection.
    allowed: std::sync::OnceLock<Allowed>,
}

/// What counts a request allowed by one policy: `authz_allow_total`'s counter and the decision
/// log's [`Slot`].
#[derive(Debug)]
struct Allowed {
    policy: Arc<str>,
    mode: crate::policy::Mode,
    counter: Counter,
    slot: Option<Arc<Slot>>,
}

/// The inbound proxy.
#[derive(Clone)]
pub struct Inbound {
    inner: Arc<Inner>,
}

struct Inner {
    settings: InboundSettings,
    credentials: watch::Receiver<Option<CredentialStore>>,
    server_config: Mutex<Option<Arc<rustls::ServerConfig>>>,
    policy: watch::Receiver<Arc<Authorizations>>,
    /// HTTP/1.1 to the application, by address.
    app: Http1Pool<SocketAddr>,
    /// HTTP/2 to an h2/gRPC application.
    plain: PlainClients,
    metrics: Arc<Metrics>,
    /// Limits the warnings about refused target ports.
    refusal_warnings: Throttle,
    /// Limits the warnings about requests let through in audit mode.
    would_deny_warnings: Throttle,
}

impl Inbound {
    /// Builds the inbound side.
    pub fn new(
        settings: InboundSettings,
        credentials: watch::Receiver<Option<CredentialStore>>,
        policy: watch::Receiver<Arc<Authorizations>>,
        plain: PlainClients,
        metrics: Arc<Metrics>,
    ) -> Self {
        let connect_timeout = settings.connect_timeout;
        Self {
            inner: Arc::new(Inner {
                settings,
                credentials,
                server_config: Mutex::new(None),
                policy,
                app: Http1Pool::with_idle_timeout(connect_timeout, APP_IDLE_TIMEOUT),
                plain,
                metrics,
                refusal_warnings: Throttle::new(REFUSAL_WARNING_INTERVAL),
                would_deny_warnings: Throttle::new(REFUSAL_WARNING_INTERVAL),
            }),
        }
    }

    /// Closes idle connections to the application beyond `keep` per port.
    pub fn shrink_idle(&self, keep: usize) {
        self.inner.app.shrink_idle(keep);
    }

    /// Closes idle connections to the application that it closed or that outlived their idle
    /// timeout; returns how many.
    pub fn prune_idle(&self) -> usize {
        self.inner.app.prune()
    }

    fn edge(&self, client: Option<&SpiffeId>) -> EdgeLabels {
        let s = &self.inner.settings;
        EdgeLabels {
            direction: Direction::Inbound,
            namespace: s.namespace.clone(),
            workload: s.workload.clone(),
            dst_namespace: s.namespace.clone(),
            dst_workload: s.workload.clone(),
            peer_id: client.map(|id| Arc::from(id.as_str())),
            tls: if client.is_some() {
                Tls::True
            } else {
                Tls::NoIdentity
            },
        }
    }

    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let mut cached = self
            .inner
            .server_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cached.is_none() {
            let store = self.inner.credentials.borrow().clone()?;
            *cached = Some(store.server_config(&[ALPN]));
        }
        cached.clone()
    }

    fn error(&self, reason: &'static str) {
        self.inner.metrics.error(Direction::Inbound, reason);
    }

    /// Handles one connection accepted on the inbound listener.
    pub async fn handle(self, tcp: TcpStream, _peer: SocketAddr, drain: Drain) {
        let mut first = [0u8; 1];
        let peeked =
            tokio::time::timeout(self.inner.settings.detect_timeout, tcp.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1)) if first[0] == 0x16 => self.tls(tcp, drain).await,
            Ok(Ok(1)) => self.plain(tcp, drain).await,
            // Nothing arrived: a plain server-speaks-first client, if redirected.
            Err(_) => self.plain(tcp, drain).await,
            Ok(_) => {}
        }
    }

    async fn tls(self, tcp: TcpStream, drain: Drain) {
        let Some(config) = self.server_config() else {
            self.error("not_ready");
            return;
        };
        let tcp = crate::io::CoalescedWrites::new(tcp);
        let accept = TlsAcceptor::from(config).accept(tcp);
        let mut tls = match tokio::time::timeout(self.inner.settings.connect_timeout, accept).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.handshake_failed(HandshakeFailure::from_io(&e)),
            Err(_) => return self.handshake_failed(HandshakeFailure::Io),
        };
        let client = peer_id(tls.get_ref().1);
        let header = match TransportHeader::read(&mut tls, self.inner.settings.detect_timeout).await
        {
            Ok(h) => h,
            Err(error) => {
                tracing::debug!(%error, "bad transport header");
                self.error("transport_header");
                return;
            }
        };
        let edge = self.edge(client.as_ref());
        if let Err(refusal) = self.check_port(header.target_port) {
            self.refuse_port(refusal, client.as_ref());
            return match header.protocol {
                // Each request is answered with the refusal, so the caller learns why.
                Protocol::H2 => {
                    let svc = refusal_service(refusal, false);
                    server::serve_h2(tls, svc, self.inner.settings.limits, &drain).await;
                }
                Protocol::Http1 => {
                    let svc = refusal_service(refusal, true);
                    server::serve_http1(tls, svc, self.inner.settings.limits, &drain).await;
                }
                Protocol::Opaque => {}
            };
        }
        let conn = Conn {
            client_header: client
                .as_ref()
                .and_then(|id| HeaderValue::from_str(id.as_str()).ok()),
            client,
            target_port: header.target_port,
            edge: edge.clone(),
            mode: if header.protocol == Protocol::H2 {
                Mode::H2
            } else {
                Mode::Http1
            },
        };
        let guard = self.inner.metrics.open_tcp(edge);
        match header.protocol {
            Protocol::H2 => {
                let io = CountingIo::new(tls, guard.counters().clone());
                let svc = self.service(conn, guard);
                server::serve_h2(io, svc, self.inner.settings.limits, &drain).await;
            }
            Protocol::Http1 => {
                let io = CountingIo::new(tls, guard.counters().clone());
                let svc = self.service(conn, guard);
                server::serve_http1(
                    io,
                    svc,
                    mesh_http1_limits(self.inner.settings.limits),
                    &drain,
                )
                .await;
            }
            Protocol::Opaque => self.opaque(tls, &conn, guard).await,
        }
    }

    fn handshake_failed(&self, reason: HandshakeFailure) {
        self.inner
            .metrics
            .tls_handshake_failure_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Inbound,
                reason: reason.as_str(),
            })
            .inc();
    }

    async fn plain(self, mut tcp: TcpStream, drain: Drain) {
        // Unauthenticated: only redirected connections have a target port.
        let target = plain_target(
            original_dst(&tcp),
            &self.inner.policy.borrow().ports,
            &self.inner.settings.proxy_ports,
        );
        let target_port = match target {
            Ok(port) => port,
            Err(PortRefusal::NoOriginalDst) => {
                return self.error(PortRefusal::NoOriginalDst.reason());
            }
            Err(refusal) => return self.refuse_port(refusal, None),
        };
        let edge = self.edge(None);
        let mut conn = Conn {
            client: None,
            client_header: None,
            target_port,
            edge: edge.clone(),
            mode: Mode::Http1,
        };
        if self.inner.settings.opaque_ports.contains(&target_port) {
            let guard = self.inner.metrics.open_tcp(edge);
            return self.opaque(tcp, &conn, guard).await;
        }
        let settings = &self.inner.settings;
        let (found, mut buf) = detect::detect(
            &mut tcp,
            settings.detect_first_byte,
            settings.detect_timeout,
        )
        .await;
        self.inner
            .metrics
            .detect_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Inbound,
                reason: found.as_str(),
            })
            .inc();
        let limits = self.inner.settings.limits;
        match found {
            Detected::Http1 => {
                if !server::check_first_head(
                    &mut tcp,
                    &mut buf,
                    limits,
                    &self.inner.metrics,
                    Direction::Inbound,
                )
                .await
                {
                    return;
                }
                let guard = self.inner.metrics.open_tcp(edge);
                let io =
                    CountingIo::new(PrefixedIo::new(buf.freeze(), tcp), guard.counters().clone());
                let svc = self.service(conn, guard);
                server::serve_http1(io, svc, limits, &drain).await;
            }
            Detected::Http2 => {
                conn.mode = Mode::H2;
                let guard = self.inner.metrics.open_tcp(edge);
                let io =
                    CountingIo::new(PrefixedIo::new(buf.freeze(), tcp), guard.counters().clone());
                let svc = self.service(conn, guard);
                server::serve_h2(io, svc, limits, &drain).await;
            }
            Detected::Opaque | Detected::Timeout => {
                let guard = self.inner.metrics.open_tcp(edge);
                self.opaque(PrefixedIo::new(buf.freeze(), tcp), &conn, guard)
                    .await;
            }
        }
    }

    async fn opaque<I>(&self, mut io: I, conn: &Conn, guard: TcpGuard)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let decision = authorize(
            &self.inner.policy.borrow().clone(),
            &self.inner.settings.namespace,
            conn.target_port,
            conn.client.as_ref(),
            None,
        );
        match decision.verdict {
            Verdict::Deny => {
                self.record_denial(conn, &decision, None);
                self.inner
                    .metrics
                    .authz_deny_total
                    .get_or_create(&DenyLabels {
                        edge: conn.edge.clone(),
                        policy: decision.policy,
                        kind: "tcp",
                    })
                    .inc();
                return;
            }
            Verdict::WouldDeny => self.would_deny(conn, &decision, None),
            Verdict::Allow => {
                if let Some(slot) = self.audit_slot(conn, Kind::Tcp, &decision) {
                    slot.hit();
                }
                self.inner
                    .metrics
                    .authz_allow_total
                    .get_or_create(&AuthzLabels {
                        edge: conn.edge.clone(),
                        policy: decision.policy,
                        kind: "tcp",
                    })
                    .inc();
            }
        }
        let app = SocketAddr::new(self.inner.settings.app_host, conn.target_port);
        let mut upstream = match tokio::time::timeout(
            self.inner.settings.connect_timeout,
            TcpStream::connect(app),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            _ => {
                self.error("connect_failed");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let idle = self.inner.settings.stream_idle_timeout;
        let spliced = crate::io::splice(&mut io, &mut upstream, guard.counters(), idle).await;
        if let Err(error @ SpliceError::Idle(_)) = spliced {
            tracing::debug!(%error, port = conn.target_port, "opaque stream closed");
            self.error(http_util::IDLE_TIMEOUT_REASON);
        }
    }

    /// Whether this connection's target port may be forwarded to (declared, not the proxy's).
    fn check_port(&self, port: u16) -> Result<u16, PortRefusal> {
        check_port(
            &self.inner.policy.borrow().ports,
            &self.inner.settings.proxy_ports,
            port,
        )
    }

    /// Counts and logs a refused target port (a warning at most once per interval: a caller
    /// probing ports must not flood the log).
    fn refuse_port(&self, refusal: PortRefusal, client: Option<&SpiffeId>) {
        self.error(refusal.reason());
        let caller = client.map_or("unauthenticated", SpiffeId::as_str);
        match self.inner.refusal_warnings.allow() {
            Some(suppressed) => tracing::warn!(
                %caller,
                suppressed,
                "inbound connection refused: {refusal} (further refusals in the next minute are \
                 logged at debug only; proxy_error_total counts them all)"
            ),
            None => tracing::debug!(%caller, "inbound connection refused: {refusal}"),
        }
    }

    fn service(&self, conn: Conn, guard: TcpGuard) -> HttpService {
        let this = self.clone();
        let app = SocketAddr::new(self.inner.settings.app_host, conn.target_port);
        let conn = Arc::new(HttpConn {
            // An IP address and a port always make an authority.
            app: Authority::try_from(app.to_string())
                .unwrap_or_else(|_| Authority::from_static("127.0.0.1")),
            route: self.inner.metrics.route(RouteLabels {
                edge: conn.edge.clone(),
                route: "default".into(),
            }),
            conn,
            tcp: Arc::new(guard),
            allowed: std::sync::OnceLock::new(),
        });
        HttpService::new(move |req: Request<Incoming>| {
            this.clone().proxy(conn.clone(), req.map(body::boxed))
        })
    }

    async fn proxy(self, http: Arc<HttpConn>, mut req: Request<Body>) -> Response<Body> {
        crate::memory::note_activity();
        let http = &*http;
        let conn = &http.conn;
        let orig_proto = take_mesh_headers(req.headers_mut());
        let tap = self.inner.settings.tap.capture(&req);
        let metrics = &self.inner.metrics;
        http.route.request();
        let start = Instant::now();
        // requests no policy could see through (h2c), or read differently from the app
        let checked = if http_util::is_h2c_upgrade(req.headers()) {
            Err(ProxyError::H2cUpgrade)
        } else {
            crate::path::check(req.uri().path()).map_err(ProxyError::from)
        };
        let rules = self.inner.policy.borrow().clone();
        // policy (and, while the checked path is at hand, the route fault that matches, if any)
        let decision = checked.map(|path| {
            let decision = authorize(
                &rules,
                &self.inner.settings.namespace,
                conn.target_port,
                conn.client.as_ref(),
                Some((req.method(), path)),
            );
            let fault = if decision.lets_through() && !rules.faults.is_empty() {
                fault::find(
                    &rules.faults,
                    conn.target_port,
                    req.method(),
                    path,
                    req.headers(),
                )
            } else {
                None
            };
            (decision, fault, path)
        });
        let result = match decision {
            Err(err) => Err(err),
            Ok((decision, fault, path)) if decision.lets_through() => {
                if decision.verdict == Verdict::Allow {
                    self.allowed(http, &decision);
                } else {
                    self.would_deny(conn, &decision, Some((req.method(), path)));
                }
                // rate limits, then faults, then forward
                match self.limit(&rules, conn, req.method(), path) {
                    Err(err) => Err(err),
                    Ok(()) => match self.inject(fault).await {
                        Err(err) => Err(err),
                        Ok(()) => {
                            if let Some(v) = &conn.client_header {
                                req.headers_mut().insert(CLIENT_ID, v.clone());
                            }
                            let http1 = orig_proto.is_some() || conn.mode == Mode::Http1;
                            self.forward(http, req, http1).await
                        }
                    },
                }
            }
            Ok((decision, _, path)) => {
                self.record_denial(conn, &decision, Some((req.method(), path)));
                metrics
                    .authz_deny_total
                    .get_or_create(&DenyLabels {
                        edge: conn.edge.clone(),
                        policy: decision.policy.clone(),
                        kind: "http",
                    })
                    .inc();
                let caller = conn
                    .client
                    .as_ref()
                    .map_or_else(|| "unauthenticated".to_string(), |id| id.to_string());
                let settings = &self.inner.settings;
                Err(ProxyError::Forbidden {
                    explain: explain_command(
                        &caller,
                        &settings.namespace,
                        &settings.workload,
                        conn.target_port,
                        Some((req.method(), path.as_str())),
                    ),
                    caller,
                    policy: decision.policy.to_string(),
                })
            }
        };
        let rsp = telemetry::finish(metrics, Direction::Inbound, &http.route, start, result);
        telemetry::publish(tap, Direction::Inbound, &http.route, start, &rsp);
        rsp
    }

    /// Counts and logs a request or connection denied by policies in audit mode only, which is
    /// let through (a warning at most once per interval, as for refused ports).
    fn would_deny(
        &self,
        conn: &Conn,
        decision: &Decision,
        request: Option<(&http::Method, crate::path::CheckedPath<'_>)>,
    ) {
        self.record_denial(conn, decision, request);
        let policy = &decision.policy;
        let kind = if request.is_some() { "http" } else { "tcp" };
        self.inner
            .metrics
            .authz_would_deny_total
            .get_or_create(&DenyLabels {
                edge: conn.edge.clone(),
                policy: policy.clone(),
                kind,
            })
            .inc();
        let caller = conn
            .client
            .as_ref()
            .map_or("unauthenticated", SpiffeId::as_str);
        let port = conn.target_port;
        let (method, path) = request.map_or(("", ""), |(m, p)| (m.as_str(), p.as_str()));
        match self.inner.would_deny_warnings.allow() {
            Some(suppressed) => tracing::warn!(
                %caller,
                port,
                kind,
                method,
                path = %crate::tap::mask::cards(path),
                %policy,
                suppressed,
                "would_deny: let through because the policies that deny it are in audit mode \
                 (further ones in the next minute are logged at debug only; \
                 authz_would_deny_total counts them all)"
            ),
            None => tracing::debug!(%caller, port, kind, %policy, "would_deny: let through"),
        }
    }

    /// Enters a deny or would_deny decision in the decision log, if it is on.
    fn record_denial(
        &self,
        conn: &Conn,
        decision: &Decision,
        request: Option<(&http::Method, crate::path::CheckedPath<'_>)>,
    ) {
        let Some(audit) = &self.inner.settings.audit else {
            return;
        };
        let denial = Denial {
            caller: conn.edge.peer_id.as_ref(),
            port: conn.target_port,
            request: request.map(|(m, p)| (m, p.as_str())),
            verdict: decision.verdict,
            policy: &decision.policy,
            mode: decision.mode,
        };
        audit.deny(denial, crate::audit::unix_ms());
    }

    /// The decision log's counter of decisions like `decision` on this connection, if it is on.
    fn audit_slot(&self, conn: &Conn, kind: Kind, decision: &Decision) -> Option<Arc<Slot>> {
        let audit = self.inner.settings.audit.as_ref()?;
        Some(audit.slot(AuditKey {
            caller: conn.edge.peer_id.clone(),
            port: conn.target_port,
            kind,
            verdict: decision.verdict,
            policy: decision.policy.clone(),
            mode: decision.mode,
        }))
    }

    /// Counts a request allowed by `decision`'s policy, in `authz_allow_total` and the decision
    /// log: the counters of the first policy that allowed one on this connection are kept at hand
    /// (a connection's requests are nearly always allowed by the same one), so a request costs
    /// two atomic adds; another policy's are looked up.
    fn allowed(&self, http: &HttpConn, decision: &Decision) {
        let policy = &decision.policy;
        let first = http.allowed.get_or_init(|| Allowed {
            policy: policy.clone(),
            mode: decision.mode,
            counter: self.allow_counter(&http.conn, policy),
            slot: self.audit_slot(&http.conn, Kind::Http, decision),
        });
        if (Arc::ptr_eq(&first.policy, policy) || *first.policy == **policy)
            && first.mode == decision.mode
        {
            first.counter.inc();
            if let Some(slot) = &first.slot {
                slot.hit();
            }
        } else {
            self.allow_counter(&http.conn, policy).inc();
            if let Some(slot) = self.audit_slot(&http.conn, Kind::Http, decision) {
                slot.hit();
            }
        }
    }

    fn allow_counter(&self, conn: &Conn, policy: &Arc<str>) -> Counter {
        self.inner
            .metrics
            .authz_allow_total
            .get_or_create_owned(&AuthzLabels {
                edge: conn.edge.clone(),
                policy: policy.clone(),
                kind: "http",
            })
    }

    /// The rate limits covering this request (its port, method and path), for its caller (the
    /// verified peer, never a header); refused requests are counted per caller.
    fn limit(
        &self,
        rules: &Authorizations,
        conn: &Conn,
        method: &http::Method,
        path: crate::path::CheckedPath<'_>,
    ) -> Result<(), ProxyError> {
        if rules.limits.is_empty() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let caller = conn.client.as_ref();
        let request = (conn.target_port, method, path);
        let Err((limit, refused)) = limit::check(&rules.limits, request, caller, now) else {
            return Ok(());
        };
        self.inner
            .metrics
            .rate_limited_total
            .get_or_create(&LimitLabels {
                edge: conn.edge.clone(),
                policy: limit.name.clone(),
                limit: refused.scope.as_str(),
            })
            .inc();
        Err(ProxyError::RateLimited {
            policy: limit.name.clone(),
            scope: refused.scope.as_str(),
            caller: caller.map_or_else(|| "unauthenticated".to_string(), ToString::to_string),
            retry_after_secs: limit::retry_after_secs(refused.retry_after),
        })
    }

    /// Applies the matched route fault, if any: a delay (in this request's own future, so other
    /// streams of an HTTP/2 connection go on), then an abort.
    async fn inject(&self, fault: Option<&FaultRule>) -> Result<(), ProxyError> {
        let Some(rule) = fault else {
            return Ok(());
        };
        let injection = rule.draw(fastrand::f64);
        let count = |kind| {
            self.inner
                .metrics
                .fault_injected_total
                .get_or_create(&FaultLabels {
                    direction: Direction::Inbound,
                    route: rule.route.clone(),
                    kind,
                })
                .inc();
        };
        if let Some(delay) = injection.delay {
            count("delay");
            tokio::time::sleep(delay).await;
        }
        match injection.abort {
            Some(with) => {
                count("abort");
                Err(ProxyError::FaultAbort {
                    route: rule.route.clone(),
                    with,
                })
            }
            None => Ok(()),
        }
    }

    async fn dial_app(&self, app: SocketAddr) -> Result<pool::Sender, ProxyError> {
        let connect_error = |source| ProxyError::Connect {
            target: app.to_string(),
            source,
        };
        let connect = TcpStream::connect(app);
        let tcp = tokio::time::timeout(self.inner.settings.connect_timeout, connect)
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        pool::handshake(tcp, "the app").await
    }

    async fn forward(
        &self,
        http: &HttpConn,
        mut req: Request<Body>,
        http1: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = http1 && http_util::is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if !upgrade {
            http_util::strip_hop_by_hop(&mut parts.headers);
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut rsp = if http1 {
            if !parts.headers.contains_key(header::HOST)
                && let Some(a) = parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, a);
            }
            parts.version = Version::HTTP_11;
            parts.uri = Uri::from(pq);
            let app = SocketAddr::new(self.inner.settings.app_host, http.conn.target_port);
            let dial = || self.dial_app(app);
            self.inner
                .app
                .send(app, Request::from_parts(parts, body), dial)
                .await?
                .map(body::boxed)
        } else {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(http.app.clone());
            uri.path_and_query = Some(pq);
            parts.uri = Uri::from_parts(uri)
                .map_err(|_| ProxyError::Malformed("the request uri is invalid"))?;
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
            // Boxed: hyper-util's request future is large, and most apps take the pooled path.
            Box::pin(
                self.inner
                    .plain
                    .h2
                    .request(Request::from_parts(parts, body)),
            )
            .await
            .map_err(|e| plain_error(http.app.as_str(), e))?
            .map(body::boxed)
        };
        if let Some(client_upgrade) = client_upgrade
            && rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut rsp);
            http_util::splice_upgrades(
                client_upgrade,
                upstream,
                self.inner.settings.stream_idle_timeout,
                self.inner.metrics.clone(),
                Direction::Inbound,
                http_util::UpgradeCount::Connection(http.tcp.clone()),
            );
            return Ok(rsp);
        }
        if http.conn.mode == Mode::H2 {
            http_util::strip_hop_by_hop(rsp.headers_mut());
        }
        Ok(rsp)
    }
}

/// Answers every request of a connection whose target port is refused with that refusal; with
/// `close` (HTTP/1) the connection closes after the answer (HTTP/2 has no `Connection` header).
fn refusal_service(refusal: PortRefusal, close: bool) -> HttpService {
    HttpService::new(move |_req: Request<Incoming>| async move {
        let mut rsp = ProxyError::Port(refusal).to_response();
        if close {
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        rsp
    })
}

/// The command a 403 body points at, which shows why the request was denied:
/// `onemesh authz explain --from <caller> --to <namespace>/<workload>:<port> --method M --path P`
/// (the port as this proxy sees it; the control plane maps it back to the declared one). The path
/// is quoted for a POSIX shell when it holds anything but the characters every shell leaves alone.
pub fn explain_command(
    caller: &str,
    namespace: &str,
    workload: &str,
    port: u16,
    request: Option<(&http::Method, &str)>,
) -> String {
    let mut cmd =
        format!("onemesh authz explain --from {caller} --to {namespace}/{workload}:{port}");
    if let Some((method, path)) = request {
        let plain = path.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'_' | b'-' | b'~' | b'%' | b':' | b'@' | b'+' | b',' | b'='
                )
        });
        cmd.push_str(" --method ");
        cmd.push_str(method.as_str());
        cmd.push_str(" --path ");
        if plain && !path.is_empty() {
            cmd.push_str(path);
        } else {
            cmd.push('\'');
            cmd.push_str(&path.replace('\'', "'\\''"));
            cmd.push('\'');
        }
    }
    cmd
}

/// How often a refused target port is logged as a warning (the others at debug).
pub const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Lets one event through per interval, and counts the ones held back.
#[derive(Debug)]
struct Throttle {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` before which nothing more goes through.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)` when this one goes through.
    fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Removes from a request the headers only proxies set, so that none from outside reaches the
/// app, and returns its `onemesh-orig-proto`: `onemesh-client-id` (set again from the verified
/// peer) and `onemesh-egress-id` (passed on by the app, it would make the app's own outbound
/// refuse the request as a loop). Requests without any `onemesh-` header, nearly all, cost one
/// pass over the names.
fn take_mesh_headers(headers: &mut http::HeaderMap) -> Option<HeaderValue> {
    if !headers.keys().any(|k| k.as_str().starts_with("onemesh-")) {
        return None;
    }
    headers.remove(CLIENT_ID);
    headers.remove(EGRESS_ID);
    headers.remove(ORIG_PROTO)
}

/// How long an idle connection to the application is reused: shorter than the keep-alive
/// timeout of common application servers (Node.js and uvicorn close idle connections after 5 s),
/// so a request is not sent on a connection the app is closing at that moment (it would fail
/// without an answer; a local connect is cheap).
pub const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a pooled HTTP/1.1 connection from another proxy may stay idle before this side
/// closes it: longer than the other side keeps it in its pool ([`pool::IDLE_TIMEOUT`]), so a
/// request is never sent on a connection this side is closing at that moment.
pub const MESH_KEEP_ALIVE: Duration = Duration::from_secs(pool::IDLE_TIMEOUT.as_secs() + 5);

/// The limits of an HTTP/1.1 connection from another proxy. hyper's header read timeout also
/// closes a connection waiting idle for its next request, so for these (authenticated peers that
/// pool their connections) it is at least [`MESH_KEEP_ALIVE`].
fn mesh_http1_limits(limits: HttpLimits) -> HttpLimits {
    HttpLimits {
        header_read_timeout: limits.header_read_timeout.max(MESH_KEEP_ALIVE),
        ..limits
    }
}

#[cfg(test)]
mod tests;
