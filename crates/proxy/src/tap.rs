//! Tap: live metadata of the requests this proxy handles, for the control plane (`GET /tap` on
//! the control-only admin listener, [`crate::control_admin`]) and for JSON access logs
//! (`ONEMESH_PROXY_ACCESS_LOG=json`).
//!
//! The request path publishes to a [`Hub`]. With no tap attached and access logs off, a request
//! pays one relaxed atomic load ([`Hub::enabled`]): nothing is copied, masked or allocated. With
//! one, a request's head is captured when it arrives ([`Hub::capture`]: method, URI and headers,
//! cheap clones) and the event is built at response headers time ([`telemetry::finish`]): the
//! authority, path and headers masked ([`mask`]), then offered to every subscriber whose filter
//! it matches, serialized once. Each subscriber has a token bucket (`max_rps`) and a bounded
//! channel (`try_send`); an event refused by either is counted and reported in a
//! `{"dropped": n}` line at most once a second. A slow reader therefore never slows a request:
//! its events are dropped. Bodies are never read.
//!
//! The event's JSON (one line; `null` where unknown):
//!
//! ```json
//! {"time_unix": 1764800000.123, "direction": "inbound",
//!  "proxy": {"namespace": "card", "workload": "card", "id": "spiffe://…/ns/card/sa/card"},
//!  "source": {"id": "spiffe://…/ns/pg/sa/pg", "namespace": "pg", "workload": "pg"},
//!  "destination": {"id": "spiffe://…/ns/card/sa/card", "namespace": "card", "workload": "card"},
//!  "tls": true, "method": "POST", "authority": "card.card:8080",
//!  "path": "/v1/authorizations?card=****-****-****-1111", "route": "default", "status": 200,
//!  "latency_ms": 1.83, "error": null, "headers": {"x-merchant-key": "[masked]"}}
//! ```
//!
//! A peer's namespace and workload come from its SPIFFE id (`ns/<namespace>/sa/<account>`, the
//! account being the workload, as for this proxy's own default); an outbound destination's from
//! discovery. Filters match the masked authority and path, so a filter cannot be used to guess a
//! masked number.
//!
//! [`telemetry::finish`]: crate::telemetry::finish

pub mod mask;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use onemesh_identity::SpiffeId;
use tokio::sync::mpsc;

use crate::metrics::{Direction, RouteLabels, Tls};
use mask::Masker;

/// At most this many taps are open on one proxy.
pub const MAX_TAPS: usize = 8;
/// `max_rps` when the query has none.
pub const DEFAULT_MAX_RPS: u32 = 100;
/// The largest `max_rps` (a larger one is capped).
pub const MAX_RPS: u32 = 1000;
/// Lines queued per subscriber before new ones are dropped: 64 ms of slack at the highest
/// `max_rps`, and a bound on a tap's memory (a line is at most ~11 KiB: 32 headers of 256 bytes,
/// a 2 KiB path; typically ~600 bytes).
const QUEUE: usize = 64;
/// Request headers an event carries at most.
pub const MAX_HEADERS: usize = 32;
/// Bytes of a header value after masking.
pub const MAX_HEADER_VALUE: usize = 256;
/// Bytes of the path (with its query) after masking.
pub const MAX_PATH: usize = 2048;
/// Bytes of the authority after masking.
pub const MAX_AUTHORITY: usize = 512;
/// How often a subscriber hears about its dropped events (at most).
const DROPPED_EVERY: Duration = Duration::from_secs(1);

/// This proxy, as events name it.
#[derive(Clone, Debug)]
pub struct ProxyInfo {
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its workload.
    pub workload: Arc<str>,
    /// Its SPIFFE id.
    pub id: Arc<str>,
}

/// Where the request path publishes events.
#[derive(Debug)]
pub struct Hub {
    /// Subscribers attached, plus one when access logs are on: zero means nothing to do.
    active: AtomicUsize,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    access_log: bool,
    masker: Masker,
    proxy: ProxyInfo,
}

impl Hub {
    /// A hub for `proxy`, masking with `masker`, writing access logs to stdout when asked.
    pub fn new(proxy: ProxyInfo, masker: Masker, access_log: bool) -> Arc<Hub> {
        Arc::new(Hub {
            active: AtomicUsize::new(usize::from(access_log)),
            subscribers: Mutex::new(Vec::new()),
            access_log,
            masker,
            proxy,
        })
    }

    /// A hub that never publishes (tests, tools).
    pub fn off() -> Arc<Hub> {
        Hub::new(
            ProxyInfo {
                namespace: "".into(),
                workload: "".into(),
                id: "".into(),
            },
            Masker::default(),
            false,
        )
    }

    /// Whether anything listens: the request path's only cost when nothing does.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// How many taps are attached.
    pub fn taps(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Subscriber>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Captures what an event needs of a request's head, when anything listens.
    #[inline]
    pub fn capture<B>(self: &Arc<Self>, req: &Request<B>) -> Option<Box<Pending>> {
        if !self.enabled() {
            return None;
        }
        Some(Box::new(Pending {
            hub: self.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }))
    }

    /// Attaches a subscriber; `Err` when [`MAX_TAPS`] are open.
    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Result<TapStream, TooManyTaps> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sub = Arc::new(Subscriber {
            bucket: Mutex::new(Bucket::new(filter.max_rps)),
            filter,
            tx,
            dropped: AtomicU64::new(0),
        });
        {
            let mut subs = self.lock();
            if subs.len() >= MAX_TAPS {
                return Err(TooManyTaps);
            }
            subs.push(sub.clone());
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        Ok(TapStream {
            hub: self.clone(),
            sub,
            rx,
            next_dropped: tokio::time::Instant::now() + DROPPED_EVERY,
            tick: None,
        })
    }

    fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        let mut subs = self.lock();
        if let Some(i) = subs.iter().position(|s| Arc::ptr_eq(s, sub)) {
            subs.swap_remove(i);
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Offers one finished request to the subscribers (and the access log).
    fn publish(&self, event: &Event<'_>) {
        let now = tokio::time::Instant::now();
        let mut line: Option<Bytes> = None;
        // (held while offering: try_send never waits, and (un)subscribing is rare)
        let subs = self.lock();
        for sub in subs.iter() {
            if !sub.filter.matches(event) {
                continue;
            }
            let allowed = sub
                .bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(now);
            if !allowed {
                sub.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let bytes = line.get_or_insert_with(|| event.to_line()).clone();
            if sub.tx.try_send(bytes).is_err() {
                sub.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(subs);
        if self.access_log {
            let bytes = line.get_or_insert_with(|| event.to_line());
            // One write per line; a failed stdout is not the request's problem.
            let _ = std::io::stdout().lock().write_all(bytes);
        }
    }
}

/// [`Hub::subscribe`] refused: too many taps open.
#[derive(Debug, thiserror::Error)]
#[error(
    "this proxy already serves {MAX_TAPS} taps: close one (or wait for one to end) and try again"
)]
pub struct TooManyTaps;

/// A request's head, kept until its response headers ([`Pending::publish`]).
#[derive(Debug)]
pub struct Pending {
    hub: Arc<Hub>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Pending {
    /// Builds the event of this request, answered `rsp` under `labels` after `start`, and
    /// offers it.
    pub fn publish<B>(
        self,
        direction: Direction,
        labels: &RouteLabels,
        start: Instant,
        rsp: &Response<B>,
    ) {
        let latency = start.elapsed();
        let hub = &*self.hub;
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| {
                crate::http_util::find(&self.headers, &http::header::HOST).map(|v| v.as_bytes())
            })
            .unwrap_or_default();
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes();
        let edge = &labels.edge;
        let proxy = Peer {
            id: Some(&hub.proxy.id),
            namespace: Some(&hub.proxy.namespace),
            workload: Some(&hub.proxy.workload),
        };
        let nonempty = |s: &Arc<str>| (!s.is_empty()).then(|| s.to_string());
        let (source, destination) = match direction {
            Direction::Inbound => (Peer::of_id(edge.peer_id.as_deref()), proxy.owned()),
            Direction::Outbound => (
                proxy.owned(),
                OwnedPeer {
                    id: edge.peer_id.as_deref().map(str::to_string),
                    namespace: nonempty(&edge.dst_namespace),
                    workload: nonempty(&edge.dst_workload),
                },
            ),
        };
        let error = crate::http_util::find(
            rsp.headers(),
            &http::HeaderName::from_static(crate::error::ERROR_HEADER),
        )
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let event = Event {
            time_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            direction: direction.as_str(),
            proxy,
            source,
            destination,
            tls: edge.tls == Tls::True,
            method: self.method.as_str(),
            authority: mask::text(authority, MAX_AUTHORITY),
            path: mask::text(path, MAX_PATH),
            route: &labels.route,
            status: rsp.status().as_u16(),
            latency_ms: latency.as_secs_f64() * 1000.0,
            error,
            headers: Headers {
                headers: &self.headers,
                masker: &hub.masker,
            },
        };
        hub.publish(&event);
    }
}

/// A peer as events name it, borrowed.
#[derive(Clone, Copy, Debug)]
struct Peer<'a> {
    id: Option<&'a str>,
    namespace: Option<&'a str>,
    workload: Option<&'a str>,
}

impl Peer<'_> {
    fn owned(&self) -> OwnedPeer {
        OwnedPeer {
            id: self.id.map(str::to_string),
            namespace: self.namespace.map(str::to_string),
            workload: self.workload.map(str::to_string),
        }
    }

    /// From a verified SPIFFE id (`None`: unauthenticated).
    fn of_id(id: Option<&str>) -> OwnedPeer {
        let parsed = id.and_then(|id| id.parse::<SpiffeId>().ok());
        OwnedPeer {
            id: id.map(str::to_string),
            namespace: parsed.as_ref().map(|p| p.namespace().to_string()),
            workload: parsed.as_ref().map(|p| p.service_account().to_string()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\": ");
        json::opt_str(out, self.id);
        out.extend_from_slice(b", \"namespace\": ");
        json::opt_str(out, self.namespace);
        out.extend_from_slice(b", \"workload\": ");
        json::opt_str(out, self.workload);
        out.push(b'}');
    }
}

/// A peer as events name it.
#[derive(Clone, Debug)]
struct OwnedPeer {
    id: Option<String>,
    namespace: Option<String>,
    workload: Option<String>,
}

impl OwnedPeer {
    fn borrow(&self) -> Peer<'_> {
        Peer {
            id: self.id.as_deref(),
            namespace: self.namespace.as_deref(),
            workload: self.workload.as_deref(),
        }
    }
}

/// One finished request, as published.
#[derive(Debug)]
struct Event<'a> {
    time_unix: f64,
    direction: &'static str,
    proxy: Peer<'a>,
    source: OwnedPeer,
    destination: OwnedPeer,
    tls: bool,
    method: &'a str,
    authority: String,
    path: String,
    route: &'a str,
    status: u16,
    latency_ms: f64,
    error: Option<String>,
    headers: Headers<'a>,
}

impl Event<'_> {
    /// The event as one JSON line, written by hand in the contract's field order (a generic
    /// serializer costs several times more per event).
    fn to_line(&self) -> Bytes {
        use std::fmt::Write as _;
        let mut out = Vec::with_capacity(1024);
        let mut num = String::new();
        let _ = write!(num, "{:.3}", self.time_unix);
        out.extend_from_slice(b"{\"time_unix\": ");
        out.extend_from_slice(num.as_bytes());
        out.extend_from_slice(b", \"direction\": ");
        json::str(&mut out, self.direction);
        out.extend_from_slice(b", \"proxy\": ");
        self.proxy.write(&mut out);
        out.extend_from_slice(b", \"source\": ");
        self.source.borrow().write(&mut out);
        out.extend_from_slice(b", \"destination\": ");
        self.destination.borrow().write(&mut out);
        out.extend_from_slice(if self.tls {
            b", \"tls\": true, \"method\": "
        } else {
            b", \"tls\": false, \"method\": "
        });
        json::str(&mut out, self.method);
        out.extend_from_slice(b", \"authority\": ");
        json::str(&mut out, &self.authority);
        out.extend_from_slice(b", \"path\": ");
        json::str(&mut out, &self.path);
        out.extend_from_slice(b", \"route\": ");
        json::str(&mut out, self.route);
        num.clear();
        let _ = write!(
            num,
            ", \"status\": {}, \"latency_ms\": {:.3}",
            self.status, self.latency_ms
        );
        out.extend_from_slice(num.as_bytes());
        out.extend_from_slice(b", \"error\": ");
        json::opt_str(&mut out, self.error.as_deref());
        out.extend_from_slice(b", \"headers\": ");
        self.headers.write(&mut out);
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }
}

/// Request headers, written masked: at most [`MAX_HEADERS`] names, values of one name joined
/// with `, `, each cut to [`MAX_HEADER_VALUE`] bytes.
#[derive(Debug)]
struct Headers<'a> {
    headers: &'a HeaderMap,
    masker: &'a Masker,
}

impl Headers<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, name) in self.headers.keys().take(MAX_HEADERS).enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            json::str(out, name.as_str());
            out.extend_from_slice(b": ");
            if self.masker.masks(name) {
                json::str(out, mask::MASKED);
                continue;
            }
            let mut values = self.headers.get_all(name).iter();
            let value = match (values.next(), values.next()) {
                (Some(one), None) => mask::text(one.as_bytes(), MAX_HEADER_VALUE),
                _ => {
                    let mut joined = Vec::new();
                    for (i, v) in self.headers.get_all(name).iter().enumerate() {
                        if i > 0 {
                            joined.extend_from_slice(b", ");
                        }
                        joined.extend_from_slice(v.as_bytes());
                    }
                    mask::text(&joined, MAX_HEADER_VALUE)
                }
            };
            json::str(out, &value);
        }
        out.push(b'}');
    }
}

/// The little JSON the events need: strings, escaped.
mod json {
    /// `s` as a JSON string.
    pub fn str(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        let b = s.as_bytes();
        let mut from = 0;
        for (i, c) in b.iter().enumerate() {
            let escaped: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f | 0x7f => b"",
                _ => continue,
            };
            out.extend_from_slice(&b[from..i]);
            if escaped.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            } else {
                out.extend_from_slice(escaped);
            }
            from = i + 1;
        }
        out.extend_from_slice(&b[from..]);
        out.push(b'"');
    }

    /// `s` as a JSON string, or `null`.
    pub fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => str(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// What a subscriber wants (the query of `GET /tap`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Outbound only, to `<namespace>/<workload or service>`.
    pub to: Option<(String, String)>,
    /// Only paths starting with this (the masked path).
    pub path: Option<String>,
    /// Only this method.
    pub method: Option<Method>,
    /// Events per second at most.
    pub max_rps: u32,
}

/// Why a tap query is refused (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// An unknown parameter.
    #[error("unknown query parameter {0:?}: use direction, to, path, method or max_rps")]
    Unknown(String),
    /// A bad `direction`.
    #[error("direction must be inbound or outbound (got {0:?})")]
    Direction(String),
    /// A bad `to`.
    #[error("to must be <namespace>/<workload or service> (got {0:?})")]
    To(String),
    /// `to` with `direction=inbound`.
    #[error("to applies to outbound requests only: drop direction=inbound or to")]
    ToInbound,
    /// A bad `method`.
    #[error("method must be an HTTP method such as GET (got {0:?})")]
    Method(String),
    /// A bad `path`.
    #[error("path must start with / (got {0:?})")]
    Path(String),
    /// A bad `max_rps`.
    #[error("max_rps must be a whole number from 1 to {MAX_RPS} (got {0:?})")]
    MaxRps(String),
    /// A parameter that is not percent-encoded UTF-8.
    #[error("the query is not valid percent-encoded UTF-8")]
    Encoding,
}

impl Filter {
    /// Parses the query of `GET /tap` (`None`: no query).
    pub fn parse(query: Option<&str>) -> Result<Filter, FilterError> {
        let mut filter = Filter {
            max_rps: DEFAULT_MAX_RPS,
            ..Filter::default()
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or(FilterError::Encoding)?;
            match key {
                "direction" => {
                    filter.direction = Some(match value.as_str() {
                        "inbound" => Direction::Inbound,
                        "outbound" => Direction::Outbound,
                        _ => return Err(FilterError::Direction(value)),
                    })
                }
                "to" => {
                    let (ns, name) = value
                        .split_once('/')
                        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                        .ok_or_else(|| FilterError::To(value.clone()))?;
                    filter.to = Some((ns.to_string(), name.to_string()));
                }
                "path" => {
                    if !value.starts_with('/') {
                        return Err(FilterError::Path(value));
                    }
                    filter.path = Some(value);
                }
                "method" => {
                    let m = Method::from_bytes(value.to_ascii_uppercase().as_bytes())
                        .map_err(|_| FilterError::Method(value.clone()))?;
                    filter.method = Some(m);
                }
                "max_rps" => {
                    let n: u32 = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| FilterError::MaxRps(value.clone()))?;
                    filter.max_rps = n.min(MAX_RPS);
                }
                _ => return Err(FilterError::Unknown(key.to_string())),
            }
        }
        if filter.to.is_some() {
            match filter.direction {
                Some(Direction::Inbound) => return Err(FilterError::ToInbound),
                _ => filter.direction = Some(Direction::Outbound),
            }
        }
        Ok(filter)
    }

    fn matches(&self, e: &Event<'_>) -> bool {
        if self.direction.is_some_and(|d| d.as_str() != e.direction) {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m.as_str() != e.method) {
            return false;
        }
        if self.path.as_ref().is_some_and(|p| !e.path.starts_with(p)) {
            return false;
        }
        if let Some((ns, name)) = &self.to {
            let host = e
                .authority
                .rsplit_once(':')
                .map_or(&*e.authority, |(h, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        &e.authority
                    }
                });
            let same_ns = e.destination.namespace.as_deref() == Some(ns.as_str());
            let by_workload = e.destination.workload.as_deref() == Some(name.as_str());
            let by_host = host == name
                || host
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|rest| rest.starts_with(ns.as_str()));
            if !(by_host || (same_ns && by_workload)) {
                return false;
            }
        }
        true
    }
}

/// Decodes `%XX` and `+` (a space) of a query value; `None` when not UTF-8 or malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One attached tap.
#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    bucket: Mutex<Bucket>,
    tx: mpsc::Sender<Bytes>,
    dropped: AtomicU64,
}

/// A token bucket: `rate` tokens a second, at most `rate` saved.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Option<tokio::time::Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: None,
        }
    }

    fn take(&mut self, now: tokio::time::Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A tap's stream of NDJSON lines: events, and `{"dropped": n}` at most once a second.
/// Detaches from the hub when dropped (the client went away).
#[derive(Debug)]
pub struct TapStream {
    hub: Arc<Hub>,
    sub: Arc<Subscriber>,
    rx: mpsc::Receiver<Bytes>,
    next_dropped: tokio::time::Instant,
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for TapStream {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.sub);
    }
}

impl TapStream {
    /// The next line (pending forever while nothing happens; `None` never, as the hub holds the
    /// sender while subscribed).
    pub fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // the dropped report, when due and there is something to report
        let now = tokio::time::Instant::now();
        if now >= self.next_dropped {
            self.next_dropped = now + DROPPED_EVERY;
            let n = self.sub.dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                return Poll::Ready(Some(Bytes::from(format!("{{\"dropped\": {n}}}\n"))));
            }
        }
        let deadline = self.next_dropped;
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if tick.deadline() != deadline {
            tick.as_mut().reset(deadline);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(line)) => return Poll::Ready(Some(self.gather(line))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        match tick.as_mut().poll(cx) {
            Poll::Ready(()) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl TapStream {
    /// `first` and the lines already queued behind it, up to [`BATCH`] bytes: one chunk (one TLS
    /// record, one write) for a burst of events instead of one each.
    fn gather(&mut self, first: Bytes) -> Bytes {
        let mut batch: Option<bytes::BytesMut> = None;
        while batch.as_ref().map_or(first.len(), |b| b.len()) < BATCH {
            let Ok(next) = self.rx.try_recv() else {
                break;
            };
            batch
                .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                .extend_from_slice(&next);
        }
        batch.map_or(first, bytes::BytesMut::freeze)
    }
}

/// Bytes of queued lines sent in one chunk at most.
const BATCH: usize = 16 * 1024;

impl http_body::Body for TapStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .poll_line(cx)
            .map(|line| line.map(|l| Ok(http_body::Frame::data(l))))
    }
}

#[cfg(test)]
mod tests;
