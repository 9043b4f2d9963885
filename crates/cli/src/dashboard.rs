//! The dashboard of `onemesh up` (default 127.0.0.1:8084): scrapes every proxy's `/metrics` every
//! [`SCRAPE_INTERVAL`] into a [`History`], and serves it as JSON (`/api/stat`, `/api/edges`,
//! `/api/status`) — what `onemesh stat` and `onemesh edges` print — and as one HTML page at `/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::history::History;
use crate::layout::Layout;

pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// Window of `/api/stat` and `/api/edges` when the query names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

const PAGE: &str = include_str!("dashboard.html");

#[derive(Clone)]
pub struct Dashboard {
    history: Arc<Mutex<History>>,
    layout: watch::Receiver<Layout>,
    ready: Arc<Mutex<HashMap<String, bool>>>,
}

#[derive(Serialize)]
struct WorkloadStatus<'a> {
    #[serde(flatten)]
    workload: &'a crate::layout::Workload,
    ready: bool,
}

impl Dashboard {
    pub fn new(layout: watch::Receiver<Layout>) -> Self {
        Self {
            history: Arc::default(),
            layout,
            ready: Arc::default(),
        }
    }

    /// Scrapes every proxy forever (until the task is dropped).
    pub async fn scrape_forever(self) {
        let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let workloads = self.layout.borrow().workloads.clone();
            for w in workloads {
                let at = Instant::now();
                let metrics = crate::http::get(&w.admin, "/metrics", Duration::from_secs(1)).await;
                let ready = matches!(
                    crate::http::get(&w.admin, "/ready", Duration::from_secs(1)).await,
                    Ok((s, _)) if s == StatusCode::OK
                );
                self.ready.lock().map(|mut r| r.insert(w.key(), ready)).ok();
                let Ok((StatusCode::OK, text)) = metrics else {
                    continue;
                };
                if let (Ok(samples), Ok(mut h)) = (crate::prom::parse(&text), self.history.lock()) {
                    h.record(&w.key(), at, samples);
                }
            }
        }
    }

    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let window = query(req.uri().query(), "window")
            .and_then(|w| w.parse::<u64>().ok())
            .map_or(DEFAULT_WINDOW, Duration::from_secs);
        let ns = query(req.uri().query(), "namespace");
        match req.uri().path() {
            "/" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
            "/api/stat" => {
                let rows = self
                    .history
                    .lock()
                    .map(|h| h.stat(window))
                    .unwrap_or_default();
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter(|r| ns.as_deref().is_none_or(|n| r.namespace == n))
                    .collect();
                json(&rows)
            }
            "/api/edges" => {
                let ids: HashMap<String, String> = self
                    .layout
                    .borrow()
                    .workloads
                    .iter()
                    .map(|w| (w.key(), w.identity.clone()))
                    .collect();
                let rows = self
                    .history
                    .lock()
                    .map(|h| h.edges(window, &ids))
                    .unwrap_or_default();
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter(|e| {
                        ns.as_deref().is_none_or(|n| {
                            e.src.starts_with(&format!("{n}/"))
                                || e.dst.starts_with(&format!("{n}/"))
                        })
                    })
                    .collect();
                json(&rows)
            }
            "/api/status" => {
                let layout = self.layout.borrow().clone();
                let ready = self.ready.lock().map(|r| r.clone()).unwrap_or_default();
                let rows: Vec<_> = layout
                    .workloads
                    .iter()
                    .map(|w| WorkloadStatus {
                        workload: w,
                        ready: ready.get(&w.key()).copied().unwrap_or(false),
                    })
                    .collect();
                json(&serde_json::json!({ "entries": layout.entries, "workloads": rows }))
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /, /api/stat, /api/edges or /api/status\n".into(),
            ),
        }
    }
}

/// Binds the dashboard address; port 0 picks a free one.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn query(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

fn json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => respond(StatusCode::OK, "application/json", body.into()),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode: {e}\n").into(),
        ),
    }
}

fn respond(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}
