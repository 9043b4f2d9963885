//! The golden metrics of the mesh over a time window, computed from periodic scrapes of every
//! proxy's `/metrics`: per-workload success rate, requests per second and latency percentiles
//! (`stat`: from the `response_latency_seconds` histogram, shown in milliseconds), and who calls
//! whom (`edges`). Counters are differenced between the newest scrape and the one closest to the
//! window's start, like Prometheus' `increase()`, so a proxy restart (a counter going down) counts
//! from zero instead of going negative.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::prom::Sample;

/// How long scrapes are kept: the longest window a query can ask for.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

struct Scrape {
    at: Instant,
    samples: Vec<Sample>,
}

/// Scrapes of every proxy, keyed by `namespace/workload`.
#[derive(Default)]
pub struct History {
    proxies: HashMap<String, VecDeque<Scrape>>,
}

/// One row of `onemesh stat`: traffic a workload received (its inbound side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatRow {
    pub namespace: String,
    pub workload: String,
    /// Proxies of this workload that answered the last scrape.
    pub meshed: u32,
    pub requests: u64,
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Seconds the numbers really cover (shorter than asked right after start).
    pub window_s: f64,
}

/// One row of `onemesh edges`: calls from one workload to another, seen by the caller's proxy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EdgeRow {
    pub src: String,
    pub dst: String,
    pub src_id: String,
    pub dst_id: String,
    pub tls: bool,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
}

/// The traffic of one route as callers' proxies saw it (their outbound side), by
/// `dst_namespace` and `route` label.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteTraffic {
    pub namespace: String,
    pub route: String,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests sent again (`retry_total{reason="retried"}`).
    pub retries: u64,
    /// Wanted a retry and had none: `budget_exhausted`, `attempts_exhausted`, `body_too_large`,
    /// `not_idempotent`.
    pub retries_refused: u64,
    /// Requests by the workload that answered (`namespace/workload`): a split's real shares.
    pub by_backend: BTreeMap<String, u64>,
}

impl History {
    /// Records a scrape of one proxy (`up == false` scrapes are not recorded: the proxy is gone).
    pub fn record(&mut self, key: &str, at: Instant, samples: Vec<Sample>) {
        let q = self.proxies.entry(key.to_string()).or_default();
        q.push_back(Scrape { at, samples });
        while q
            .front()
            .is_some_and(|s| at.duration_since(s.at) > RETENTION)
        {
            q.pop_front();
        }
    }

    /// The newest scrape and the one closest to `window` before it, per proxy.
    fn pairs(&self, window: Duration) -> Vec<(&str, &Scrape, &Scrape)> {
        let mut out = Vec::new();
        for (key, q) in &self.proxies {
            let Some(newest) = q.back() else { continue };
            let start = newest.at.checked_sub(window).unwrap_or(newest.at);
            let old = q
                .iter()
                .rev()
                .find(|s| s.at <= start)
                .or_else(|| q.front())
                .unwrap_or(newest);
            out.push((key.as_str(), old, newest));
        }
        out.sort_by_key(|(k, _, _)| *k);
        out
    }

    pub fn stat(&self, window: Duration) -> Vec<StatRow> {
        let mut rows = Vec::new();
        for (key, old, new) in self.pairs(window) {
            let (namespace, workload) = key.split_once('/').unwrap_or(("", key));
            let inbound = |s: &Sample| s.label("direction") == "inbound";
            let d = Delta { old, new };
            let requests = d.sum("request_total", inbound);
            let ok = d.sum("response_total", |s| {
                inbound(s) && s.label("classification") == "success"
            });
            let responses = d.sum("response_total", inbound);
            let buckets = d.buckets("response_latency_seconds_bucket", inbound);
            let ms = |q: f64| quantile(&buckets, q).map(|secs| secs * 1e3);
            let secs = new.at.duration_since(old.at).as_secs_f64();
            rows.push(StatRow {
                namespace: namespace.to_string(),
                workload: workload.to_string(),
                meshed: 1,
                requests: requests as u64,
                success_rate: ratio(ok, responses),
                rps: rate(requests, secs),
                p50_ms: ms(0.50),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
                window_s: secs,
            });
        }
        rows
    }

    pub fn edges(&self, window: Duration, ids: &HashMap<String, String>) -> Vec<EdgeRow> {
        #[derive(Default)]
        struct Acc {
            dst_id: String,
            tls: bool,
            requests: f64,
            ok: f64,
            responses: f64,
            secs: f64,
        }
        let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
        for (key, old, new) in self.pairs(window) {
            let d = Delta { old, new };
            let secs = new.at.duration_since(old.at).as_secs_f64();
            for s in &new.samples {
                if s.label("direction") != "outbound" || s.label("dst_workload").is_empty() {
                    continue;
                }
                let dst = format!("{}/{}", s.label("dst_namespace"), s.label("dst_workload"));
                let e = acc.entry((key.to_string(), dst)).or_default();
                e.secs = secs;
                let inc = d.increase(s);
                match s.name.as_str() {
                    "request_total" => e.requests += inc,
                    "response_total" => {
                        e.responses += inc;
                        if s.label("classification") == "success" {
                            e.ok += inc;
                        }
                    }
                    _ => continue,
                }
                if !s.label("server_id").is_empty() {
                    e.dst_id = s.label("server_id").to_string();
                }
                e.tls |= s.label("tls") == "true";
            }
        }
        acc.into_iter()
            .map(|((src, dst), e)| EdgeRow {
                src_id: ids.get(&src).cloned().unwrap_or_default(),
                src,
                dst,
                dst_id: e.dst_id,
                tls: e.tls,
                requests: e.requests as u64,
                rps: rate(e.requests, e.secs),
                success_rate: ratio(e.ok, e.responses),
            })
            .collect()
    }
}

impl History {
    pub fn routes(&self, window: Duration) -> Vec<RouteTraffic> {
        #[derive(Default)]
        struct Acc {
            requests: f64,
            ok: f64,
            responses: f64,
            retries: f64,
            refused: f64,
            secs: f64,
            buckets: BTreeMap<u64, (f64, f64)>,
            by_backend: BTreeMap<String, f64>,
        }
        let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
        for (_, old, new) in self.pairs(window) {
            let d = Delta { old, new };
            let secs = new.at.duration_since(old.at).as_secs_f64();
            for s in &new.samples {
                if s.label("direction") != "outbound" || s.label("route").is_empty() {
                    continue;
                }
                let key = (
                    s.label("dst_namespace").to_string(),
                    s.label("route").to_string(),
                );
                let inc = d.increase(s);
                let e = acc.entry(key).or_default();
                // (proxies are scraped together: their windows agree)
                e.secs = e.secs.max(secs);
                match s.name.as_str() {
                    "request_total" => {
                        e.requests += inc;
                        if !s.label("dst_workload").is_empty() {
                            let backend =
                                format!("{}/{}", s.label("dst_namespace"), s.label("dst_workload"));
                            *e.by_backend.entry(backend).or_default() += inc;
                        }
                    }
                    "response_total" => {
                        e.responses += inc;
                        if s.label("classification") == "success" {
                            e.ok += inc;
                        }
                    }
                    "response_latency_seconds_bucket" => {
                        let Some(le) = le_of(s) else { continue };
                        e.buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += inc;
                    }
                    "retry_total" if s.label("reason") == "retried" => e.retries += inc,
                    "retry_total" => e.refused += inc,
                    _ => {}
                }
            }
        }
        acc.into_iter()
            .map(|((namespace, route), e)| {
                let mut buckets: Vec<(f64, f64)> = e.buckets.into_values().collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let ms = |q: f64| quantile(&buckets, q).map(|secs| secs * 1e3);
                RouteTraffic {
                    namespace,
                    route,
                    requests: e.requests as u64,
                    rps: rate(e.requests, e.secs),
                    success_rate: ratio(e.ok, e.responses),
                    p50_ms: ms(0.50),
                    p99_ms: ms(0.99),
                    retries: e.retries as u64,
                    retries_refused: e.refused as u64,
                    by_backend: e
                        .by_backend
                        .into_iter()
                        .map(|(k, v)| (k, v as u64))
                        .collect(),
                }
            })
            .collect()
    }
}

/// The increase of counters between two scrapes of one proxy.
struct Delta<'a> {
    old: &'a Scrape,
    new: &'a Scrape,
}

impl Delta<'_> {
    fn increase(&self, s: &Sample) -> f64 {
        if std::ptr::eq(self.old, self.new) {
            return s.value;
        }
        let before = self
            .old
            .samples
            .iter()
            .find(|o| o.name == s.name && o.labels == s.labels)
            .map_or(0.0, |o| o.value);
        // A counter that went down was reset (the proxy restarted): count from zero.
        if s.value >= before {
            s.value - before
        } else {
            s.value
        }
    }

    fn sum(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
        self.new
            .samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| self.increase(s))
            .fold(0.0, |a, b| a + b)
    }

    /// Cumulative bucket increases by upper bound, summed over label sets.
    fn buckets(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self
            .new
            .samples
            .iter()
            .filter(|s| s.name == name && keep(s))
        {
            let Some(le) = le_of(s) else { continue };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += self.increase(s);
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// A histogram bucket's upper bound.
fn le_of(s: &Sample) -> Option<f64> {
    match s.label("le") {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 { n / secs } else { 0.0 }
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the rank.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        prev_le = le;
        prev_count = count;
    }
    Some(prev_le)
}

#[cfg(test)]
mod tests;
