//! The decision log's proxy side: a record of every authorization decision the inbound takes
//! (HTTP requests and opaque connections), shipped in batches to the control plane's
//! `Audit.Append`, which appends them to its hash-chained log.
//!
//! What is recorded ([`Record`] of `audit.proto`):
//!
//! - **allowed** decisions are always aggregated: one record per (caller, port, kind, policy,
//!   mode) per wall-clock minute, with the count and the first and last time (to the
//!   second: counts are collected once a second);
//! - **deny** and **would_deny** decisions are recorded one by one (with the method and path,
//!   masked as tap masks them, [`crate::tap::mask`]) up to `ONEMESH_PROXY_AUDIT_DENY_RATE` per
//!   second (a token bucket, burst twice the rate); beyond it they are aggregated per (caller,
//!   port, kind, decision, policy, mode) per minute, so a flood of forbidden calls cannot fill
//!   the control plane's disk;
//! - memory is bounded: at most [`MAX_QUEUE_RECORDS`] one-by-one records wait (more are
//!   aggregated) and at most [`MAX_KEYS`] aggregate keys per kind of decision are kept; a
//!   decision beyond that is folded into an aggregate whose caller is [`OVERFLOW_CALLER`] (the
//!   count is kept, the caller is not). `audit_decisions_total{outcome}` counts each decision
//!   as `individual`, `aggregated` or `overflow`.
//!
//! Request-path cost: an allowed HTTP request adds one relaxed atomic increment to a counter
//! ([`Slot`]) its connection looked up once (a lock and a hash per connection and policy, not per
//! request). A denial takes a lock, reads the clock and, within the rate, masks and copies its
//! path. Nothing on the request path waits for the control plane.
//!
//! Shipping ([`ship`]): every [`BATCH_INTERVAL`] (sooner when [`MAX_BATCH_RECORDS`] one-by-one
//! records wait) the background task collects what is due (one-by-one records, and the
//! aggregates of minutes that ended) and sends it in batches of at most [`MAX_BATCH_RECORDS`],
//! one in flight; a batch that gets no answer is sent again, the same (instance, batch), with
//! backoff, until the control plane acknowledges it (it appends a batch it already has only
//! once), and nothing more is collected meanwhile. On shutdown the current minute's aggregates are
//! sent too (for at most [`FINAL_FLUSH`]).
//!
//! Not done: records are kept in memory only, so a proxy that is killed (not drained) loses the
//! last second's one-by-one records and the current minute's aggregates.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use onemesh_api::audit::{self as pb, AppendRequest, Record};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, OutcomeLabels};
use crate::policy::{Mode, Verdict};

/// How often records are collected and shipped.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The most records in one batch (the control plane takes up to 4096).
pub const MAX_BATCH_RECORDS: usize = 1000;
/// The most one-by-one records waiting; more denials are aggregated.
pub const MAX_QUEUE_RECORDS: usize = 10_000;
/// The most aggregate keys kept for allowed decisions, and again for denials.
pub const MAX_KEYS: usize = 10_000;
/// The caller of an aggregate of decisions beyond [`MAX_KEYS`].
pub const OVERFLOW_CALLER: &str = "*";
/// Default `ONEMESH_PROXY_AUDIT_DENY_RATE`: denials recorded one by one per second.
pub const DEFAULT_DENY_RATE: u32 = 100;
/// How long a draining proxy tries to ship its last records.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// The longest path kept in a record (after masking), as tap.
pub const MAX_PATH: usize = crate::tap::MAX_PATH;

const MINUTE_MS: i64 = 60_000;

/// HTTP request or opaque connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One HTTP request.
    Http,
    /// One opaque TCP connection.
    Tcp,
}

impl Kind {
    /// `http` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
        }
    }
}

/// What decisions are aggregated by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The verified caller (`None`: unauthenticated; [`OVERFLOW_CALLER`] beyond the cap).
    pub caller: Option<Arc<str>>,
    /// The target port as the inbound saw it.
    pub port: u16,
    /// HTTP or TCP.
    pub kind: Kind,
    /// The decision.
    pub verdict: Verdict,
    /// The deciding policy (or policies in force, joined by `,`).
    pub policy: Arc<str>,
    /// The mode it was taken in.
    pub mode: Mode,
}

impl Key {
    fn overflow(&self) -> Key {
        Key {
            caller: Some(OVERFLOW_CALLER.into()),
            ..self.clone()
        }
    }
}

/// The counter of allowed decisions of one key, held by the connections that use it.
#[derive(Debug)]
pub struct Slot {
    key: Key,
    count: AtomicU64,
    overflow: bool,
}

impl Slot {
    /// Counts one allowed decision (one relaxed atomic add).
    pub fn hit(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The key it counts.
    pub fn key(&self) -> &Key {
        &self.key
    }
}

/// A denial, as the inbound saw it.
#[derive(Clone, Copy, Debug)]
pub struct Denial<'a> {
    /// The verified caller.
    pub caller: Option<&'a Arc<str>>,
    /// The target port.
    pub port: u16,
    /// HTTP method and path (raw; masked here), `None` for an opaque connection.
    pub request: Option<(&'a http::Method, &'a str)>,
    /// `Deny` or `WouldDeny`.
    pub verdict: Verdict,
    /// The policies in force that denied.
    pub policy: &'a Arc<str>,
    /// The mode.
    pub mode: Mode,
}

/// The decisions waiting to be collected; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

struct Shared {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    denials: Mutex<Denials>,
    /// Rings when [`MAX_BATCH_RECORDS`] one-by-one records wait.
    wake: tokio::sync::Notify,
    individual: Counter,
    aggregated: Counter,
    overflow: Counter,
    metrics: Arc<Metrics>,
}

/// An aggregate's count and times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Agg {
    count: u64,
    first_ms: i64,
    last_ms: i64,
}

impl Agg {
    fn add(&mut self, count: u64, first_ms: i64, last_ms: i64) {
        self.count += count;
        self.first_ms = self.first_ms.min(first_ms);
        self.last_ms = self.last_ms.max(last_ms);
    }
}

struct Denials {
    bucket: Bucket,
    queue: Vec<Record>,
    /// By key and minute (unix ms / 60 000).
    aggregates: HashMap<(Key, i64), Agg>,
}

/// A token bucket over wall-clock milliseconds.
struct Bucket {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let burst = f64::from(rate) * 2.0;
        Self {
            per_ms: f64::from(rate) / 1000.0,
            burst,
            tokens: burst,
            last_ms: i64::MIN,
        }
    }

    fn take(&mut self, now_ms: i64) -> bool {
        if self.last_ms != i64::MIN && now_ms > self.last_ms {
            let refill = (now_ms - self.last_ms) as f64 * self.per_ms;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

fn decision(v: Verdict) -> pb::Decision {
    match v {
        Verdict::Allow => pb::Decision::Allow,
        Verdict::Deny => pb::Decision::Deny,
        Verdict::WouldDeny => pb::Decision::WouldDeny,
    }
}

fn mode(m: Mode) -> pb::Mode {
    match m {
        Mode::Enforce => pb::Mode::Enforce,
        Mode::Audit => pb::Mode::Audit,
    }
}

fn aggregate_record(key: &Key, agg: Agg) -> Record {
    Record {
        time_unix_ms: agg.first_ms,
        caller: key.caller.as_deref().unwrap_or("").to_string(),
        port: u32::from(key.port),
        kind: key.kind.as_str().to_string(),
        method: String::new(),
        path: String::new(),
        decision: decision(key.verdict).into(),
        policy: key.policy.to_string(),
        mode: mode(key.mode).into(),
        count: agg.count,
        until_unix_ms: agg.last_ms,
    }
}

impl AuditLog {
    /// An empty log recording up to `deny_rate` denials a second one by one.
    pub fn new(deny_rate: u32, metrics: Arc<Metrics>) -> Self {
        let outcome = |outcome| {
            metrics
                .audit_decisions_total
                .get_or_create_owned(&OutcomeLabels { outcome })
        };
        Self {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::default()),
                denials: Mutex::new(Denials {
                    bucket: Bucket::new(deny_rate),
                    queue: Vec::new(),
                    aggregates: HashMap::default(),
                }),
                wake: tokio::sync::Notify::new(),
                individual: outcome("individual"),
                aggregated: outcome("aggregated"),
                overflow: outcome("overflow"),
                metrics,
            }),
        }
    }

    /// The counter of allowed decisions of `key` (looked up once per connection and policy; the
    /// connection keeps it and calls [`Slot::hit`] per request).
    pub fn slot(&self, key: Key) -> Arc<Slot> {
        let mut slots = self
            .shared
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        let (key, overflow) = if slots.len() >= MAX_KEYS {
            (key.overflow(), true)
        } else {
            (key, false)
        };
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    key,
                    count: AtomicU64::new(0),
                    overflow,
                })
            })
            .clone()
    }

    /// Records a deny or would_deny decision taken at `now_ms`.
    pub fn deny(&self, d: Denial<'_>, now_ms: i64) {
        let mut denials = self
            .shared
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let denials = &mut *denials;
        if denials.queue.len() < MAX_QUEUE_RECORDS && denials.bucket.take(now_ms) {
            let (method, path) = d.request.map_or((String::new(), String::new()), |(m, p)| {
                (
                    m.as_str().to_string(),
                    crate::tap::mask::text(p.as_bytes(), MAX_PATH),
                )
            });
            denials.queue.push(Record {
                time_unix_ms: now_ms,
                caller: d.caller.map_or_else(String::new, |c| c.to_string()),
                port: u32::from(d.port),
                kind: if d.request.is_some() { "http" } else { "tcp" }.to_string(),
                method,
                path,
                decision: decision(d.verdict).into(),
                policy: d.policy.to_string(),
                mode: mode(d.mode).into(),
                count: 1,
                until_unix_ms: now_ms,
            });
            self.shared.individual.inc();
            if denials.queue.len() == MAX_BATCH_RECORDS {
                self.shared.wake.notify_one();
            }
            return;
        }
        let mut key = Key {
            caller: d.caller.cloned(),
            port: d.port,
            kind: if d.request.is_some() {
                Kind::Http
            } else {
                Kind::Tcp
            },
            verdict: d.verdict,
            policy: d.policy.clone(),
            mode: d.mode,
        };
        let at = minute(now_ms);
        if denials.aggregates.len() >= MAX_KEYS
            && !denials.aggregates.contains_key(&(key.clone(), at))
        {
            key = key.overflow();
            self.shared.overflow.inc();
        } else {
            self.shared.aggregated.inc();
        }
        denials
            .aggregates
            .entry((key, at))
            .or_insert(Agg {
                count: 0,
                first_ms: now_ms,
                last_ms: now_ms,
            })
            .add(1, now_ms, now_ms);
    }

    /// A collector of this log's records (one, owned by the shipping task).
    pub fn collector(&self, now_ms: i64) -> Collector {
        Collector {
            log: self.clone(),
            allowed: HashMap::default(),
            last_ms: now_ms,
        }
    }
}

/// Takes what is due out of an [`AuditLog`]: owned by the shipping task, so the aggregates of
/// allowed decisions need no lock.
pub struct Collector {
    log: AuditLog,
    /// Allowed decisions by key and minute.
    allowed: HashMap<(Key, i64), Agg>,
    /// When the counters were last collected.
    last_ms: i64,
}

impl Collector {
    /// The records due at `now_ms`: every one-by-one record, and the aggregates of minutes
    /// before `now_ms`'s (with `everything`, the current minute's too).
    pub fn collect(&mut self, now_ms: i64, everything: bool) -> Vec<Record> {
        let shared = &self.log.shared;
        let (first_ms, last_ms) = (self.last_ms.min(now_ms), now_ms);
        self.last_ms = now_ms;
        {
            let mut slots = shared.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.retain(|key, slot| {
                // Unused once only the map holds it: no one can take it again without the lock,
                // and the fence makes the last holder's increments visible before the swap.
                let unused = Arc::strong_count(slot) == 1;
                fence(Ordering::Acquire);
                let count = slot.count.swap(0, Ordering::Relaxed);
                if count > 0 {
                    if slot.overflow {
                        shared.overflow.inc_by(count);
                    } else {
                        shared.aggregated.inc_by(count);
                    }
                    let agg = self
                        .allowed
                        .entry((key.clone(), minute(first_ms)))
                        .or_insert(Agg {
                            count: 0,
                            first_ms,
                            last_ms,
                        });
                    agg.add(count, first_ms, last_ms);
                }
                !unused
            });
        }
        let current = minute(now_ms);
        let due = |at: i64| everything || at < current;
        let mut records = Vec::new();
        {
            let mut denials = shared
                .denials
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            records.append(&mut denials.queue);
            denials.aggregates.retain(|(key, at), agg| {
                let keep = !due(*at);
                if !keep {
                    records.push(aggregate_record(key, *agg));
                }
                keep
            });
        }
        self.allowed.retain(|(key, at), agg| {
            let keep = !due(*at);
            if !keep {
                records.push(aggregate_record(key, *agg));
            }
            keep
        });
        records
    }

    /// Records not yet collected: one-by-one denials, and aggregates (allowed and denied).
    pub fn waiting(&self) -> usize {
        let denials = self
            .log
            .shared
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        denials.queue.len() + denials.aggregates.len() + self.allowed.len()
    }
}

/// Why a batch was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The control plane answered with an error (or could not be reached).
    #[error("Audit.Append failed: {0}")]
    Status(#[from] tonic::Status),
    /// The batch could not be written locally.
    #[error("cannot write the decision records: {0}")]
    Io(#[from] std::io::Error),
}

/// Where batches go: the control plane's `Audit.Append`, or (static mode) stdout.
pub trait AuditSink: Send + Sync + 'static {
    /// Sends one batch; `Ok` once it is acknowledged.
    fn append(&self, batch: &AppendRequest) -> BoxFuture<'static, Result<(), ShipError>>;
}

/// `Audit.Append` over the control plane's policy channel.
#[derive(Clone, Debug)]
pub struct GrpcSink {
    client: pb::audit_client::AuditClient<tonic::transport::Channel>,
    timeout: Duration,
}

impl GrpcSink {
    /// Sends over `channel`; each call may take `timeout`.
    pub fn new(channel: tonic::transport::Channel, timeout: Duration) -> Self {
        Self {
            client: pb::audit_client::AuditClient::new(channel),
            timeout,
        }
    }
}

impl AuditSink for GrpcSink {
    fn append(&self, batch: &AppendRequest) -> BoxFuture<'static, Result<(), ShipError>> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(batch.clone());
        request.set_timeout(self.timeout);
        Box::pin(async move {
            client.append(request).await?;
            Ok(())
        })
    }
}

/// Static mode: each batch is one JSON line on stdout (there is no control plane to keep it).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutSink;

/// A record as [`StdoutSink`] writes it (borrowed: nothing is copied).
#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    time_unix_ms: i64,
    caller: &'a str,
    port: u32,
    kind: &'a str,
    method: &'a str,
    path: &'a str,
    decision: &'a str,
    policy: &'a str,
    mode: &'a str,
    count: u64,
    until_unix_ms: i64,
}

/// A batch as [`StdoutSink`] writes it.
#[derive(serde::Serialize)]
struct JsonBatch<'a> {
    audit_batch: u64,
    instance: &'a str,
    namespace: &'a str,
    workload: &'a str,
    records: Vec<JsonRecord<'a>>,
}

impl AuditSink for StdoutSink {
    fn append(&self, batch: &AppendRequest) -> BoxFuture<'static, Result<(), ShipError>> {
        let json = JsonBatch {
            audit_batch: batch.batch,
            instance: &batch.instance,
            namespace: &batch.namespace,
            workload: &batch.workload,
            records: batch
                .records
                .iter()
                .map(|r| JsonRecord {
                    time_unix_ms: r.time_unix_ms,
                    caller: &r.caller,
                    port: r.port,
                    kind: &r.kind,
                    method: &r.method,
                    path: &r.path,
                    decision: r.decision().as_str_name(),
                    policy: &r.policy,
                    mode: r.mode().as_str_name(),
                    count: r.count,
                    until_unix_ms: r.until_unix_ms,
                })
                .collect(),
        };
        let line = serde_json::to_vec(&json);
        Box::pin(async move {
            use std::io::Write;
            let mut line = line.map_err(std::io::Error::from)?;
            line.push(b'\n');
            std::io::stdout().lock().write_all(&line)?;
            Ok(())
        })
    }
}

/// Who is shipping: the workload and this process's instance id.
#[derive(Clone, Debug)]
pub struct Shipper {
    /// This workload's namespace.
    pub namespace: String,
    /// This workload's name.
    pub workload: String,
    /// A random id chosen at start.
    pub instance: String,
}

/// A random instance id (16 hex digits), or `None` when the system's generator fails.
pub fn instance_id() -> Option<String> {
    let bytes: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .ok()?
        .expose();
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The shipping task: collects and ships until `drain` is signalled, then ships what is left
/// for at most [`FINAL_FLUSH`].
pub async fn ship(
    mut collector: Collector,
    sink: Arc<dyn AuditSink>,
    who: Shipper,
    drain: crate::drain::Drain,
) {
    let shared = collector.log.shared.clone();
    let metrics = shared.metrics.clone();
    let mut batch = 0u64;
    let mut warnings = 0u64;
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(BATCH_INTERVAL) => false,
            _ = shared.wake.notified() => false,
            _ = drain.signaled() => true,
        };
        let records = collector.collect(unix_ms(), last);
        metrics.audit_queue_records.set(gauge(records.len()));
        let mut left = records.len();
        let mut rest = records;
        while !rest.is_empty() {
            // The first MAX_BATCH_RECORDS, moved (not copied) into the batch.
            let tail = rest.split_off(rest.len().min(MAX_BATCH_RECORDS));
            let chunk = std::mem::replace(&mut rest, tail);
            let n = chunk.len();
            batch += 1;
            let request = AppendRequest {
                namespace: who.namespace.clone(),
                workload: who.workload.clone(),
                instance: who.instance.clone(),
                batch,
                records: chunk,
            };
            // Until the proxy drains, a batch is sent until acknowledged; once it drains (even
            // in the middle of retrying), for at most FINAL_FLUSH more.
            let sent = if last {
                false
            } else {
                tokio::select! {
                    () = send(&*sink, &request, &metrics, &mut warnings) => true,
                    () = drain.signaled() => false,
                }
            };
            let sent = sent
                || tokio::time::timeout(
                    FINAL_FLUSH,
                    send(&*sink, &request, &metrics, &mut warnings),
                )
                .await
                .is_ok();
            if !sent {
                tracing::warn!(
                    records = left,
                    "the proxy is stopping and the control plane did not take its last decision \
                     records within {FINAL_FLUSH:?}; they are lost"
                );
                return;
            }
            left -= n;
            metrics.audit_shipped_records_total.inc_by(n as u64);
            metrics.audit_queue_records.set(gauge(left));
        }
        metrics.audit_queue_records.set(gauge(collector.waiting()));
        if last {
            return;
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sends `request` until it is acknowledged, with backoff; each failure is counted, and logged
/// (every failure up to the 3rd, then every 100th). A batch the control plane refuses as
/// malformed (`INVALID_ARGUMENT`) would be refused forever and hold back every later batch: it is
/// dropped, counted in `audit_rejected_records_total`, and logged as an error.
async fn send(
    sink: &dyn AuditSink,
    request: &AppendRequest,
    metrics: &Metrics,
    warnings: &mut u64,
) {
    let mut backoff = crate::control::Backoff::new();
    loop {
        match sink.append(request).await {
            Ok(()) => return,
            Err(ShipError::Status(status)) if status.code() == tonic::Code::InvalidArgument => {
                metrics
                    .audit_rejected_records_total
                    .inc_by(request.records.len() as u64);
                tracing::error!(
                    batch = request.batch,
                    records = request.records.len(),
                    "the control plane refused a batch of decision records as malformed: {}; \
                     they are dropped (audit_rejected_records_total); report this as a bug with \
                     the proxy and control plane versions",
                    status.message()
                );
                return;
            }
            Err(error) => {
                metrics.audit_ship_failures_total.inc();
                *warnings += 1;
                if *warnings <= 3 || (*warnings).is_multiple_of(100) {
                    tracing::warn!(
                        %error,
                        batch = request.batch,
                        failures = *warnings,
                        "decision records not shipped yet; sending the same batch again \
                         (audit_ship_failures_total counts the failures)"
                    );
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
