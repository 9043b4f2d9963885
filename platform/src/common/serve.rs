//! Serving a service: JSON logs, the routes every service has (`/healthz`, `/openapi.json`, a
//! JSON 404 for unknown paths), a per-request log line, and the accept loop with graceful stop.

use std::future::Future;
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::api::ErrorBody;

/// Installs a JSON log subscriber on stdout (`RUST_LOG` filters, default `info`). Safe to call
/// more than once; later calls do nothing.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}

/// Answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves.
    pub status: String,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "serving", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such route; see /openapi.json for this service's API".into(),
            code: "no_route".into(),
        }),
    )
        .into_response()
}

async fn log_request(service: &'static str, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        service,
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Adds `/healthz`, `/openapi.json`, the JSON 404 fallback and request logging (one JSON line
/// per request, tagged with `service`) to a service's routes.
pub fn with_common(
    service: &'static str,
    router: Router,
    openapi: utoipa::openapi::OpenApi,
) -> Router {
    let spec = openapi;
    router
        .route("/healthz", get(healthz))
        .route(
            "/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { Json(spec) }
            }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            log_request(service, req, next)
        }))
}

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
