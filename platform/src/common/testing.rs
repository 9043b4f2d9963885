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

/// Serves `app` on 127.0.0.1 port 0 in the background; returns its base URL.
pub async fn serve_local(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(crate::common::serve::serve(
        listener,
        app,
        std::future::pending(),
    ));
    url
}

/// A client config for tests: no proxy, short backoff, 2 attempts.
pub fn client_config() -> crate::common::client::ClientConfig {
    crate::common::client::ClientConfig {
        timeout: std::time::Duration::from_secs(5),
        attempts: 2,
        backoff: std::time::Duration::from_millis(10),
        use_env_proxy: false,
    }
}

/// A base URL where nothing listens (connections are refused).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// An in-memory bank served on a loopback port; returns its URL.
pub async fn local_bank() -> String {
    let db = crate::common::db::Db::open_in_memory(crate::bank::MIGRATIONS).unwrap();
    serve_local(crate::bank::app(crate::bank::BankState { db })).await
}

/// An in-memory card issuer (backed by a local bank) served on a loopback port.
pub async fn local_card() -> String {
    let bank = local_bank().await;
    let db = crate::common::db::Db::open_in_memory(crate::card::MIGRATIONS).unwrap();
    let bank = crate::common::client::Upstream::new("bank", &bank, client_config()).unwrap();
    serve_local(crate::card::app(crate::card::CardState { db, bank })).await
}
