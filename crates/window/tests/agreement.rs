//! The window's answers agree with the proxies' own `/metrics`: 30 simulated proxies scraped for
//! 12 rounds; every count the API shows (workloads' inbound requests and successes, edges'
//! requests and bytes, routes' requests by backend and retries, authorization decisions) equals the
//! increase of the matching counters between the first and the last text, and a workload's
//! percentiles equal `histogram_quantile` computed by hand from those texts.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use onemesh_window::{LATENCY_BOUNDS, Window, WindowSettings, prom};

/// Sum over every proxy of `last - first` of the samples `keep` selects, grouped by `key`.
fn increase(
    first: &[String],
    last: &[String],
    keep: impl Fn(&prom::Sample<'_>) -> Option<String>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (a, b) in first.iter().zip(last) {
        let before: BTreeMap<(String, String), f64> = prom::parse(a)
            .unwrap()
            .iter()
            .map(|s| ((s.name.to_string(), s.label_text().to_string()), s.value))
            .collect();
        for s in prom::parse(b).unwrap() {
            let Some(key) = keep(&s) else { continue };
            let old = before
                .get(&(s.name.to_string(), s.label_text().to_string()))
                .copied()
                .unwrap_or(0.0);
            *out.entry(key).or_default() += s.value - old;
        }
    }
    out
}

/// `caller-namespace/caller->namespace/workload`, as the tests key the proxies' counters.
fn edge_key(e: &onemesh_window::api::EdgeStats) -> String {
    format!(
        "{}/{}->{}/{}",
        e.src_namespace.as_deref().unwrap_or(""),
        e.src_workload.as_deref().unwrap_or(""),
        e.dst_namespace,
        e.dst_workload
    )
}

fn label(s: &prom::Sample<'_>, key: &str) -> String {
    s.label(key).unwrap_or_default().into_owned()
}

#[test]
fn api_counts_and_percentiles_equal_the_proxies_counters() {
    let proxies = 30;
    let mut sim = sim::Sim::new(proxies);
    let mut w = Window::new(WindowSettings {
        resolution: Duration::from_secs(10),
        retention: Duration::from_secs(600),
        max_series: 10_000,
    })
    .unwrap();
    w.set_targets(&sim.targets);
    let mut texts = vec![String::new(); proxies];
    let mut first = Vec::new();
    for round in 0..12 {
        sim.advance();
        for (i, text) in texts.iter_mut().enumerate() {
            sim.text(i, text);
            w.ingest(&sim.targets[i], sim.time(i), text).unwrap();
        }
        if round == 0 {
            first = texts.clone();
        }
    }
    let now = sim.time(proxies) + Duration::from_secs(1);
    let window = Duration::from_secs(600);
    let o = w.overview(now, window);
    assert_eq!(o.window_s, 110.0, "11 rounds of deltas after the baseline");
    assert_eq!((o.targets.known, o.targets.up), (30, 30));

    let direction = |s: &prom::Sample<'_>, d: &str| label(s, "direction") == d;
    // Workloads: inbound requests and successes.
    let inbound = increase(&first, &texts, |s| {
        (s.name == "request_total" && direction(s, "inbound"))
            .then(|| format!("{}/{}", label(s, "namespace"), label(s, "workload")))
    });
    let ok = increase(&first, &texts, |s| {
        (s.name == "response_total"
            && direction(s, "inbound")
            && label(s, "classification") == "success")
            .then(|| format!("{}/{}", label(s, "namespace"), label(s, "workload")))
    });
    for row in &o.workloads {
        let key = format!("{}/{}", row.namespace, row.workload);
        let want = inbound.get(&key).copied().unwrap_or(0.0);
        assert_eq!(row.requests as f64, want, "{key}");
        assert!((row.rps - want / 110.0).abs() < 1e-9, "{key}");
        if want > 0.0 {
            let rate = ok[&key] / want;
            assert!((row.success_rate.unwrap() - rate).abs() < 1e-9, "{key}");
        }
    }
    // Edges: the callers' outbound requests.
    let outbound = increase(&first, &texts, |s| {
        (s.name == "request_total" && direction(s, "outbound")).then(|| {
            format!(
                "{}/{}->{}/{}",
                label(s, "namespace"),
                label(s, "workload"),
                label(s, "dst_namespace"),
                label(s, "dst_workload")
            )
        })
    });
    let mut edges = BTreeMap::new();
    for e in &o.edges {
        let key = edge_key(e);
        if e.requests > 0 {
            edges.insert(key, e.requests as f64);
        }
    }
    let outbound: BTreeMap<_, _> = outbound.into_iter().filter(|(_, v)| *v > 0.0).collect();
    assert!(edges.len() > 50, "{edges:?}");
    assert_eq!(edges, outbound);
    // Edges' bytes: the callees' inbound, by the caller's identity.
    let caller_of: BTreeMap<&str, String> = sim
        .targets
        .iter()
        .map(|t| {
            (
                t.identity.as_str(),
                format!("{}/{}", t.namespace, t.workload),
            )
        })
        .collect();
    for (metric, field) in [
        ("tcp_read_bytes_total", "read"),
        ("tcp_write_bytes_total", "write"),
    ] {
        let want = increase(&first, &texts, |s| {
            (s.name == metric && direction(s, "inbound")).then(|| {
                format!(
                    "{}->{}/{}",
                    caller_of[label(s, "client_id").as_str()],
                    label(s, "namespace"),
                    label(s, "workload")
                )
            })
        });
        let want: BTreeMap<_, _> = want.into_iter().filter(|(_, v)| *v > 0.0).collect();
        let got: BTreeMap<String, f64> = o
            .edges
            .iter()
            .filter_map(|e| {
                let per_s = match field {
                    "read" => e.tcp_read_bytes_per_s,
                    _ => e.tcp_write_bytes_per_s,
                };
                let key = edge_key(e);
                (per_s > 0.0).then(|| (key, (per_s * o.window_s).round()))
            })
            .collect();
        assert!(got.len() > 50, "{field}: {got:?}");
        assert_eq!(got, want, "edges' bytes {field}");
    }
    // Denials, seen from both sides.
    let denied = increase(&first, &texts, |s| {
        (s.name == "authz_deny_total").then(|| "all".to_string())
    });
    let edge_denied: u64 = o.edges.iter().map(|e| e.denied).sum();
    let workload_denied: u64 = o.workloads.iter().map(|r| r.denied).sum();
    assert_eq!(
        edge_denied as f64,
        denied.get("all").copied().unwrap_or(0.0)
    );
    assert_eq!(workload_denied, edge_denied);
    assert!(edge_denied > 0);

    // Routes: requests by backend, retries.
    let routes = w.routes(now, window);
    let by_backend = increase(&first, &texts, |s| {
        (s.name == "request_total" && direction(s, "outbound")).then(|| {
            format!(
                "{} {} {}/{}",
                label(s, "dst_namespace"),
                label(s, "route"),
                label(s, "dst_namespace"),
                label(s, "dst_workload")
            )
        })
    });
    let retries = increase(&first, &texts, |s| {
        (s.name == "retry_total")
            .then(|| format!("{} {}", label(s, "dst_namespace"), label(s, "route")))
    });
    let mut seen = BTreeMap::new();
    for r in &routes {
        for (backend, n) in &r.by_backend {
            seen.insert(format!("{} {} {backend}", r.namespace, r.route), *n as f64);
        }
        let want = retries
            .get(&format!("{} {}", r.namespace, r.route))
            .copied()
            .unwrap_or(0.0);
        assert_eq!(r.retries as f64, want, "{} {}", r.namespace, r.route);
        assert_eq!(r.requests, r.by_backend.values().sum::<u64>());
    }
    let by_backend: BTreeMap<_, _> = by_backend.into_iter().filter(|(_, v)| *v > 0.0).collect();
    assert!(seen.len() > 20, "{seen:?}");
    assert_eq!(seen, by_backend);

    // Authorization: allowed per policy.
    let allowed = increase(&first, &texts, |s| {
        (s.name == "authz_allow_total")
            .then(|| format!("{}/{}", label(s, "namespace"), label(s, "workload")))
    });
    for a in w.authz(now, window) {
        let key = format!("{}/{}", a.namespace, a.workload);
        assert_eq!(
            a.allowed as f64,
            allowed.get(&key).copied().unwrap_or(0.0),
            "{key}"
        );
        assert_eq!(a.allowed, a.callers.iter().map(|c| c.allowed).sum::<u64>());
    }

    // Percentiles of one workload, by hand from its texts' cumulative buckets.
    let row = o.workloads.iter().find(|r| r.requests > 0).unwrap();
    let key = format!("{}/{}", row.namespace, row.workload);
    let buckets = increase(&first, &texts, |s| {
        let mine = format!("{}/{}", label(s, "namespace"), label(s, "workload")) == key;
        (s.name == "response_latency_seconds_bucket" && direction(s, "inbound") && mine)
            .then(|| label(s, "le"))
    });
    let mut cumulative: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(le, n)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *n,
            )
        })
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| {
        let total = cumulative.last().unwrap().1;
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cum) in &cumulative {
            if cum >= rank && cum > below {
                if le.is_infinite() {
                    return LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1e3;
                }
                return (lower + (le - lower) * (rank - below) / (cum - below)) * 1e3;
            }
            lower = le;
            below = cum;
        }
        unreachable!()
    };
    for (got, q) in [(row.p50_ms, 0.5), (row.p95_ms, 0.95), (row.p99_ms, 0.99)] {
        let want = quantile(q);
        assert!(
            (got.unwrap() - want).abs() < 1e-9,
            "p{q}: {got:?} vs {want}"
        );
    }
}
