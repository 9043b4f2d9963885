//! Rates, success rates, percentiles and edges from two scrapes with known counters.

use super::*;
use crate::prom::parse;

fn scrape(text: &str) -> Vec<Sample> {
    parse(text).unwrap()
}

#[test]
fn stat_differences_counters_over_the_window() {
    let t0 = Instant::now();
    let mut h = History::default();
    h.record(
        "bank/bank",
        t0,
        scrape(
            "request_total{direction=\"inbound\"} 100\n\
             response_total{direction=\"inbound\",classification=\"success\"} 100\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"0.001\"} 100\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"0.01\"} 100\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"+Inf\"} 100\n",
        ),
    );
    h.record(
        "bank/bank",
        t0 + Duration::from_secs(10),
        scrape(
            "request_total{direction=\"inbound\"} 200\n\
             response_total{direction=\"inbound\",classification=\"success\"} 190\n\
             response_total{direction=\"inbound\",classification=\"failure\"} 10\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"0.001\"} 150\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"0.01\"} 200\n\
             response_latency_seconds_bucket{direction=\"inbound\",le=\"+Inf\"} 200\n",
        ),
    );
    let rows = h.stat(Duration::from_secs(60));
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.requests, 100);
    assert!((r.rps - 10.0).abs() < 1e-9);
    assert!((r.success_rate.unwrap() - 0.9).abs() < 1e-9);
    // 50 of 100 new requests were ≤ 1 ms, the other 50 in (1, 10]: p50 = 1 ms, p99 ≈ 9.82 ms.
    assert!((r.p50_ms.unwrap() - 1.0).abs() < 1e-9);
    assert!((r.p99_ms.unwrap() - 9.82).abs() < 1e-9);
}

#[test]
fn a_counter_reset_counts_from_zero() {
    let t0 = Instant::now();
    let mut h = History::default();
    h.record(
        "a/a",
        t0,
        scrape("request_total{direction=\"inbound\"} 500\n"),
    );
    h.record(
        "a/a",
        t0 + Duration::from_secs(5),
        scrape("request_total{direction=\"inbound\"} 7\n"),
    );
    assert_eq!(h.stat(Duration::from_secs(60))[0].requests, 7);
}

#[test]
fn edges_come_from_the_callers_outbound_side() {
    let t0 = Instant::now();
    let mut h = History::default();
    let labels = "direction=\"outbound\",dst_namespace=\"pg\",dst_workload=\"pg\",\
                  server_id=\"spiffe://cluster.local/ns/pg/sa/pg\",tls=\"true\"";
    h.record(
        "order/order",
        t0,
        scrape(&format!("request_total{{{labels}}} 0\n")),
    );
    h.record(
        "order/order",
        t0 + Duration::from_secs(4),
        scrape(&format!(
            "request_total{{{labels}}} 8\n\
             response_total{{{labels},classification=\"success\"}} 6\n\
             response_total{{{labels},classification=\"failure\"}} 2\n"
        )),
    );
    let ids = HashMap::from([(
        "order/order".to_string(),
        "spiffe://cluster.local/ns/order/sa/order".to_string(),
    )]);
    let edges = h.edges(Duration::from_secs(60), &ids);
    assert_eq!(edges.len(), 1);
    let e = &edges[0];
    assert_eq!((e.src.as_str(), e.dst.as_str()), ("order/order", "pg/pg"));
    assert_eq!(e.dst_id, "spiffe://cluster.local/ns/pg/sa/pg");
    assert_eq!(e.src_id, "spiffe://cluster.local/ns/order/sa/order");
    assert!(e.tls);
    assert_eq!(e.requests, 8);
    assert!((e.rps - 2.0).abs() < 1e-9);
    assert_eq!(e.success_rate, Some(0.75));
}

#[test]
fn quantile_of_empty_histogram_is_none() {
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    assert_eq!(
        quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5),
        Some(1.0)
    );
}
