//! Certificates that live three seconds: requests (over the shared HTTP/2 connection) and new
//! mTLS connections (opaque, one per round) keep flowing across several renewals, with zero
//! failures.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_across_renewals() {
    let pki = Pki::new();
    let (web, banner) = (http1_app().await, banner_app().await);
    let server = ProxyBuilder::new(&pki, "bank")
        .env(onemesh_proxy::config::ENV_LEAF_LIFETIME, "3s")
        .static_config(json!({ "inbound": allow(&["pg"], &[web, banner]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .env(onemesh_proxy::config::ENV_LEAF_LIFETIME, "3s")
        .static_config(json!({
            "services": [
                { "name": "web", "namespace": "bank", "endpoints": [ endpoint(&server, web, "bank", "http") ] },
                { "name": "db", "namespace": "bank", "port": 5432, "endpoints": [ endpoint(&server, banner, "bank", "opaque") ] },
            ],
            "tcp_forwards": [ { "listen": "127.0.0.1:0", "service": "db.bank", "port": 5432 } ],
        }))
        .start()
        .await;
    let first_serial = client
        .credentials
        .borrow()
        .as_ref()
        .unwrap()
        .current()
        .chain[0]
        .clone();
    let (_, forward) = client.tcp_forward_addrs[0].clone();

    let mut conn = http1_client(client.outbound_addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while tokio::time::Instant::now() < deadline {
        let (status, _, body) = get(&mut conn, "web.bank", "/renewal").await;
        assert_eq!(status, 200, "request failed in round {rounds}: {body:?}");
        // a fresh mTLS connection each round: handshakes with the current certificates
        let mut tcp = TcpStream::connect(forward).await.unwrap();
        let mut banner = [0u8; 6];
        tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut banner))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("opaque round {rounds} failed: {e}"));
        tcp.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"ping");
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rounds > 20, "only {rounds} rounds");
    for p in [&client, &server] {
        let m = metrics(p.admin_addr).await;
        let renewed = sum(&m, "identity_certify_total", &["result=\"ok\""]);
        assert!(renewed >= 3.0, "only {renewed} certificates issued");
        assert_eq!(
            sum(&m, "identity_certify_total", &["result=\"error\""]),
            0.0
        );
        assert_eq!(sum(&m, "tls_handshake_failure_total", &[]), 0.0);
    }
    let last_serial = client
        .credentials
        .borrow()
        .as_ref()
        .unwrap()
        .current()
        .chain[0]
        .clone();
    assert_ne!(first_serial, last_serial, "the leaf was never swapped");
}
