//! The control-only admin listener (`ONEMESH_PROXY_CONTROL_ADMIN_ADDR`, default `0.0.0.0:4190`):
//! what only the control plane may ask of this proxy: `GET /tap` ([`crate::tap`]) and
//! `POST /authz/explain` ([`crate::explain`]).
//!
//! TLS 1.3 with this proxy's current leaf (renewals and trust bundle updates apply to the next
//! handshake, as on the inbound), a client certificate **required**, verified against the trust
//! anchors (chain, validity, our trust domain, the `clientAuth` extended key usage when the
//! certificate lists usages, exactly one SPIFFE id), and then the peer's id must be the control
//! plane's (`ONEMESH_PROXY_CONTROL_ID`): any other workload's certificate, however valid, gets
//! `403`. A handshake that fails (no certificate, another CA, an expired leaf) ends the
//! connection. Every refusal is counted in `control_admin_refused_total{reason}` (reason: the
//! handshake failure's, or `not_control_plane`).
//!
//! HTTP/1.1 only. `GET /tap?direction=&to=&path=&method=&max_rps=` answers `200`,
//! `application/x-ndjson`, an endless chunked stream; errors before it are JSON
//! `{"error": "..."}`: `400` a bad query, `403` not the control plane, `404` another path, `405`
//! another method, `429` already [`crate::tap::MAX_TAPS`] taps open.
//!
//! `POST /authz/explain` with a JSON body of at most [`crate::explain::MAX_BODY_BYTES`] answers
//! `200` JSON: the decision the inbound's own `authorize()` takes on its current policy snapshot,
//! with the detail of every authorization; `400 {"error": ...}` for a bad or oversized body.
//!
//! On in control-plane mode; in static mode only when both `ONEMESH_PROXY_CONTROL_ADMIN_ADDR` and
//! `ONEMESH_PROXY_CONTROL_ID` are set (tests, benchmarks).

use std::sync::{Arc, Mutex, PoisonError};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use onemesh_identity::{CredentialStore, HandshakeFailure, SpiffeId, peer_id};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::{self, Body};
use crate::drain::Drain;
use crate::explain;
use crate::metrics::{Metrics, RefusalLabels};
use crate::policy::Authorizations;
use crate::server::{self, HttpLimits, HttpService};
use crate::tap::{Filter, Hub};

/// The path of the tap stream.
pub const TAP_PATH: &str = "/tap";
/// The path of the explain endpoint.
pub const EXPLAIN_PATH: &str = "/authz/explain";

/// What the explain endpoint evaluates against: the inbound's own policy watch, this workload's
/// namespace and the proxy's own ports.
#[derive(Clone, Debug)]
pub struct ExplainContext {
    /// The inbound's policy snapshot (the same receiver's channel as the request path's).
    pub policy: watch::Receiver<Arc<Authorizations>>,
    /// This workload's namespace (the default's same-namespace rule).
    pub namespace: Arc<str>,
    /// The proxy's own listening ports (never forwarded to).
    pub proxy_ports: Vec<u16>,
}
/// The refusal reason of a verified peer that is not the control plane.
pub const NOT_CONTROL_PLANE: &str = "not_control_plane";

/// The listener's shared state.
#[derive(Clone)]
pub struct ControlAdmin {
    inner: Arc<Inner>,
}

struct Inner {
    control_id: SpiffeId,
    credentials: watch::Receiver<Option<CredentialStore>>,
    server_config: Mutex<Option<Arc<rustls::ServerConfig>>>,
    hub: Arc<Hub>,
    explain: ExplainContext,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
    handshake_timeout: std::time::Duration,
}

impl ControlAdmin {
    /// Serves only `control_id`, with this proxy's `credentials`.
    pub fn new(
        control_id: SpiffeId,
        credentials: watch::Receiver<Option<CredentialStore>>,
        hub: Arc<Hub>,
        explain: ExplainContext,
        metrics: Arc<Metrics>,
        limits: HttpLimits,
        handshake_timeout: std::time::Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                control_id,
                credentials,
                server_config: Mutex::new(None),
                hub,
                explain,
                metrics,
                limits,
                handshake_timeout,
            }),
        }
    }

    fn refused(&self, reason: &'static str) {
        self.inner
            .metrics
            .control_admin_refused_total
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// The TLS config (made once, from the first credentials: the store updates in place).
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let mut cached = self
            .inner
            .server_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cached.is_none() {
            let store = self.inner.credentials.borrow().clone()?;
            *cached = Some(store.server_config(&[b"http/1.1"]));
        }
        cached.clone()
    }

    /// Serves one accepted connection.
    pub async fn handle(self, tcp: TcpStream, drain: Drain) {
        let Some(config) = self.server_config() else {
            self.refused("not_ready");
            return;
        };
        let accept = TlsAcceptor::from(config).accept(tcp);
        let tls = match tokio::time::timeout(self.inner.handshake_timeout, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.refused(HandshakeFailure::from_io(&e).as_str()),
            Err(_) => return self.refused(HandshakeFailure::Io.as_str()),
        };
        let peer = peer_id(tls.get_ref().1);
        let allowed = peer.as_ref() == Some(&self.inner.control_id);
        if !allowed {
            self.refused(NOT_CONTROL_PLANE);
        }
        let this = self.clone();
        let caller = peer.map_or_else(|| "unauthenticated".to_string(), |p| p.to_string());
        let svc = HttpService::new(move |req: Request<Incoming>| {
            let this = this.clone();
            let refused = (!allowed).then(|| {
                json_error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "{caller} is not the control plane ({}): only the control plane may use \
                         this listener",
                        this.inner.control_id
                    ),
                )
            });
            async move {
                match refused {
                    Some(rsp) => rsp,
                    None if req.uri().path() == EXPLAIN_PATH => this.explain(req).await,
                    None => this.respond(&req),
                }
            }
        });
        server::serve_http1(tls, svc, self.inner.limits, &drain).await;
    }

    /// `POST /authz/explain`: reads at most [`explain::MAX_BODY_BYTES`] of body, then answers
    /// with the inbound's current snapshot.
    async fn explain(&self, req: Request<Incoming>) -> Response<Body> {
        use http_body_util::BodyExt;
        if req.method() != http::Method::POST {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{EXPLAIN_PATH} answers POST only, with a JSON body"),
            );
        }
        let limited = http_body_util::Limited::new(req.into_body(), explain::MAX_BODY_BYTES);
        let body = match limited.collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &explain::ExplainError::TooLarge.to_string(),
                );
            }
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body could not be read: {e}"),
                );
            }
        };
        let ctx = &self.inner.explain;
        let answer = explain::parse(&body).and_then(|query| {
            let snapshot = ctx.policy.borrow().clone();
            explain::explain(&snapshot, &ctx.namespace, &ctx.proxy_ports, &query)
        });
        match answer {
            Ok(answer) => {
                let text = serde_json::to_string(&answer).unwrap_or_default() + "\n";
                let mut rsp = Response::new(body::full(text));
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                rsp
            }
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.uri().path() != TAP_PATH {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no such path {:?}: try GET {TAP_PATH} or POST {EXPLAIN_PATH}",
                    req.uri().path()
                ),
            );
        }
        if req.method() != http::Method::GET {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{TAP_PATH} answers GET only"),
            );
        }
        let filter = match Filter::parse(req.uri().query()) {
            Ok(f) => f,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let stream = match self.inner.hub.subscribe(filter) {
            Ok(s) => s,
            Err(e) => return json_error(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
        };
        let mut rsp = Response::new(body::boxed(stream));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        rsp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        rsp
    }
}

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let text = serde_json::json!({ "error": message }).to_string() + "\n";
    let mut rsp = Response::new(body::full(text));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}
