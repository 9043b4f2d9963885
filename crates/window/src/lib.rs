//! The control plane's metrics window: every proxy's `/metrics`, scraped every *resolution*,
//! turned into a bounded history of golden metrics per workload, edge, route and authorization
//! policy, and the JSON the API serves from it ([`api`]). Pure: no I/O, no clock, no async — the
//! caller scrapes and passes the text with the time it was taken.
//!
//! # How a scrape becomes history
//!
//! [`Window::ingest`] reads the text ([`prom`], checked whole first: a scrape with a bad line
//! changes nothing), keeps only the metrics it uses, and turns each counter into a **delta per
//! target**: the previous raw value of every series of every target is kept (a hash of the series'
//! text and an `f64`, 16 bytes). The first scrape of a target counts from zero when the proxy
//! started after the window did (its `process_start_time_seconds` is not before
//! [`Window::started`]: everything it counted happened while we were watching, so a proxy's first
//! requests are not lost to the scrape interval); otherwise it is only a baseline (like
//! Prometheus' `increase()`: a restarted control plane does not know when those counts
//! happened). A series that appears later counts from zero, and a counter that went down is a
//! restart (the delta is the new value). Deltas are added into **aggregated series**
//! keyed by what the API shows:
//!
//! - workload (`namespace`, `workload`): its inbound `request_total`, `response_total` by
//!   `classification`, `response_latency_seconds` buckets, `tcp_*` and `authz_deny_total`;
//! - edge (caller workload → `dst_namespace`/`dst_workload`): the caller's outbound requests,
//!   responses and latency, plus the destination's inbound `authz_deny_total` and `tcp_*_bytes`
//!   by `client_id`, mapped to the caller workload through the known targets' identities (an
//!   unknown identity makes an edge of its own for denials; its bytes stay in the workload's row).
//!   Bytes come from the callee's side only: its inbound counts every connection from a caller's
//!   proxy, HTTP included, where the caller's proxy counts only opaque streams and upgrades;
//! - route (`dst_namespace`, `route`): outbound requests, responses, latency, `retry_total`, and
//!   by backend (`dst_workload`: a route with one backend is one series);
//! - authorization (`namespace`, `workload`, `policy`, caller id): `authz_allow_total` and
//!   `authz_deny_total`.
//!
//! Each series holds one slot per resolution step over the retention (`src/store.rs`,
//! `src/slot.rs`). Steps are absolute (`unix time / resolution`), so every proxy's scrape of one
//! round lands in the same step if the scraper starts its rounds just after a step boundary (say
//! 1 s past). A scrape timed in a step older than the newest one seen (a slow scrape) is counted
//! in the newest: nothing is lost, it moves by at most a step. `tcp_open_connections` (a gauge) is
//! kept per target as its last value.
//!
//! # Queries
//!
//! A window of `n = window / resolution` steps (at most the retention) ends at the newest step
//! with data (or the one before `now`, if scraping stopped), so a query right after a step
//! boundary does not count an empty step. Rates divide by the seconds really covered
//! (`window_s`): `n` steps, fewer right after start (the first scrape is only a baseline). A
//! target added later counts from its second scrape on (its first window's rates are lower:
//! nothing is extrapolated). Percentiles are Prometheus' `histogram_quantile` over the
//! summed bucket deltas (linear inside the bucket; a rank in the `+Inf` bucket answers 30 s, the
//! highest finite bound).
//!
//! # Memory, bounded by design
//!
//! - series: at most `max_series` (a new key beyond it is refused and counted in [`Ingested`] and
//!   [`Stats`]); a series whose steps all aged out is removed;
//! - per series: a fixed part (≈ 680 B measured: key, index entry, a list of at most 13 chunks of
//!   `retention_steps / 12` steps, the open step's accumulator) and one record per step with
//!   data: ≈ 11 B on average measured (a busy edge ≈ 16 B, a busy workload ≈ 20 B with its TCP
//!   bytes, an authorization caller 3-4 B, an empty step nothing), at most ≈ 240 B;
//! - per target: its strings and a 16 B entry per series of its text (at most
//!   [`MAX_SERIES_PER_TARGET`]), ≈ 4 KB for a proxy; texts over [`MAX_TEXT_BYTES`] are refused;
//! - label strings: interned once, freed with the last series using them.
//!
//! So `heap ≈ series × (680 B + steps × 11 B) + targets × 4 KB` (`steps = retention /
//! resolution`). Measured with 1,000 simulated proxies (each its own workload: 10,000 series) over
//! an hour at 10 s: 48.8 MiB (`README.md`, `bench/window-memory.sh`). [`Window::memory`] gives
//! the estimate at run time.
//!
//! # Not here
//!
//! Scraping, discovering targets, serving HTTP, authentication: the control plane does those.

pub mod api;
mod intern;
pub mod prom;
mod query;
mod slot;
mod store;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use prom::{ParseError, ParseErrorKind};
pub use slot::LATENCY_BOUNDS;

use slot::Field;
use store::{KeyText, Kind, Store};

/// The largest `/metrics` text [`Window::ingest`] accepts; a proxy's is ~50 KB.
pub const MAX_TEXT_BYTES: usize = 4 << 20;
/// Label values longer than this are not kept: the sample is skipped (SPIFFE ids are ≤ 2 KiB by
/// the standard; ours are far shorter).
pub const MAX_LABEL_BYTES: usize = 2048;
/// The most series of one target whose previous value is kept; further ones are skipped.
pub const MAX_SERIES_PER_TARGET: usize = 20_000;

/// How the window is sized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSettings {
    /// One step: how often proxies are scraped (default 10 s, at least 1 s).
    pub resolution: Duration,
    /// How long history is kept: the longest window a query can ask (default 1 h).
    pub retention: Duration,
    /// The most aggregated series kept (default 50,000: five times what 1,000 proxies make;
    /// at ≈ 5.1 KB per busy series over 1 h / 10 s, ≈ 245 MiB when full: `README.md`).
    pub max_series: usize,
}

impl Default for WindowSettings {
    fn default() -> Self {
        WindowSettings {
            resolution: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
            max_series: 50_000,
        }
    }
}

/// Settings the window cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("metrics resolution {0:?} is below 1s: scrape at most once a second")]
    ResolutionTooSmall(Duration),
    #[error(
        "metrics retention {retention:?} is not a whole number (1 to 100000) of resolution steps \
         of {resolution:?}: pick a retention that is a multiple of the resolution"
    )]
    BadRetention {
        retention: Duration,
        resolution: Duration,
    },
}

/// A proxy the control plane scrapes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub namespace: String,
    pub workload: String,
    /// The proxy's SPIFFE id.
    pub identity: String,
    /// Its admin address (`ip:port`): the target's unique key.
    pub instance: String,
}

/// What one scrape contributed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Sample lines in the text.
    pub samples: usize,
    /// Samples with a non-zero delta (added, or refused by the series cap).
    pub used: usize,
    /// The target's first scrape (or first since it was forgotten): kept as baseline only.
    pub baseline: bool,
    /// Additions refused because a new series would exceed `max_series`.
    pub dropped_series: usize,
    /// Samples of used metrics skipped: NaN, infinite or negative counters, unknown latency
    /// bucket bounds, label values over [`MAX_LABEL_BYTES`], series over
    /// [`MAX_SERIES_PER_TARGET`].
    pub skipped: usize,
}

/// Why a scrape was not taken. The target is marked down with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(
        "metrics text of {bytes} bytes is over the {max} bytes the window accepts: \
         is this a onemesh proxy's admin port?"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error("{0} (is this a onemesh proxy's admin port?)")]
    Parse(#[from] ParseError),
    #[error("target {instance} is not in the target list: call set_targets first")]
    UnknownTarget { instance: String },
}

/// Counts for the control plane's own metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub targets: usize,
    pub series: usize,
    pub max_series: usize,
    /// Additions refused by the series cap since start.
    pub dropped_series_total: u64,
    pub interned_strings: usize,
}

/// Estimated heap use (see the crate docs for the bound).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: usize,
    /// Aggregated series: records, chunk lists, index, open step, strings.
    pub series_bytes: usize,
    /// Of which the encoded step records.
    pub records_bytes: usize,
    /// Targets: their strings and previous raw values.
    pub targets_bytes: usize,
    pub series: usize,
    pub bytes_per_series: f64,
}

struct TargetState {
    target: Target,
    /// `(hash of the series' text, last raw value)`, sorted by hash; `None` before the first
    /// scrape.
    prev: Option<Vec<(u64, f64)>>,
    up: bool,
    last_scrape: Option<SystemTime>,
    error: Option<String>,
    open_connections: u64,
}

impl TargetState {
    fn new(target: Target) -> Self {
        TargetState {
            target,
            prev: None,
            up: false,
            last_scrape: None,
            error: None,
            open_connections: 0,
        }
    }
}

/// The metrics window. Not internally synchronized: the control plane holds it behind a lock and
/// keeps each call short (an ingest of a proxy's text is ≈ 0.2 ms: `README.md`).
pub struct Window {
    settings: WindowSettings,
    resolution_ms: u64,
    retention_steps: u64,
    targets: BTreeMap<String, TargetState>,
    /// SPIFFE id → (namespace, workload) of the known targets.
    by_identity: HashMap<String, (String, String)>,
    store: Store,
    /// The first step holding deltas (the one after the first baseline).
    first_data_step: Option<u64>,
    /// When the window started watching: proxies that started since count from zero.
    started: SystemTime,
    hasher: foldhash::fast::RandomState,
    scratch: Vec<(u64, f64)>,
    staged: Vec<Staged>,
}

impl Window {
    pub fn new(settings: WindowSettings) -> Result<Window, SettingsError> {
        let resolution_ms = settings.resolution.as_millis();
        if resolution_ms < 1000 {
            return Err(SettingsError::ResolutionTooSmall(settings.resolution));
        }
        let retention_ms = settings.retention.as_millis();
        let steps = retention_ms / resolution_ms;
        if !retention_ms.is_multiple_of(resolution_ms) || !(1..=100_000).contains(&steps) {
            return Err(SettingsError::BadRetention {
                retention: settings.retention,
                resolution: settings.resolution,
            });
        }
        Ok(Window {
            resolution_ms: resolution_ms as u64,
            retention_steps: steps as u64,
            targets: BTreeMap::new(),
            by_identity: HashMap::new(),
            store: Store::new(settings.max_series, steps as u64),
            first_data_step: None,
            started: SystemTime::now(),
            hasher: foldhash::fast::RandomState::default(),
            scratch: Vec::new(),
            staged: Vec::new(),
            settings,
        })
    }

    pub fn settings(&self) -> &WindowSettings {
        &self.settings
    }

    /// Replaces the target list. A target no longer listed is forgotten (its raw state dropped;
    /// its history stays until it ages out); one whose namespace, workload or identity changed
    /// starts again from a baseline.
    pub fn set_targets(&mut self, targets: &[Target]) {
        let mut old = std::mem::take(&mut self.targets);
        for t in targets {
            let state = match old.remove(&t.instance) {
                Some(s) if s.target == *t => s,
                _ => TargetState::new(t.clone()),
            };
            self.targets.insert(t.instance.clone(), state);
        }
        self.by_identity.clear();
        for s in self.targets.values() {
            let t = &s.target;
            self.by_identity
                .entry(t.identity.clone())
                .or_insert_with(|| (t.namespace.clone(), t.workload.clone()));
        }
    }

    /// Records a failed scrape: the target is down until its next successful one; its raw state
    /// is kept, so that one counts everything since the last success.
    pub fn scrape_failed(&mut self, target: &Target, at: SystemTime, error: String) {
        // Time moves on even when nothing answers: old steps still age out.
        self.store.advance(self.step_of(at));
        if let Some(s) = self.targets.get_mut(&target.instance) {
            s.up = false;
            s.last_scrape = Some(at);
            s.error = Some(error);
        }
    }

    /// When the window started watching (its creation, unless set with [`Window::set_started`]).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Sets when the window started watching (tests on synthetic times).
    pub fn set_started(&mut self, at: SystemTime) {
        self.started = at;
    }

    /// Takes one scrape of `target` (its `/metrics` text, read at `at`).
    pub fn ingest(
        &mut self,
        target: &Target,
        at: SystemTime,
        text: &str,
    ) -> Result<Ingested, IngestError> {
        if !self.targets.contains_key(&target.instance) {
            return Err(IngestError::UnknownTarget {
                instance: target.instance.clone(),
            });
        }
        let mut staged = std::mem::take(&mut self.staged);
        let read = if text.len() > MAX_TEXT_BYTES {
            Err(IngestError::TooLarge {
                bytes: text.len(),
                max: MAX_TEXT_BYTES,
            })
        } else {
            stage(text, &self.hasher, &mut staged).map_err(IngestError::from)
        };
        let (samples, skipped) = match read {
            Ok(counts) => counts,
            Err(e) => {
                self.staged = staged;
                self.scrape_failed(target, at, e.to_string());
                return Err(e);
            }
        };
        let step = self.store.advance(self.step_of(at));
        let Some(state) = self.targets.get_mut(&target.instance) else {
            self.staged = staged;
            return Err(IngestError::UnknownTarget {
                instance: target.instance.clone(),
            });
        };
        state.up = true;
        state.last_scrape = Some(at);
        state.error = None;
        let mut prev = state.prev.take();
        if prev.is_none() && started_since(text, self.started) {
            // A proxy that started while we watched: its counts so far are all new.
            prev = Some(Vec::new());
        }
        let me = state.target.clone();
        let mut next = std::mem::take(&mut self.scratch);
        next.clear();
        let mut out = Ingested {
            samples,
            skipped,
            baseline: prev.is_none(),
            ..Ingested::default()
        };
        let open_connections = self.take(&me, text, &staged, prev.as_deref(), &mut next, &mut out);
        // A huge text (up to MAX_TEXT_BYTES of tiny lines) must not leave a huge buffer behind.
        staged.clear();
        staged.shrink_to(1024);
        self.staged = staged;
        if out.used > 0 && self.first_data_step.is_none() {
            self.first_data_step = Some(step);
        }
        next.sort_unstable_by_key(|e| e.0);
        next.dedup_by_key(|e| e.0);
        if next.capacity() > next.len() + next.len() / 8 + 4 {
            next.shrink_to_fit();
        }
        self.scratch = prev.unwrap_or_default();
        if self.scratch.capacity() > 4096 {
            // (one outsized target's buffer is not kept as everyone's scratch)
            self.scratch = Vec::new();
        }
        if let Some(state) = self.targets.get_mut(&target.instance) {
            state.prev = Some(next);
            state.open_connections = open_connections;
        }
        Ok(out)
    }

    /// Takes the staged samples of a checked text: fills `next` with raw values and adds deltas
    /// against `prev`. Returns the inbound open connections.
    fn take(
        &mut self,
        me: &Target,
        text: &str,
        staged: &[Staged],
        prev: Option<&[(u64, f64)]>,
        next: &mut Vec<(u64, f64)>,
        out: &mut Ingested,
    ) -> u64 {
        let mut open_connections = 0u64;
        // The histogram whose buckets are being read: (its label set's hash, last bucket index,
        // last cumulative delta). Buckets come in increasing `le` order; each one's own count is
        // its cumulative delta minus the previous bucket's, so only the buckets actually hit are
        // added (a handful per histogram rather than every bucket above them).
        let mut histogram = (0u64, 0usize, 0u64);
        for s in staged {
            let inbound = match raw(text, s.labels[0]) {
                "inbound" => true,
                "outbound" => false,
                _ => continue,
            };
            let metric = s.metric;
            if metric == Metric::OpenConnections {
                if inbound {
                    open_connections = open_connections.saturating_add(s.value as u64);
                }
                continue;
            }
            let bucket = match metric {
                Metric::Bucket => match slot::bucket_index(raw(text, s.labels[7])) {
                    Some(b) => b,
                    None => {
                        out.skipped += 1;
                        continue;
                    }
                },
                _ => 0,
            };
            if next.len() >= MAX_SERIES_PER_TARGET {
                out.skipped += 1;
                continue;
            }
            next.push((s.hash, s.value));
            let Some(prev) = prev else { continue };
            let before = prev
                .binary_search_by_key(&s.hash, |e| e.0)
                .map_or(0.0, |i| prev[i].1);
            let delta = if s.value >= before {
                s.value - before
            } else {
                s.value
            };
            let mut delta = delta.round() as u64;
            if metric == Metric::Bucket {
                let cumulative = delta;
                if histogram.0 == s.group && bucket > histogram.1 {
                    delta = cumulative.saturating_sub(histogram.2);
                }
                histogram = (s.group, bucket, cumulative);
            }
            if delta == 0 {
                continue;
            }
            let l = Labels::of(text, s);
            let before_drops = self.store.dropped_total;
            self.add(me, metric, &l, inbound, bucket, delta);
            out.used += 1;
            out.dropped_series += (self.store.dropped_total - before_drops) as usize;
        }
        open_connections
    }

    /// Adds one sample's delta to the series it feeds.
    fn add(
        &mut self,
        me: &Target,
        m: Metric,
        l: &Labels<'_>,
        inbound: bool,
        bucket: usize,
        n: u64,
    ) {
        let tls = match &*l.tls {
            "true" => slot::MTLS,
            "no_identity" => slot::PLAIN,
            _ => 0,
        };
        let field = match m {
            Metric::Requests => Field::Requests,
            Metric::Responses if l.classification == "success" => Field::Success,
            Metric::Responses => Field::Failure,
            Metric::TcpOpen => Field::TcpOpen,
            Metric::TcpClose => Field::TcpClose,
            Metric::TcpRead => Field::TcpRead,
            Metric::TcpWrite => Field::TcpWrite,
            Metric::Deny => Field::Denied,
            Metric::WouldDeny => Field::WouldDeny,
            Metric::Allow => Field::Allowed,
            Metric::Retry if l.reason == "retried" => Field::Retries,
            Metric::Retry => Field::Refused,
            Metric::Bucket | Metric::OpenConnections => Field::Requests,
        };
        let apply = |acc: &mut slot::Acc| {
            if m == Metric::Bucket {
                acc.add_bucket(bucket, n);
            } else {
                acc.add(field, n);
            }
        };
        let with_tls = |acc: &mut slot::Acc| {
            apply(acc);
            acc.flags |= tls;
        };
        let ns = me.namespace.as_str();
        let wl = me.workload.as_str();
        let id = me.identity.as_str();
        if inbound {
            match m {
                Metric::Requests
                | Metric::Responses
                | Metric::Bucket
                | Metric::TcpOpen
                | Metric::TcpClose
                | Metric::TcpRead
                | Metric::TcpWrite
                | Metric::Deny
                | Metric::WouldDeny => {
                    let key = KeyText {
                        kind: Kind::Workload,
                        s: [ns, wl, "", ""],
                        meta: [id, ""],
                    };
                    self.store.add(&key, apply);
                }
                _ => {}
            }
            if matches!(m, Metric::Deny | Metric::WouldDeny | Metric::Allow) {
                let key = KeyText {
                    kind: Kind::Authz,
                    s: [ns, wl, &l.policy, &l.peer_id],
                    meta: ["", ""],
                };
                self.store.add(&key, apply);
            }
            // An edge's denials, and its bytes, come from the callee's side: the caller is known
            // by the identity it proved. The inbound counts every byte of every connection from
            // a caller's proxy (HTTP, opaque TCP and upgrades alike); a caller's proxy counts
            // only its opaque streams and upgrades (an app's HTTP connection carries requests to
            // many destinations), so bytes are taken from this side only, never both.
            let denial = matches!(m, Metric::Deny | Metric::WouldDeny);
            if denial || matches!(m, Metric::TcpRead | Metric::TcpWrite) {
                let caller = self
                    .by_identity
                    .get(&*l.peer_id)
                    .filter(|_| !l.peer_id.is_empty());
                let key = match caller {
                    Some((cns, cwl)) => KeyText {
                        kind: Kind::Edge,
                        s: [cns, cwl, ns, wl],
                        meta: [&l.peer_id, id],
                    },
                    // Bytes from a caller outside the mesh's known proxies: the workload's row
                    // has them.
                    None if !denial => return,
                    None => KeyText {
                        kind: Kind::DeniedEdge,
                        s: [spiffe_namespace(&l.peer_id), &l.peer_id, ns, wl],
                        meta: [&l.peer_id, id],
                    },
                };
                self.store.add(&key, with_tls);
            }
            return;
        }
        // Outbound: an edge's requests, outcomes and latency (its bytes: the callee's side).
        let edge = !l.dst_workload.is_empty()
            && matches!(m, Metric::Requests | Metric::Responses | Metric::Bucket);
        if edge {
            let key = KeyText {
                kind: Kind::Edge,
                s: [ns, wl, &l.dst_namespace, &l.dst_workload],
                meta: [id, &l.peer_id],
            };
            self.store.add(&key, with_tls);
        }
        let route = !l.route.is_empty()
            && matches!(
                m,
                Metric::Requests | Metric::Responses | Metric::Bucket | Metric::Retry
            );
        if route {
            let key = KeyText {
                kind: Kind::Route,
                s: [&l.dst_namespace, &l.route, &l.dst_workload, ""],
                meta: ["", ""],
            };
            self.store.add(&key, apply);
        }
    }

    fn step_of(&self, at: SystemTime) -> u64 {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        ms / self.resolution_ms
    }

    pub fn stats(&self) -> Stats {
        Stats {
            targets: self.targets.len(),
            series: self.store.len(),
            max_series: self.settings.max_series,
            dropped_series_total: self.store.dropped_total,
            interned_strings: self.store.interner.len(),
        }
    }

    /// Estimated heap bytes held (the measured figure is within a few percent: `README.md`).
    pub fn memory(&self) -> Memory {
        let (series_bytes, records_bytes) = self.store.memory();
        let mut targets_bytes =
            self.scratch.capacity() * 16 + self.staged.capacity() * std::mem::size_of::<Staged>();
        for (k, s) in &self.targets {
            let t = &s.target;
            targets_bytes += std::mem::size_of::<TargetState>()
                + 48
                + k.len()
                + t.namespace.len()
                + t.workload.len()
                + t.identity.len()
                + t.instance.len()
                + s.error.as_ref().map_or(0, String::len)
                + s.prev.as_ref().map_or(0, |p| p.capacity() * 16);
        }
        for (id, (ns, wl)) in &self.by_identity {
            targets_bytes += 80 + id.len() + ns.len() + wl.len();
        }
        let series = self.store.len();
        Memory {
            total_bytes: series_bytes + targets_bytes,
            series_bytes,
            records_bytes,
            targets_bytes,
            series,
            bytes_per_series: if series > 0 {
                series_bytes as f64 / series as f64
            } else {
                0.0
            },
        }
    }
}

/// The metrics the window reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Requests,
    Responses,
    Bucket,
    TcpOpen,
    TcpClose,
    TcpRead,
    TcpWrite,
    OpenConnections,
    Deny,
    WouldDeny,
    Allow,
    Retry,
}

impl Metric {
    fn of(name: &str) -> Option<Metric> {
        Some(match name {
            "request_total" => Metric::Requests,
            "response_total" => Metric::Responses,
            "response_latency_seconds_bucket" => Metric::Bucket,
            "tcp_open_total" => Metric::TcpOpen,
            "tcp_close_total" => Metric::TcpClose,
            "tcp_read_bytes_total" => Metric::TcpRead,
            "tcp_write_bytes_total" => Metric::TcpWrite,
            "tcp_open_connections" => Metric::OpenConnections,
            "authz_deny_total" => Metric::Deny,
            "authz_would_deny_total" => Metric::WouldDeny,
            "authz_allow_total" => Metric::Allow,
            "retry_total" => Metric::Retry,
            _ => return None,
        })
    }
}

/// The labels the window reads ([`Labels`], in that order).
const LABELS: usize = 10;

/// A sample of a metric the window reads, from a text that is being checked: where its labels
/// are in the text (`start..end` byte offsets, escapes unresolved), so nothing is taken before the
/// whole text is known good.
#[derive(Clone, Copy, Debug)]
struct Staged {
    metric: Metric,
    value: f64,
    /// Hash of the series' name and label text: its identity within the target.
    hash: u64,
    /// Histogram buckets: hash of the labels but `le` (the histogram the bucket belongs to).
    group: u64,
    labels: [(u32, u32); LABELS],
}

/// Checks the whole text and stages the samples the window reads. Returns `(samples, skipped)`.
fn stage(
    text: &str,
    hasher: &foldhash::fast::RandomState,
    staged: &mut Vec<Staged>,
) -> Result<(usize, usize), ParseError> {
    staged.clear();
    let (mut samples, mut skipped) = (0, 0);
    let base = text.as_ptr() as usize;
    for s in prom::samples(text) {
        let s = s?;
        samples += 1;
        let Some(metric) = Metric::of(s.name) else {
            continue;
        };
        if !s.value.is_finite() || s.value < 0.0 {
            skipped += 1;
            continue;
        }
        let mut labels = [(0u32, 0u32); LABELS];
        let mut too_long = false;
        let body = s.label_text();
        // Where `le="..."` is in the body (histogram buckets: the rest names the histogram).
        let mut le_pair = (0, 0);
        for (key, value) in s.labels() {
            let i = match key {
                "direction" => 0,
                "dst_namespace" => 1,
                "dst_workload" => 2,
                "client_id" | "server_id" => 3,
                "tls" => 4,
                "route" => 5,
                "classification" => 6,
                "le" => 7,
                "policy" => 8,
                "reason" => 9,
                _ => continue,
            };
            let raw = value.raw();
            too_long |= raw.len() > MAX_LABEL_BYTES;
            let start = (raw.as_ptr() as usize - base) as u32;
            labels[i] = (start, start + raw.len() as u32);
            if i == 7 {
                let key_at = key.as_ptr() as usize - body.as_ptr() as usize;
                let value_end = raw.as_ptr() as usize - body.as_ptr() as usize + raw.len() + 1;
                le_pair = (key_at, value_end.min(body.len()));
            }
        }
        if too_long {
            skipped += 1;
            continue;
        }
        // The series' identity: its name and labels. A bucket's is its histogram's (the labels
        // but `le`) and its bound, so each line is hashed once.
        let (hash, group) = if metric == Metric::Bucket {
            let mut h = hasher.build_hasher();
            h.write(body.get(..le_pair.0).unwrap_or("").as_bytes());
            h.write_u8(0xff);
            h.write(body.get(le_pair.1..).unwrap_or("").as_bytes());
            let group = h.finish();
            let mut h = hasher.build_hasher();
            h.write_u64(group);
            h.write(body.get(le_pair.0..le_pair.1).unwrap_or("").as_bytes());
            (h.finish(), group)
        } else {
            let mut h = hasher.build_hasher();
            h.write(s.name.as_bytes());
            h.write_u8(0xff);
            h.write(body.as_bytes());
            (h.finish(), 0)
        };
        staged.push(Staged {
            metric,
            value: s.value,
            hash,
            group,
            labels,
        });
    }
    Ok((samples, skipped))
}

/// A staged label's text as written.
fn raw(text: &str, (start, end): (u32, u32)) -> &str {
    text.get(start as usize..end as usize).unwrap_or("")
}

/// The labels the window uses, unescaped (borrowed unless escaped).
struct Labels<'a> {
    dst_namespace: Cow<'a, str>,
    dst_workload: Cow<'a, str>,
    /// `client_id` (inbound) or `server_id` (outbound).
    peer_id: Cow<'a, str>,
    tls: Cow<'a, str>,
    route: Cow<'a, str>,
    classification: Cow<'a, str>,
    policy: Cow<'a, str>,
    reason: Cow<'a, str>,
}

impl<'a> Labels<'a> {
    fn of(text: &'a str, s: &Staged) -> Labels<'a> {
        let get = |i: usize| prom::RawValue::new(raw(text, s.labels[i])).unescape();
        Labels {
            dst_namespace: get(1),
            dst_workload: get(2),
            peer_id: get(3),
            tls: get(4),
            route: get(5),
            classification: get(6),
            policy: get(8),
            reason: get(9),
        }
    }
}

/// The namespace of a SPIFFE id `spiffe://<td>/ns/<namespace>/sa/<sa>`, or "".
fn spiffe_namespace(id: &str) -> &str {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once("/ns/"))
        .and_then(|(_, rest)| rest.split_once("/sa/"))
        .map_or("", |(ns, _)| ns)
}

/// Whether the text's `process_start_time_seconds` (a proxy's start, unix seconds) is not before
/// `started`. Read only at a target's first scrape.
fn started_since(text: &str, started: SystemTime) -> bool {
    const NAME: &str = "process_start_time_seconds ";
    let at = if text.starts_with(NAME) {
        Some(0)
    } else {
        text.find(&format!("\n{NAME}")).map(|i| i + 1)
    };
    let Some(at) = at else { return false };
    let value = text[at + NAME.len()..]
        .split(|c: char| c.is_ascii_whitespace())
        .next()
        .and_then(|v| v.parse::<f64>().ok());
    let since = started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // A second of slack: the two clocks are read at different moments (and, in Kubernetes, on
    // different nodes).
    value.is_some_and(|v| v.is_finite() && v + 1.0 >= since)
}

#[cfg(test)]
mod tests;
