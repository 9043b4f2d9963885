//! Connections the proxy makes: to other proxies over mTLS (one multiplexed HTTP/2 connection per
//! endpoint, re-dialled when it fails; pooled HTTP/1.1 connections per endpoint, [`Http1Pool`],
//! which an upgrade keeps for itself; a dedicated connection per opaque stream), and plain ones to
//! egress destinations and HTTP/2 applications.
//!
//! Every mTLS connection starts with a [`TransportHeader`] right after the handshake. The client
//! TLS config demands exactly the endpoint's expected identity; a failed handshake is classified
//! with [`HandshakeFailure`] and counted in `tls_handshake_failure_total{direction="outbound"}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashMap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use onemesh_identity::{CredentialStore, HandshakeFailure, SpiffeId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use crate::balance::EndpointLoad;
use crate::body::Body;
use crate::discover::Endpoint;
use crate::error::ProxyError;
use crate::io::CoalescedWrites;
use crate::metrics::{Direction, Metrics, ReasonLabels};
use crate::pool::{self, Http1Pool, PooledBody};
use crate::transport_header::{Protocol, TransportHeader};

/// ALPN id of proxy-to-proxy connections.
pub const ALPN: &[u8] = b"onemesh/1";

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
        load: &EndpointLoad,
        authority: &str,
        fresh: bool,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let ep = &load.endpoint;
        let slot = {
            let mut pools = self.inner.h2.lock().unwrap_or_else(PoisonError::into_inner);
            pools.entry(load.key.clone()).or_default().clone()
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
        load: &EndpointLoad,
        authority: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.h2_sender(load, authority, false).await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => match e.take_message() {
                // Not sent: the connection was dead. Re-dial and try once more.
                Some(req) => {
                    let mut sender = self.h2_sender(load, authority, true).await?;
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
    /// connection to the endpoint of `load`, or a new one. An upgrade keeps its connection.
    pub async fn send_http1(
        &self,
        load: &EndpointLoad,
        authority: &str,
        req: Request<Body>,
    ) -> Result<Response<PooledBody<EndpointKey>>, ProxyError> {
        let dial = || async {
            let tls = self
                .connect(&load.endpoint, Protocol::Http1, authority)
                .await?;
            pool::handshake(tls, "the peer proxy").await
        };
        self.inner.http1.send(load.key.clone(), req, dial).await
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

/// Plain HTTP clients for egress and HTTP/2 applications (pooled, with upgrades); HTTP/1.1 to the
/// local application goes through the inbound's own [`Http1Pool`].
#[derive(Clone, Debug)]
pub struct PlainClients {
    /// HTTP/1.1 (egress).
    pub http1: LegacyClient<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge (gRPC apps).
    pub h2: LegacyClient<HttpConnector, Body>,
}

impl PlainClients {
    /// Builds both clients.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let http1 = LegacyClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let h2 = LegacyClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self { http1, h2 }
    }
}

/// Maps a plain client's error to a proxy error.
pub fn plain_error(target: &str, e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        let source = std::error::Error::source(&e)
            .map(|s| std::io::Error::other(s.to_string()))
            .unwrap_or_else(|| std::io::Error::other("connect failed"));
        ProxyError::Connect {
            target: target.to_string(),
            source,
        }
    } else {
        ProxyError::Upstream(e.to_string())
    }
}
