//! Fuzzes the metrics window's reading of a proxy's `/metrics` text (`onemesh_window::Window::
//! ingest`): the control plane scrapes every pod that claims to be a proxy, so the text is the
//! peer's. The input is two scrapes of one target, split at the first NUL (a baseline, then the
//! text whose increases are counted). Besides "never panics": a refused text names its line
//! within the text; the series stay under the cap; every number a query answers is finite and
//! in range (rates and counts not negative, success rates in [0, 1], percentiles ordered and
//! within the latency buckets).
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use onemesh_window::{IngestError, LATENCY_BOUNDS, Target, Window, WindowSettings};

const MAX_SERIES: usize = 200;

fn target(ns: &str, wl: &str, n: u8) -> Target {
    Target {
        namespace: ns.into(),
        workload: wl.into(),
        identity: format!("spiffe://cluster.local/ns/{ns}/sa/{wl}"),
        instance: format!("10.0.0.{n}:4191"),
    }
}

fn check_rate(what: &str, v: f64) {
    assert!(v.is_finite() && v >= 0.0, "{what} = {v}");
}

fn check_latency(what: &str, p50: Option<f64>, p95: Option<f64>, p99: Option<f64>) {
    let top = LATENCY_BOUNDS.last().copied().unwrap_or(0.0) * 1000.0;
    for p in [p50, p95, p99].into_iter().flatten() {
        assert!(
            p.is_finite() && (0.0..=top).contains(&p),
            "{what} percentile {p}"
        );
    }
    if let (Some(a), Some(b), Some(c)) = (p50, p95, p99) {
        assert!(
            a <= b && b <= c,
            "{what} percentiles out of order: {a} {b} {c}"
        );
    }
}

fn check_success(what: &str, s: Option<f64>) {
    if let Some(s) = s {
        assert!((0.0..=1.0).contains(&s), "{what} success rate {s}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\0').unwrap_or(("", text));
    let me = target("card", "card", 1);
    let caller = target("pg", "pg", 2);
    let mut w = Window::new(WindowSettings {
        resolution: Duration::from_secs(10),
        retention: Duration::from_secs(60),
        max_series: MAX_SERIES,
    })
    .expect("valid settings");
    w.set_targets(&[me.clone(), caller]);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (at, text) in [(t0, first), (t0 + Duration::from_secs(10), second)] {
        match w.ingest(&me, at, text) {
            Ok(_) => {}
            Err(IngestError::Parse(e)) => {
                let lines = text.split('\n').count();
                assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            }
            Err(IngestError::TooLarge { .. }) => {}
            Err(e @ IngestError::UnknownTarget { .. }) => panic!("{e}"),
        }
    }
    let stats = w.stats();
    assert!(stats.series <= MAX_SERIES, "{} series", stats.series);

    let now: SystemTime = t0 + Duration::from_secs(11);
    let minute = Duration::from_secs(60);
    let o = w.overview(now, minute);
    check_rate("window_s", o.window_s);
    let rows = o.workloads.iter().map(|r| {
        let l = (r.p50_ms, r.p95_ms, r.p99_ms);
        let rates = [r.rps, r.tcp_read_bytes_per_s, r.tcp_write_bytes_per_s];
        ("workload", rates, r.success_rate, l)
    });
    let edges = o.edges.iter().map(|e| {
        let l = (e.p50_ms, e.p95_ms, e.p99_ms);
        let rates = [e.rps, e.tcp_read_bytes_per_s, e.tcp_write_bytes_per_s];
        ("edge", rates, e.success_rate, l)
    });
    for (what, rates, success, (p50, p95, p99)) in rows.chain(edges) {
        for rate in rates {
            check_rate(what, rate);
        }
        check_success(what, success);
        check_latency(what, p50, p95, p99);
    }
    for r in w.routes(now, minute) {
        check_rate("route rps", r.rps);
        check_success("route", r.success_rate);
    }
    let _ = w.authz(now, minute);
    if let Some(s) = w.series("card", "card", now, minute) {
        for v in s.rps.iter().flatten() {
            check_rate("series rps", *v);
        }
    }
    let _ = w.targets();
    let _ = w.memory();
});
