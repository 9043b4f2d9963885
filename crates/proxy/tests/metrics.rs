//! After N requests of known outcome, `/metrics` on both proxies shows exactly N requests, the
//! right success/failure split, a latency histogram (in seconds) with N observations, both
//! identities in the labels, and the text passes `promtool check metrics` with no exception. A
//! proxy that has served HTTP and TCP, refused callers and answered errors has a sample in every
//! metric family, and its text passes promtool too.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PG_ID: &str = "spiffe://cluster.local/ns/pg/sa/pg";
const BANK_ID: &str = "spiffe://cluster.local/ns/bank/sa/bank";

/// Runs `promtool check metrics` on `text`: any problem (1 = parse error, 3 = lint) fails.
fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is missing ({e}): run scripts/install-test-deps (or `apt-get install -y prometheus`)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({:?}):\n{}{}\n--- metrics ---\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric family of the proxy (DESIGN.md, `src/metrics.rs`), as a sample name: a family
/// without samples is left out of the text altogether, so only a sample proves it is there.
const FAMILIES: [&str; 17] = [
    "request_total",
    "response_total",
    "response_latency_seconds_count",
    "tcp_open_total",
    "tcp_close_total",
    "tcp_open_connections",
    "tcp_read_bytes_total",
    "tcp_write_bytes_total",
    "tcp_connection_duration_seconds_count",
    "tls_handshake_failure_total",
    "authz_deny_total",
    "authz_allow_total",
    "proxy_error_total",
    "retry_total",
    "detect_total",
    "identity_cert_expiration_timestamp_seconds",
    "identity_certify_total",
];

/// The families of [`FAMILIES`] with no sample in `text`.
fn families_without_samples(text: &str) -> Vec<&'static str> {
    FAMILIES
        .into_iter()
        .filter(|name| {
            !text.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|tail| tail.starts_with('{') || tail.starts_with(' '))
            })
        })
        .collect()
}

#[tokio::test]
async fn counts_match_requests_and_promtool_passes() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [ { "name": "web", "namespace": "bank",
            "endpoints": [ endpoint(&server, app, "bank", "http") ],
            "routes": [ { "name": "status", "path_prefix": "/status/" } ] } ] }))
        .start()
        .await;

    let (ok, failed) = (9usize, 4usize);
    let mut conn = http1_client(client.outbound_addr).await;
    for i in 0..ok {
        let (status, _, _) = get(&mut conn, "web.bank", &format!("/ok/{i}")).await;
        assert_eq!(status, 200);
    }
    for _ in 0..failed {
        let (status, _, _) = get(&mut conn, "web.bank", "/status/500").await;
        assert_eq!(status, 500);
    }
    let n = (ok + failed) as f64;

    for (proxy, direction, own, peer) in [
        (
            &client,
            "outbound",
            ",namespace=\"pg\"",
            format!("server_id=\"{BANK_ID}\""),
        ),
        (
            &server,
            "inbound",
            ",namespace=\"bank\"",
            format!("client_id=\"{PG_ID}\""),
        ),
    ] {
        let text = metrics(proxy.admin_addr).await;
        let d = format!("direction=\"{direction}\"");
        assert_eq!(
            sum(&text, "request_total", &[&d, own, "dst_namespace=\"bank\""]),
            n
        );
        assert_eq!(
            sum(&text, "request_total", &[&d, &peer]),
            n,
            "{direction}\n{text}"
        );
        assert_eq!(
            sum(
                &text,
                "response_total",
                &[&d, &peer, "classification=\"success\""]
            ),
            ok as f64,
            "{direction}"
        );
        assert_eq!(
            sum(
                &text,
                "response_total",
                &[
                    &d,
                    &peer,
                    "classification=\"failure\"",
                    "status_code=\"500\""
                ]
            ),
            failed as f64,
            "{direction}"
        );
        assert_eq!(
            sum(&text, "response_latency_seconds_count", &[&d, &peer]),
            n,
            "{direction}"
        );
        promtool_check(&text);
    }
    // the outbound side labels requests by route
    let text = metrics(client.admin_addr).await;
    assert_eq!(
        sum(&text, "request_total", &["route=\"status\""]),
        failed as f64
    );
    assert_eq!(
        sum(&text, "request_total", &["route=\"default\""]),
        ok as f64
    );
    assert!(sum(&text, "identity_cert_expiration_timestamp_seconds", &[]) > 1.7e9);
}

#[tokio::test]
async fn every_family_has_samples_and_promtool_passes() {
    let pki = Pki::new();
    let (app, banner) = (http1_app().await, banner_app().await);
    // card: an opaque service the subject proxy calls.
    let card = ProxyBuilder::new(&pki, "card")
        .static_config(json!({ "inbound": allow(&["bank"], &[banner]) }))
        .start()
        .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = json!({ "addr": closed.to_string(), "target_port": 1,
        "identity": id("card").to_string(), "workload": "card", "namespace": "card" });
    // bank: the subject. Serves pg, refuses order, calls card over TCP and fails to reach
    // services with no or dead endpoints.
    let bank = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({
            "inbound": allow(&["pg"], &[app]),
            "services": [
                { "name": "db", "namespace": "card", "port": 5432,
                  "endpoints": [ endpoint(&card, banner, "card", "opaque") ] },
                { "name": "empty", "namespace": "card", "endpoints": [] },
                { "name": "dead", "namespace": "card", "endpoints": [ down.clone(), down ] },
            ],
            "tcp_forwards": [ { "listen": "127.0.0.1:0", "service": "db.card", "port": 5432 } ],
        }))
        .start()
        .await;
    let caller = |name: &str| {
        ProxyBuilder::new(&pki, name).static_config(json!({ "services": [ { "name": "web",
            "namespace": "bank", "endpoints": [ endpoint(&bank, app, "bank", "http") ] } ] }))
    };
    let (pg, order) = (caller("pg").start().await, caller("order").start().await);

    // HTTP in: successes and an application error from pg, a denial for order.
    let mut conn = http1_client(pg.outbound_addr).await;
    assert_eq!(get(&mut conn, "web.bank", "/ok").await.0, 200);
    assert_eq!(get(&mut conn, "web.bank", "/status/500").await.0, 500);
    let mut conn = http1_client(order.outbound_addr).await;
    assert_eq!(get(&mut conn, "web.bank", "/secret").await.0, 403);
    // A TLS caller without a certificate.
    let _ = raw_mtls_get(no_cert_client_config(), bank.inbound_addr, app).await;
    // HTTP out: no endpoints, and dead endpoints (retried, then a connect error).
    let mut conn = http1_client(bank.outbound_addr).await;
    assert_eq!(get(&mut conn, "empty.card", "/").await.0, 503);
    assert_eq!(get(&mut conn, "dead.card", "/").await.0, 502);
    // TCP out through the forward, closed.
    let (_, forward) = bank.tcp_forward_addrs[0].clone();
    let mut tcp = tokio::net::TcpStream::connect(forward).await.unwrap();
    let mut hello = [0u8; 6];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    tcp.write_all(b"ping").await.unwrap();
    drop(tcp);

    // Closes and handshake failures are counted a moment later: poll.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let text = loop {
        let text = metrics(bank.admin_addr).await;
        let missing = families_without_samples(&text);
        if missing.is_empty() {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "families without samples: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("# TYPE response_latency_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("le=\"0.005\""),
        "latency buckets are in seconds:\n{text}"
    );
    promtool_check(&text);
    // In control-plane mode the admin server appends the control plane's own gauges.
    promtool_check(&onemesh_proxy::control::ControlPlane::new().append_metrics(text));
    for proxy in [&card, &pg, &order] {
        promtool_check(&metrics(proxy.admin_addr).await);
    }
}
