//! Test helpers: call an axum app in memory with `oneshot` and decode the JSON answer.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A decoded answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub replayed: bool,
}

/// Sends one request; `body` is sent as JSON when given, `key` as `Idempotency-Key`.
pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> Answer {
    call_with(app, method, uri, key, &[], body).await
}

/// Like [`call`], with extra headers.
pub async fn call_with(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        body,
        replayed,
    }
}
