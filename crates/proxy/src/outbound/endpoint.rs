//! The endpoint stage of the outbound stack: a request on its way to the chosen endpoint's inbound
//! proxy, and the one place where the outbound rewrites a request head for the hop it takes
//! ([`rewrite_request`], [`Hop`]: pooled HTTP/1.1 to a proxy, HTTP/2 to a proxy, plain HTTP/1.1
//! to a destination outside the mesh) and a response head for the app ([`rewrite_response`]).
//!
//! Connections to other proxies ([`MeshClient`]): mTLS, one multiplexed HTTP/2 connection per
//! endpoint (re-dialled when it fails), pooled HTTP/1.1 connections per endpoint ([`Http1Pool`]),
//! which an upgrade keeps for itself, and a dedicated connection per opaque stream. Every one
//! starts with a [`TransportHeader`] right after the handshake. The client TLS config demands
//! exactly the endpoint's expected identity; a failed handshake is classified with
//! [`HandshakeFailure`] and counted in `tls_handshake_failure_total{direction="outbound"}`.
//!
//! This stage knows endpoints and their pool keys, not the balancer's load state: the caller
//! (the retry stage) records each attempt's latency on the endpoint it picked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashMap;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use onemesh_identity::{CredentialStore, HandshakeFailure, SpiffeId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use crate::body::{self, Body};
use crate::client::ALPN;
use crate::config::Http1Transport;
use crate::discover::Endpoint;
use crate::error::ProxyError;
use crate::http_util::{self, ORIG_PROTO};
use crate::io::CoalescedWrites;
use crate::metrics::{Direction, EdgeLabels, Metrics, ReasonLabels, Tls};
use crate::pool::{self, Http1Pool, PooledBody};
use crate::transport_header::{Protocol, TransportHeader};

type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// An endpoint as the pools key it: its inbound address, the app port, and its identity (shared:
/// every request clones its key).
pub type EndpointKey = Arc<(SocketAddr, u16, SpiffeId)>;

/// The pool key of `ep`.
pub fn endpoint_key(ep: &Endpoint) -> EndpointKey {
    Arc::new((ep.addr, ep.target_port, ep.identity.clone()))
}

/// Dials other proxies.
#[derive(Clone)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

struct Inner {
    credentials: watch::Receiver<Option<CredentialStore>>,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    configs: Mutex<HashMap<SpiffeId, Arc<rustls::ClientConfig>>>,
    h2: Mutex<HashMap<EndpointKey, H2Slot>>,
    http1: Http1Pool<EndpointKey>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").finish_non_exhaustive()
    }
}

impl MeshClient {
    /// A client that presents the certificate in `credentials`.
    pub fn new(
        credentials: watch::Receiver<Option<CredentialStore>>,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                credentials,
                connect_timeout,
                metrics,
                configs: Mutex::default(),
                h2: Mutex::default(),
                http1: Http1Pool::new(connect_timeout),
            }),
        }
    }

    fn config(&self, expected: &SpiffeId) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
        let store = self
            .inner
            .credentials
            .borrow()
            .clone()
            .ok_or(ProxyError::NotReady("no identity certificate yet"))?;
        let mut configs = self
            .inner
            .configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(configs
            .entry(expected.clone())
            .or_insert_with(|| store.client_config(expected, &[ALPN]))
            .clone())
    }

    /// Dials `ep` over mTLS and writes the transport header.
    pub async fn connect(
        &self,
        ep: &Endpoint,
        protocol: Protocol,
        authority: &str,
    ) -> Result<TlsStream<CoalescedWrites<TcpStream>>, ProxyError> {
        let config = self.config(&ep.identity)?;
        let timeout = self.inner.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(ep.addr))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(|source| ProxyError::Connect {
                target: ep.addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        // TLS records are gathered under TLS and written at each flush: one syscall per flush
        // instead of one per record (the profile in bench/results showed 9-19 % in those writes).
        let tcp = CoalescedWrites::new(tcp);
        let handshake = TlsConnector::from(config).connect(ep.identity.tls_server_name(), tcp);
        let mut tls = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = HandshakeFailure::from_io(&e);
                self.handshake_failed(reason);
                return Err(ProxyError::Tls {
                    addr: ep.addr,
                    reason,
                });
            }
            Err(_) => {
                self.handshake_failed(HandshakeFailure::Io);
                return Err(ProxyError::Tls {
                    addr: ep.addr,
                    reason: HandshakeFailure::Io,
                });
            }
        };
        let header = TransportHeader {
            protocol,
            target_port: ep.target_port,
            authority: truncate(authority).to_string(),
        };
        let bytes = header
            .encode()
            .map_err(|_| ProxyError::Malformed("authority too long"))?;
        let written = async {
            tls.write_all(&bytes).await?;
            tls.flush().await
        };
        written
            .await
            .map_err(|e| ProxyError::Upstream(format!("writing the transport header: {e}")))?;
        Ok(tls)
    }

    fn handshake_failed(&self, reason: HandshakeFailure) {
        self.inner
            .metrics
            .tls_handshake_failure_total
            .get_or_create(&ReasonLabels {
                direction: Direction::Outbound,
                reason: reason.as_str(),
            })
            .inc();
    }

    async fn h2_sender(
        &self,
        ep: &Endpoint,
        key: &EndpointKey,
        authority: &str,
        fresh: bool,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let slot = {
            let mut pools = self.inner.h2.lock().unwrap_or_else(PoisonError::into_inner);
            pools.entry(key.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(sender) = guard.as_ref()
            && !fresh
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        // Boxed: the rare path, kept out of every request's future.
        let (sender, conn) = Box::pin(async {
            let tls = self.connect(ep, Protocol::H2, authority).await?;
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ProxyError::Upstream(format!("http/2 handshake: {e}")))
        })
        .await?;
        let addr = ep.addr;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%addr, %error, "mesh h2 connection ended");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }

    /// Sends a request over the endpoint's shared HTTP/2 connection, dialling (once more) if it
    /// is closed or fails before the request was sent.
    pub async fn send_h2(
        &self,
        ep: &Endpoint,
        key: &EndpointKey,
        authority: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.h2_sender(ep, key, authority, false).await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => match e.take_message() {
                // Not sent: the connection was dead. Re-dial and try once more.
                Some(req) => {
                    let mut sender = self.h2_sender(ep, key, authority, true).await?;
                    sender
                        .send_request(req)
                        .await
                        .map_err(|e| ProxyError::Upstream(e.to_string()))
                }
                None => Err(ProxyError::Upstream(e.into_error().to_string())),
            },
        }
    }

    /// Closes idle pooled HTTP/1.1 connections beyond the `keep` most recently used per endpoint.
    pub fn shrink_idle(&self, keep: usize) {
        self.inner.http1.shrink_idle(keep);
    }

    /// Closes idle pooled HTTP/1.1 connections that the peer closed or that outlived their idle
    /// timeout; returns how many.
    pub fn prune_idle(&self) -> usize {
        self.inner.http1.prune()
    }

    /// Sends an HTTP/1.1 request (origin-form, with its Host header) on an idle pooled mTLS
    /// connection to `ep`, or a new one. An upgrade keeps its connection.
    pub async fn send_http1(
        &self,
        ep: &Endpoint,
        key: &EndpointKey,
        authority: &str,
        req: Request<Body>,
    ) -> Result<Response<PooledBody<EndpointKey>>, ProxyError> {
        let dial = || async {
            let tls = self.connect(ep, Protocol::Http1, authority).await?;
            pool::handshake(tls, "the peer proxy").await
        };
        self.inner.http1.send(key.clone(), req, dial).await
    }
}

fn truncate(s: &str) -> &str {
    let max = crate::transport_header::MAX_AUTHORITY_LEN;
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How a request leaves the outbound, and so how its head is rewritten.
#[derive(Clone, Copy, Debug)]
pub enum Hop<'a> {
    /// To another proxy on a pooled HTTP/1.1 connection (or an upgrade's own): origin-form, with
    /// a Host (the target's `authority` when the app sent none).
    MeshHttp1 {
        /// The target's `host:port`.
        authority: &'a str,
    },
    /// To another proxy on its HTTP/2 connection: absolute-form, no Host, the app's HTTP/1
    /// version in `onemesh-orig-proto`.
    MeshH2 {
        /// The target's `host:port`.
        authority: &'a str,
    },
    /// Outside the mesh, plain HTTP/1.1: absolute-form to where it connects, with a Host (the
    /// target's `authority` when the app sent none).
    Egress {
        /// What the client connects to (the original destination, else the name).
        connect_to: &'a str,
        /// The target's `host:port`.
        authority: &'a str,
    },
}

/// Rewrites a request head for `hop`: hop-by-hop headers go (kept on an `upgrade`, which needs
/// them), a `onemesh-orig-proto` from the app goes, and the URI, Host and version become what the
/// hop carries.
pub fn rewrite_request(
    req: &mut Request<Body>,
    hop: Hop<'_>,
    upgrade: bool,
) -> Result<(), ProxyError> {
    if !upgrade {
        http_util::strip_hop_by_hop(req.headers_mut());
    }
    match hop {
        Hop::MeshHttp1 { authority } => {
            http_util::take(req.headers_mut(), &ORIG_PROTO);
            if !req.headers().contains_key(header::HOST) {
                let host = HeaderValue::from_str(authority).map_err(|_| {
                    ProxyError::Malformed("the request's host is not a valid header")
                })?;
                req.headers_mut().insert(header::HOST, host);
            }
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = Version::HTTP_11;
        }
        Hop::MeshH2 { authority } => {
            let original = req.version();
            let headers = req.headers_mut();
            http_util::take(headers, &ORIG_PROTO);
            if let Some(v) = http_util::version_name(original) {
                headers.insert(ORIG_PROTO, v);
            }
            headers.remove(header::HOST);
            *req.uri_mut() = absolute(req.uri(), authority)?;
            *req.version_mut() = Version::HTTP_2;
        }
        Hop::Egress {
            connect_to,
            authority,
        } => {
            if !req.headers().contains_key(header::HOST)
                && let Ok(host) = HeaderValue::from_str(authority)
            {
                req.headers_mut().insert(header::HOST, host);
            }
            *req.uri_mut() = absolute(req.uri(), connect_to)?;
            *req.version_mut() = Version::HTTP_11;
        }
    }
    Ok(())
}

/// Rewrites a response head from another proxy for the app: hop-by-hop headers go (and with them
/// any `TE`), and the version is the one the app spoke.
pub fn rewrite_response<B>(rsp: &mut Response<B>, original: Version) {
    // (A message without hop-by-hop headers has no TE either.)
    if http_util::strip_hop_by_hop(rsp.headers_mut()) {
        rsp.headers_mut().remove(header::TE);
    }
    *rsp.version_mut() = original;
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

/// Joins the app's and the upstream's streams after a `101 Switching Protocols`.
#[derive(Clone, Debug)]
pub struct Upgrades {
    /// How long a spliced stream may move no byte.
    pub idle: Duration,
    /// Where an idle close is counted.
    pub metrics: Arc<Metrics>,
    /// This workload's namespace (the spliced stream's edge labels).
    pub namespace: Arc<str>,
    /// This workload's name.
    pub workload: Arc<str>,
}

impl Upgrades {
    /// Splices the two sides of an upgrade (in a task of its own), counted as a TCP stream to
    /// `dst` (`None`: outside the mesh) from now on.
    pub fn splice(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        dst: Option<&Endpoint>,
    ) {
        let labels = EdgeLabels {
            direction: Direction::Outbound,
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            dst_namespace: dst.map_or_else(|| "".into(), |ep| ep.namespace.clone()),
            dst_workload: dst.map_or_else(|| "".into(), |ep| ep.workload.clone()),
            peer_id: dst.map(|ep| Arc::from(ep.identity.as_str())),
            tls: if dst.is_some() {
                Tls::True
            } else {
                Tls::NoIdentity
            },
        };
        let guard = self.metrics.open_tcp(labels);
        http_util::splice_upgrades(
            client,
            upstream,
            self.idle,
            self.metrics.clone(),
            Direction::Outbound,
            http_util::UpgradeCount::Stream(guard),
        );
    }
}

/// The endpoint stage: sends requests to other proxies' inbound.
#[derive(Clone)]
pub struct Endpoints {
    /// The connections to other proxies.
    pub mesh: MeshClient,
    /// How the app's HTTP/1 requests travel.
    pub transport: Http1Transport,
    /// Where upgraded streams are spliced.
    pub upgrades: Upgrades,
}

impl Endpoints {
    /// Sends a request to `ep`'s inbound proxy as the transport says (HTTP/2 requests, and HTTP/1
    /// ones with [`Http1Transport::H2`], on the endpoint's HTTP/2 connection; other HTTP/1
    /// requests and upgrades on pooled HTTP/1.1) and gives the app the answer in the version it
    /// spoke.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        ep: &Endpoint,
        key: &EndpointKey,
        authority: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let original = req.version();
        let upgrade = http_util::is_upgrade(&req);
        if upgrade || (original != Version::HTTP_2 && self.transport == Http1Transport::Http1) {
            // HTTP/1.1 on a pooled connection, as the app sent it (h2 cannot carry an upgrade;
            // an upgraded connection is spliced and never goes back to the pool).
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            rewrite_request(&mut req, Hop::MeshHttp1 { authority }, upgrade)?;
            let mut rsp = self.mesh.send_http1(ep, key, authority, req).await?;
            if let Some(client_upgrade) = client_upgrade
                && rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            {
                let upstream = hyper::upgrade::on(&mut rsp);
                self.upgrades.splice(client_upgrade, upstream, Some(ep));
                return Ok(rsp.map(body::boxed));
            }
            rewrite_response(&mut rsp, original);
            return Ok(rsp.map(body::boxed));
        }
        rewrite_request(&mut req, Hop::MeshH2 { authority }, false)?;
        let mut rsp = self.mesh.send_h2(ep, key, authority, req).await?;
        rewrite_response(&mut rsp, original);
        Ok(rsp.map(body::boxed))
    }
}

#[cfg(test)]
mod tests;
