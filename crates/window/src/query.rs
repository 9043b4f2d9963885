//! The window's answers, in the API's shapes ([`crate::api`]).
//!
//! A query covers the `n = window / resolution` steps (at least 1, at most the retention) ending
//! at the *anchor*: the newest step with data, unless scraping stopped, then the step before
//! `now` (so stale numbers age out). Steps before the first data step are not counted in
//! `window_s`. Sums run over the records of those steps and the open step.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Window;
use crate::api::{
    AuthzCaller, AuthzStats, EdgeStats, Overview, RouteStats, Series, TargetCounts, TargetStatus,
    TlsState, WorkloadStats,
};
use crate::slot::{Field, MTLS, PLAIN, Totals};
use crate::store::Kind;

/// The steps a query covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// First step of the window (possibly before any data).
    pub(crate) first: u64,
    /// First step counted (`first`, or the first data step if later).
    pub(crate) from: u64,
    /// Last step (the anchor), inclusive.
    pub(crate) to: u64,
}

impl Span {
    fn steps(&self) -> u64 {
        (self.to + 1).saturating_sub(self.from)
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn ms(t: &Totals, q: f64) -> Option<f64> {
    t.quantile(q).map(|s| s * 1e3)
}

fn success_rate(t: &Totals) -> Option<f64> {
    let ok = t.get(Field::Success);
    ratio(ok, ok.saturating_add(t.get(Field::Failure)))
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Window {
    pub(crate) fn span(&self, now: SystemTime, window: Duration) -> Span {
        let now_step = self.step_of(now);
        let n = (window.as_millis() as u64)
            .div_ceil(self.resolution_ms)
            .clamp(1, self.retention_steps);
        let to = match self.store.open_step {
            Some(open) => open.clamp(now_step.saturating_sub(1), now_step),
            None => now_step,
        };
        let first = (to + 1).saturating_sub(n);
        let from = match self.first_data_step {
            Some(f) => first.max(f),
            None => to + 1,
        };
        Span { first, from, to }
    }

    fn resolution_s(&self) -> f64 {
        self.resolution_ms as f64 / 1e3
    }

    /// Seconds a span really covers.
    fn covered_s(&self, span: Span) -> f64 {
        span.steps() as f64 * self.resolution_s()
    }

    /// `GET /api/v1/overview`: every workload (known now, or with traffic in the window) and
    /// every edge with traffic or denials in the window.
    pub fn overview(&self, now: SystemTime, window: Duration) -> Overview {
        let span = self.span(now, window);
        let secs = self.covered_s(span);
        let mut counts = TargetCounts::default();
        let mut workloads: BTreeMap<(String, String), WorkloadStats> = BTreeMap::new();
        for s in self.targets.values() {
            let t = &s.target;
            counts.known += 1;
            counts.up += u32::from(s.up);
            let row = workloads
                .entry((t.namespace.clone(), t.workload.clone()))
                .or_insert_with(|| workload_row(&t.namespace, &t.workload, None));
            row.identity.get_or_insert_with(|| t.identity.clone());
            row.instances += 1;
            if s.up {
                row.meshed += 1;
                row.tcp_open_connections =
                    row.tcp_open_connections.saturating_add(s.open_connections);
            }
        }
        let mut edges = Vec::new();
        for series in self.store.iter() {
            let k = series.key.s.map(|s| self.store.text(s));
            match series.key.kind {
                Kind::Workload => {
                    let t = self.store.totals(series, span.from, span.to);
                    let known = workloads.contains_key(&(k[0].to_string(), k[1].to_string()));
                    if t.is_empty() && !known {
                        continue;
                    }
                    let row = workloads
                        .entry((k[0].to_string(), k[1].to_string()))
                        .or_insert_with(|| {
                            workload_row(k[0], k[1], opt(self.store.text(series.meta[0])))
                        });
                    fill_workload(row, &t, secs);
                }
                Kind::Edge | Kind::DeniedEdge => {
                    let t = self.store.totals(series, span.from, span.to);
                    if t.is_empty() {
                        continue;
                    }
                    let denied_only = series.key.kind == Kind::DeniedEdge;
                    edges.push(EdgeStats {
                        src_namespace: opt(k[0]),
                        src_workload: if denied_only { None } else { opt(k[1]) },
                        dst_namespace: k[2].to_string(),
                        dst_workload: k[3].to_string(),
                        src_id: opt(self.store.text(series.meta[0])),
                        dst_id: opt(self.store.text(series.meta[1])),
                        tls: match (t.flags & MTLS != 0, t.flags & PLAIN != 0) {
                            (true, false) => TlsState::Mtls,
                            (true, true) => TlsState::Mixed,
                            _ => TlsState::Plaintext,
                        },
                        requests: t.get(Field::Requests),
                        rps: per_s(t.get(Field::Requests), secs),
                        success_rate: success_rate(&t),
                        p50_ms: ms(&t, 0.50),
                        p95_ms: ms(&t, 0.95),
                        p99_ms: ms(&t, 0.99),
                        denied: t.get(Field::Denied),
                        would_deny: t.get(Field::WouldDeny),
                        tcp_read_bytes_per_s: per_s(t.get(Field::TcpRead), secs),
                        tcp_write_bytes_per_s: per_s(t.get(Field::TcpWrite), secs),
                    });
                }
                _ => {}
            }
        }
        edges.sort_by(|a, b| {
            (
                &a.src_namespace,
                &a.src_workload,
                &a.dst_namespace,
                &a.dst_workload,
                &a.src_id,
            )
                .cmp(&(
                    &b.src_namespace,
                    &b.src_workload,
                    &b.dst_namespace,
                    &b.dst_workload,
                    &b.src_id,
                ))
        });
        Overview {
            now_unix: unix(now),
            window_s: secs,
            resolution_s: self.resolution_s(),
            retention_s: self.retention_steps as f64 * self.resolution_s(),
            targets: counts,
            workloads: workloads.into_values().collect(),
            edges,
        }
    }

    /// `GET /api/v1/workloads/{namespace}/{workload}/series`: one point per step of the window.
    /// `None` when the workload is neither a known target nor in the history (an API 404).
    pub fn series(
        &self,
        namespace: &str,
        workload: &str,
        now: SystemTime,
        window: Duration,
    ) -> Option<Series> {
        let found = self
            .store
            .find(Kind::Workload, [namespace, workload, "", ""]);
        let known = self
            .targets
            .values()
            .any(|s| s.target.namespace == namespace && s.target.workload == workload);
        if found.is_none() && !known {
            return None;
        }
        let span = self.span(now, window);
        let len = (span.to + 1 - span.first) as usize;
        let mut sums = vec![Totals::default(); len];
        if let Some(series) = found {
            self.store
                .add_steps(series, span.from, span.to, &mut sums, |step| {
                    Some((step - span.first) as usize)
                });
        }
        // Steps before the first data are unknown, not zero.
        let steps: Vec<Option<Totals>> = sums
            .into_iter()
            .enumerate()
            .map(|(i, t)| (span.first + i as u64 >= span.from).then_some(t))
            .collect();
        let res = self.resolution_s();
        let mut out = Series {
            step_s: res,
            t: Vec::with_capacity(len),
            rps: Vec::with_capacity(len),
            success_rate: Vec::with_capacity(len),
            p50_ms: Vec::with_capacity(len),
            p95_ms: Vec::with_capacity(len),
            p99_ms: Vec::with_capacity(len),
            denied_per_s: Vec::with_capacity(len),
            tcp_read_bytes_per_s: Vec::with_capacity(len),
            tcp_write_bytes_per_s: Vec::with_capacity(len),
        };
        for (i, slot) in steps.iter().enumerate() {
            out.t
                .push((span.first + i as u64) as f64 * self.resolution_ms as f64 / 1e3);
            let rate = |f: Field| slot.as_ref().map(|t| per_s(t.get(f), res));
            out.rps.push(rate(Field::Requests));
            out.success_rate.push(slot.as_ref().and_then(success_rate));
            out.p50_ms.push(slot.as_ref().and_then(|t| ms(t, 0.50)));
            out.p95_ms.push(slot.as_ref().and_then(|t| ms(t, 0.95)));
            out.p99_ms.push(slot.as_ref().and_then(|t| ms(t, 0.99)));
            out.denied_per_s.push(rate(Field::Denied));
            out.tcp_read_bytes_per_s.push(rate(Field::TcpRead));
            out.tcp_write_bytes_per_s.push(rate(Field::TcpWrite));
        }
        Some(out)
    }

    /// `GET /api/v1/routes`: routes with traffic in the window, by destination namespace and
    /// route name.
    pub fn routes(&self, now: SystemTime, window: Duration) -> Vec<RouteStats> {
        let span = self.span(now, window);
        let secs = self.covered_s(span);
        let mut routes: BTreeMap<(String, String), (Totals, BTreeMap<String, u64>)> =
            BTreeMap::new();
        for series in self.store.iter() {
            if series.key.kind != Kind::Route {
                continue;
            }
            let t = self.store.totals(series, span.from, span.to);
            if t.is_empty() {
                continue;
            }
            let k = series.key.s.map(|s| self.store.text(s));
            let entry = routes
                .entry((k[0].to_string(), k[1].to_string()))
                .or_default();
            entry.0.merge(&t);
            if !k[2].is_empty() && t.get(Field::Requests) > 0 {
                let n = entry.1.entry(format!("{}/{}", k[0], k[2])).or_default();
                *n = n.saturating_add(t.get(Field::Requests));
            }
        }
        routes
            .into_iter()
            .map(|((namespace, route), (t, by_backend))| RouteStats {
                namespace,
                route,
                requests: t.get(Field::Requests),
                rps: per_s(t.get(Field::Requests), secs),
                success_rate: success_rate(&t),
                p50_ms: ms(&t, 0.50),
                p99_ms: ms(&t, 0.99),
                retries: t.get(Field::Retries),
                retries_refused: t.get(Field::Refused),
                by_backend,
            })
            .collect()
    }

    /// `GET /api/v1/authz`: per workload and policy, the decisions in the window by caller.
    pub fn authz(&self, now: SystemTime, window: Duration) -> Vec<AuthzStats> {
        let span = self.span(now, window);
        let mut rows: BTreeMap<(String, String, String), AuthzStats> = BTreeMap::new();
        for series in self.store.iter() {
            if series.key.kind != Kind::Authz {
                continue;
            }
            let t = self.store.totals(series, span.from, span.to);
            let (allowed, denied) = (t.get(Field::Allowed), t.get(Field::Denied));
            let would_deny = t.get(Field::WouldDeny);
            if allowed == 0 && denied == 0 && would_deny == 0 {
                continue;
            }
            let k = series.key.s.map(|s| self.store.text(s));
            let row = rows
                .entry((k[0].to_string(), k[1].to_string(), k[2].to_string()))
                .or_insert_with(|| AuthzStats {
                    namespace: k[0].to_string(),
                    workload: k[1].to_string(),
                    policy: k[2].to_string(),
                    allowed: 0,
                    denied: 0,
                    would_deny: 0,
                    callers: Vec::new(),
                });
            // Sums of what proxies report: a hostile one's huge counters saturate, never wrap.
            row.allowed = row.allowed.saturating_add(allowed);
            row.denied = row.denied.saturating_add(denied);
            row.would_deny = row.would_deny.saturating_add(would_deny);
            row.callers.push(AuthzCaller {
                id: opt(k[3]),
                allowed,
                denied,
                would_deny,
            });
        }
        let mut out: Vec<AuthzStats> = rows.into_values().collect();
        for row in &mut out {
            row.callers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        out
    }

    /// `GET /api/v1/targets`, by namespace, workload and instance.
    pub fn targets(&self) -> Vec<TargetStatus> {
        let mut out: Vec<TargetStatus> = self
            .targets
            .values()
            .map(|s| TargetStatus {
                namespace: s.target.namespace.clone(),
                workload: s.target.workload.clone(),
                instance: s.target.instance.clone(),
                identity: s.target.identity.clone(),
                up: s.up,
                last_scrape_unix: s.last_scrape.map(unix),
                error: s.error.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.namespace, &a.workload, &a.instance).cmp(&(&b.namespace, &b.workload, &b.instance))
        });
        out
    }
}

fn workload_row(namespace: &str, workload: &str, identity: Option<String>) -> WorkloadStats {
    WorkloadStats {
        namespace: namespace.to_string(),
        workload: workload.to_string(),
        identity,
        instances: 0,
        meshed: 0,
        requests: 0,
        rps: 0.0,
        success_rate: None,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        denied: 0,
        would_deny: 0,
        tcp_open_connections: 0,
        tcp_read_bytes_per_s: 0.0,
        tcp_write_bytes_per_s: 0.0,
    }
}

fn fill_workload(row: &mut WorkloadStats, t: &Totals, secs: f64) {
    row.requests = t.get(Field::Requests);
    row.rps = per_s(row.requests, secs);
    row.success_rate = success_rate(t);
    row.p50_ms = ms(t, 0.50);
    row.p95_ms = ms(t, 0.95);
    row.p99_ms = ms(t, 0.99);
    row.denied = t.get(Field::Denied);
    row.would_deny = t.get(Field::WouldDeny);
    row.tcp_read_bytes_per_s = per_s(t.get(Field::TcpRead), secs);
    row.tcp_write_bytes_per_s = per_s(t.get(Field::TcpWrite), secs);
}
