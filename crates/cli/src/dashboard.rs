//! The dashboard of `onemesh up` (default 127.0.0.1:8084): scrapes every proxy's `/metrics` every
//! [`SCRAPE_INTERVAL`] into a [`History`], and serves it as JSON (`/api/stat`, `/api/edges`,
//! `/api/status`) — what `onemesh stat` and `onemesh edges` print — and as one HTML page at `/`.
//!
//! It answers only requests addressed to one of its own names ([`Hosts`]): its bound address,
//! `localhost`, `127.0.0.1` and `[::1]` on its port, and the names given with
//! `onemesh up --dashboard-host`. Any other `Host` gets a 421 before anything is read: otherwise a
//! web page from anywhere could rebind its own domain name to 127.0.0.1 and read the mesh's
//! identities, topology and traffic through the user's browser (DNS rebinding). It does not check
//! `Origin` (the page makes only same-origin GETs, and every response is read-only).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, header};
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
    hosts: Arc<Hosts>,
}

/// The names the dashboard answers to (its DNS-rebinding guard). A name without a port given by
/// the user matches on any port (as a `kubectl port-forward` or a proxy in front would use it);
/// the built-in loopback names match only on the dashboard's own port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Lower-case name (IPv6 addresses in brackets) and the port it must come with, if any.
    names: Vec<(String, Option<u16>)>,
}

impl Hosts {
    /// The built-in names for a dashboard bound on `bound`, plus `extra` (`NAME` or `NAME:PORT`).
    pub fn new(bound: SocketAddr, extra: &[String]) -> anyhow::Result<Self> {
        let port = Some(bound.port());
        let mut names: Vec<(String, Option<u16>)> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(|n| (n.to_string(), port))
            .collect();
        if !bound.ip().is_unspecified() {
            let ip = match bound.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            names.push((ip, port));
        }
        for e in extra {
            let parsed = split_host(e)
                .filter(|(name, _)| {
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
                })
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--dashboard-host {e:?} is not a host name: give NAME or NAME:PORT \
                         (e.g. `dash.example` or `localhost:9084`)"
                    )
                })?;
            names.push(parsed);
        }
        Ok(Self { names })
    }

    /// Whether a request's `Host` (or absolute-form authority) names this dashboard. A host
    /// without a port means port 80, as a browser sends it.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let port = port.unwrap_or(80);
        self.names
            .iter()
            .any(|(n, p)| *n == name && p.is_none_or(|p| p == port))
    }
}

/// `name[:port]` → (lower-case name, port); IPv6 names keep their brackets. None if malformed.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n.to_string(), Some(p)),
            None => (host.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name.to_ascii_lowercase(), port))
}

#[derive(Serialize)]
struct WorkloadStatus<'a> {
    #[serde(flatten)]
    workload: &'a crate::layout::Workload,
    ready: bool,
}

impl Dashboard {
    pub fn new(layout: watch::Receiver<Layout>, hosts: Hosts) -> Self {
        Self {
            history: Arc::default(),
            layout,
            ready: Arc::default(),
            hosts: Arc::new(hosts),
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

    fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if let Some(refused) = self.misdirected(&req) {
            return refused;
        }
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
            "/api/routes" => {
                let rows = self
                    .history
                    .lock()
                    .map(|h| h.routes(window))
                    .unwrap_or_default();
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter(|r| ns.as_deref().is_none_or(|n| r.namespace == n))
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
                "not found: try /, /api/stat, /api/edges, /api/routes or /api/status\n".into(),
            ),
        }
    }
}

impl Dashboard {
    /// A 421 for a request not addressed to one of [`Hosts`] (checked on the `Host` header and on
    /// an absolute-form target's authority, whichever are present; at least one must be, and
    /// there may be only one `Host`).
    fn misdirected<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let header = hosts.next();
        let named = [
            header.map(|h| h.to_str().unwrap_or("")),
            req.uri().authority().map(|a| a.as_str()),
        ];
        let bad = named.iter().flatten().find(|h| !self.hosts.allows(h));
        let shown = match (bad, named) {
            _ if hosts.next().is_some() => "the request has more than one Host".to_string(),
            (Some(h), _) => format!("Host {h:?} is not a name of this dashboard"),
            (None, [None, None]) => "the request names no Host".to_string(),
            (None, _) => return None,
        };
        let addr = self.layout.borrow().dashboard.clone();
        Some(respond(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain; charset=utf-8",
            format!(
                "refused: {shown} (a guard against DNS rebinding). Open http://{addr}/ or \
                 http://localhost:{port}/, or give the name you use to `onemesh up --dashboard-host NAME`.\n",
                port = addr.rsplit_once(':').map_or("", |(_, p)| p)
            )
            .into(),
        ))
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

#[cfg(test)]
mod tests;
