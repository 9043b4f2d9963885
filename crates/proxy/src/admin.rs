//! The admin server: `/metrics` (Prometheus text), `/ready` (200 only with a valid certificate
//! and the initial configuration, else 503 and why), `/live` (200 while the process serves),
//! `/identity` (the current leaf as JSON: `id`, `issuer`, `serial`, `not_before_unix_secs`,
//! `not_after_unix_secs`; 503 before the first certificate).
//!
//! It stays up while the data listeners drain, so `/metrics` can be scraped during shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use onemesh_identity::CredentialStore;
use tokio::sync::watch;

use crate::body::{self, Body};
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

/// Serves one admin connection.
pub async fn serve(
    tcp: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    draining: watch::Receiver<bool>,
    stop: Drain,
    limits: HttpLimits,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let rsp = respond(req.uri().path(), &metrics, &readiness, *draining.borrow());
        async move { Ok::<_, Infallible>(rsp) }
    });
    server::serve_http1(tcp, svc, limits, &stop).await;
}
