//! Every outbound request's outcome reaches `response_total` once, also when it failed before an
//! endpoint was chosen (no endpoints, a loop, a request naming no host), and a proxy-made 403
//! is counted the same way by the proxy that made it (inbound) and by the caller's (outbound): a
//! failure, as every answer a proxy made itself.

mod support;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `request_total` and `response_total` of the outbound with `labels`.
fn outbound_counts(m: &str, labels: &[&str]) -> (f64, f64) {
    let labels: Vec<&str> = ["direction=\"outbound\""]
        .iter()
        .chain(labels)
        .copied()
        .collect();
    (
        sum(m, "request_total", &labels),
        sum(m, "response_total", &labels),
    )
}

#[tokio::test]
async fn failures_before_an_endpoint_is_chosen_are_counted() {
    let pki = Pki::new();
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [
            { "name": "empty", "namespace": "bank", "endpoints": [],
              "routes": [ { "name": "pay", "path_prefix": "/pay" } ] },
        ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    // no endpoints: counted under the service's namespace and the matched route
    let (status, headers, _) = get(&mut conn, "empty.bank", "/pay/1").await;
    assert_eq!(status, 503);
    assert_eq!(headers["onemesh-error"], "no_endpoints");
    // a loop: counted as egress, twice (the request went out once and came back once)
    let own = client.outbound_addr.to_string();
    let (status, headers, _) = get(&mut conn, &own, "/again").await;
    assert_eq!(status, 502);
    assert_eq!(headers["onemesh-error"], "loop_detected");
    // no host at all (HTTP/1.0 needs none): nothing known but the direction
    let mut tcp = TcpStream::connect(client.outbound_addr).await.unwrap();
    tcp.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.") && answer[8..].starts_with(" 400"),
        "{answer}"
    );
    assert!(answer.contains("onemesh-error: malformed"), "{answer}");

    let m = metrics(client.admin_addr).await;
    let no_endpoints = [
        "dst_namespace=\"bank\"",
        "dst_workload=\"\"",
        "tls=\"no_identity\"",
        "route=\"pay\"",
        "status_code=\"503\"",
        "classification=\"failure\"",
    ];
    assert_eq!(outbound_counts(&m, &no_endpoints).1, 1.0, "{m}");
    assert_eq!(outbound_counts(&m, &no_endpoints[..4]), (1.0, 1.0), "{m}");
    let looped = ["status_code=\"502\"", "classification=\"failure\""];
    assert_eq!(outbound_counts(&m, &looped).1, 2.0, "{m}");
    let malformed = [
        "dst_namespace=\"\"",
        "status_code=\"400\"",
        "classification=\"failure\"",
    ];
    assert_eq!(outbound_counts(&m, &malformed).1, 1.0, "{m}");
    // every request counted once, in both families
    assert_eq!(outbound_counts(&m, &[]), (4.0, 4.0), "{m}");
}

#[tokio::test]
async fn a_proxy_made_403_counts_the_same_way_inbound_and_outbound() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "order")
        .static_config(json!({ "services": [ { "name": "web", "namespace": "bank",
            "endpoints": [ endpoint(&server, app, "bank", "http") ] } ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    let (status, headers, _) = get(&mut conn, "web.bank", "/secret").await;
    assert_eq!(status, 403);
    assert_eq!(headers["onemesh-error"], "forbidden");
    let inbound = metrics(server.admin_addr).await;
    let outbound = metrics(client.admin_addr).await;
    for class in ["success", "failure"] {
        let labels = |d: &str| {
            [
                format!("direction=\"{d}\""),
                "status_code=\"403\"".to_string(),
                format!("classification=\"{class}\""),
            ]
        };
        let count = |m: &str, d: &str| {
            let l = labels(d);
            sum(
                m,
                "response_total",
                &l.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            count(&inbound, "inbound"),
            count(&outbound, "outbound"),
            "{class}\n{inbound}\n{outbound}"
        );
    }
    // the rule: a proxy's own answer is a failure, on both sides
    for (m, direction) in [(&inbound, "inbound"), (&outbound, "outbound")] {
        let labels = [
            format!("direction=\"{direction}\""),
            "status_code=\"403\"".to_string(),
            "classification=\"failure\"".to_string(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(sum(m, "response_total", &labels), 1.0, "{direction}\n{m}");
    }
}
