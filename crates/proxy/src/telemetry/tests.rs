//! The one rule: outcomes are classified by the response the client gets, in both directions.

use std::sync::Arc;

use super::*;
use crate::metrics::{EdgeLabels, RouteLabels, Tls};

fn route(metrics: &Metrics, direction: Direction) -> RouteMetrics {
    metrics.route(RouteLabels {
        edge: EdgeLabels {
            direction,
            namespace: "bank".into(),
            workload: "bank".into(),
            dst_namespace: "bank".into(),
            dst_workload: "bank".into(),
            peer_id: Some(Arc::from("spiffe://cluster.local/ns/pg/sa/pg")),
            tls: Tls::True,
        },
        route: "default".into(),
    })
}

/// `response_total` samples of `direction` as `(status, classification, value)`.
fn responses(metrics: &Metrics, direction: &str) -> Vec<(String, String, String)> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        Some(line[start..].split('"').next()?.to_string())
    };
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("response_total{"))
        .filter(|l| label(l, "direction").as_deref() == Some(direction))
        .map(|l| {
            (
                label(l, "status_code").unwrap_or_default(),
                label(l, "classification").unwrap_or_default(),
                l.rsplit(' ').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn forbidden() -> ProxyError {
    ProxyError::Forbidden {
        caller: "spiffe://cluster.local/ns/mallory/sa/mallory".into(),
        policy: "bank-callers".into(),
        explain: "onemesh authz explain --from spiffe://cluster.local/ns/mallory/sa/mallory \
                  --to bank/bank:8080 --method GET --path /"
            .into(),
    }
}

#[test]
fn a_proxy_made_403_counts_the_same_way_in_both_directions() {
    let metrics = Metrics::new();
    for direction in [Direction::Inbound, Direction::Outbound] {
        let route = route(&metrics, direction);
        let rsp = finish(
            &metrics,
            direction,
            &route,
            Instant::now(),
            Err(forbidden()),
        );
        assert_eq!(rsp.status(), 403);
        assert_eq!(rsp.headers()["onemesh-error"], "forbidden");
    }
    let inbound = responses(&metrics, "inbound");
    assert_eq!(inbound, responses(&metrics, "outbound"));
    assert_eq!(
        inbound,
        [("403".to_string(), "failure".to_string(), "1".to_string())]
    );
    let text = metrics.encode();
    for direction in ["inbound", "outbound"] {
        assert!(
            text.contains(&format!(
                "proxy_error_total{{direction=\"{direction}\",reason=\"forbidden\"}} 1"
            )),
            "{text}"
        );
    }
}

#[test]
fn a_refusal_passed_back_by_the_outbound_counts_like_the_inbounds_own() {
    let metrics = Metrics::new();
    let inbound = route(&metrics, Direction::Inbound);
    let refusal = finish(
        &metrics,
        Direction::Inbound,
        &inbound,
        Instant::now(),
        Err(forbidden()),
    );
    // the caller's outbound gets the inbound's answer as a response
    let outbound = route(&metrics, Direction::Outbound);
    finish(
        &metrics,
        Direction::Outbound,
        &outbound,
        Instant::now(),
        Ok(refusal),
    );
    assert_eq!(
        responses(&metrics, "inbound"),
        responses(&metrics, "outbound")
    );
    // an app's own 403 is a success
    let own = Response::builder()
        .status(403)
        .body(crate::body::empty())
        .expect("a valid response");
    finish(
        &metrics,
        Direction::Outbound,
        &outbound,
        Instant::now(),
        Ok(own),
    );
    let mut counted = responses(&metrics, "outbound");
    counted.sort();
    assert_eq!(
        counted,
        [
            ("403".to_string(), "failure".to_string(), "1".to_string()),
            ("403".to_string(), "success".to_string(), "1".to_string()),
        ]
    );
}

#[test]
fn proxy_made_and_upstream_responses_follow_the_same_rule() {
    let metrics = Metrics::new();
    let route = route(&metrics, Direction::Outbound);
    let upstream_503 = Response::builder()
        .status(503)
        .body(crate::body::empty())
        .expect("a valid response");
    finish(
        &metrics,
        Direction::Outbound,
        &route,
        Instant::now(),
        Ok(upstream_503),
    );
    let unavailable = ProxyError::NoEndpoints("bank.bank".into());
    finish(
        &metrics,
        Direction::Outbound,
        &route,
        Instant::now(),
        Err(unavailable),
    );
    assert_eq!(
        responses(&metrics, "outbound"),
        [("503".to_string(), "failure".to_string(), "2".to_string())]
    );
    // only the proxy's own failure is a proxy error
    let text = metrics.encode();
    assert!(text.contains("proxy_error_total{direction=\"outbound\",reason=\"no_endpoints\"} 1"));
}
