//! The admin server: `/metrics` (Prometheus text), `/ready` (200 only with a valid certificate
//! and the initial configuration, else 503 and why), `/live` (200 while the process serves),
//! `/identity` (the current leaf as JSON: `id`, `issuer`, `serial`, `not_before_unix_secs`,
//! `not_after_unix_secs`; 503 before the first certificate).
//!
//! It stays up while the data listeners drain, so `/metrics` can be scraped during shutdown.
//!
//! `/app-probe/<container>/<liveness|readiness|startup>`: the app's own probes, which the
//! injector moved here (`ONEMESH_PROXY_APP_PROBES`, see [`crate::config::AppProbes`]). Under
//! default-deny the kubelet's probe of the app's port would be refused by the inbound proxy (it is
//! unauthenticated), and the admin port is left out of traffic capture; so the kubelet asks here
//! and the proxy performs the probe on loopback: HTTP `GET http://127.0.0.1:<port><path>` with the
//! declared headers, answered 200 when the app says 2xx/3xx and 503 otherwise (never the app's
//! body), or a TCP connect to `127.0.0.1:<port>`; each within the probe's timeout. A path not
//! configured is 404. Only configured probes run: a caller cannot make the proxy reach any
//! other port or path. (Istio's approach.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use onemesh_identity::CredentialStore;
use tokio::sync::watch;

use crate::body::{self, Body};
use crate::config::{AppProbe, AppProbes, ProbeAction};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::server::{self, HttpLimits};

/// What `/ready` looks at.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// This proxy's credentials (`None` until the first certificate).
    pub credentials: watch::Receiver<Option<CredentialStore>>,
    /// Whether the initial configuration (discovery + policy) is loaded.
    pub config_loaded: watch::Receiver<bool>,
    /// Control-plane mode's state: more reasons, and the "serving last known configuration" note.
    pub control: Option<crate::control::ControlPlane>,
}

impl Readiness {
    /// `Ok(())` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        match self.credentials.borrow().as_ref() {
            None => problems.push("no identity certificate yet".to_string()),
            Some(store) => {
                let current = store.current();
                if current.not_after <= SystemTime::now() {
                    problems.push("the identity certificate has expired".to_string());
                }
            }
        }
        if !*self.config_loaded.borrow() {
            problems.push("the initial configuration is not loaded".to_string());
        }
        if let Some(control) = &self.control {
            problems.extend(control.problems(self.credentials.borrow().is_some()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// What a ready proxy should add (it lost the control plane but serves its last state).
    pub fn note(&self) -> Option<&'static str> {
        self.control
            .as_ref()
            .and_then(crate::control::ControlPlane::note)
    }
}

/// Answers one admin request.
pub fn respond(
    path: &str,
    metrics: &Metrics,
    readiness: &Readiness,
    draining: bool,
) -> Response<Body> {
    let (status, content_type, text) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            match &readiness.control {
                Some(control) => control.append_metrics(metrics.encode()),
                None => metrics.encode(),
            },
        ),
        "/ready" => match readiness.check() {
            Ok(()) if !draining => match readiness.note() {
                Some(note) => (StatusCode::OK, "text/plain", format!("ready: {note}\n")),
                None => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            },
            Ok(()) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: draining\n".to_string(),
            ),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/live" => (StatusCode::OK, "text/plain", "live\n".to_string()),
        "/identity" => {
            match crate::control::identity_json(readiness.credentials.borrow().as_ref()) {
                Ok(json) => (StatusCode::OK, "application/json", json),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("no identity: {why}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /ready, /live or /identity\n".to_string(),
        ),
    };
    let mut rsp = Response::new(body::full(text));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

/// Where the app's probes are asked for.
pub const APP_PROBE_PREFIX: &str = "/app-probe/";

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut rsp = Response::new(body::full(text));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    rsp
}

/// Runs the app probe at `/app-probe/<key>` (see the module doc).
pub async fn app_probe(probes: &AppProbes, key: &str) -> Response<Body> {
    let Some(probe) = probes.get(key) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("not found: no app probe {key:?} is configured\n"),
        );
    };
    match tokio::time::timeout(probe.timeout, run_probe(probe)).await {
        Ok(Ok(())) => plain(StatusCode::OK, "app probe ok\n".to_string()),
        Ok(Err(why)) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe failed: {why}\n"),
        ),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe failed: no answer within {:?}\n", probe.timeout),
        ),
    }
}

async fn run_probe(probe: &AppProbe) -> Result<(), String> {
    let port = match &probe.action {
        ProbeAction::Http { port, .. } | ProbeAction::Tcp { port } => *port,
    };
    let tcp = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    let ProbeAction::Http { path, headers, .. } = &probe.action else {
        return Ok(());
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with 127.0.0.1:{port}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(http::Method::GET)
        .uri(path.clone())
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::USER_AGENT, "onemesh-app-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the probe request: {e}"))?;
    for (name, value) in headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let result = send.send_request(req).await;
    conn.abort();
    let status = result
        .map_err(|e| format!("GET {path} on 127.0.0.1:{port}: {e}"))?
        .status();
    // The kubelet's rule: 200-399 is healthy.
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("GET {path} on 127.0.0.1:{port} answered {status}"))
    }
}

/// Serves one admin connection.
pub async fn serve(
    tcp: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    draining: watch::Receiver<bool>,
    stop: Drain,
    limits: HttpLimits,
    probes: Arc<AppProbes>,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let path = req.uri().path();
        let answer = match path.strip_prefix(APP_PROBE_PREFIX) {
            Some(key) => Err((probes.clone(), key.to_string())),
            None => Ok(respond(path, &metrics, &readiness, *draining.borrow())),
        };
        async move {
            Ok::<_, Infallible>(match answer {
                Ok(rsp) => rsp,
                Err((probes, key)) => app_probe(&probes, &key).await,
            })
        }
    });
    server::serve_http1(tcp, svc, limits, &stop).await;
}

#[cfg(test)]
mod tests;
