//! After N requests of known outcome, `/metrics` on both proxies shows exactly N requests, the
//! right success/failure split, a latency histogram with N observations, both identities in the
//! labels, and the text passes `promtool check metrics`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::*;

const PG_ID: &str = "spiffe://cluster.local/ns/pg/sa/pg";
const BANK_ID: &str = "spiffe://cluster.local/ns/bank/sa/bank";

/// The one lint promtool reports that we keep on purpose: DESIGN.md names the latency
/// histogram `response_latency_ms` (as Linkerd does), and promtool prefers base units.
const ACCEPTED_LINT: &str = "response_latency_ms metric names should not contain abbreviated units";

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
            "promtool is missing ({e}): install it with `apt-get update && apt-get install -y prometheus`"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != ACCEPTED_LINT)
        .collect();
    match out.status.code() {
        Some(0) => {}
        // 3 = lint problems only: acceptable if the only one is the documented exception.
        Some(3) if problems.is_empty() => {}
        code => {
            panic!("promtool check metrics failed ({code:?}):\n{report}\n--- metrics ---\n{text}")
        }
    }
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
            sum(&text, "response_latency_ms_count", &[&d, &peer]),
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
