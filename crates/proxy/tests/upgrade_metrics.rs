//! Upgraded (WebSocket-like) connections are counted like any other TCP traffic: an upgrade
//! through outbound → inbound carrying known bytes shows those bytes, an open connection while it
//! lasts, and its duration at close, on both sides (outbound: a stream to the destination counted
//! from the `101` on; inbound: the accepted connection, kept open until the splice ends).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAYLOAD: usize = 10_000;

/// An app that answers any request with `101` and then echoes every byte.
async fn upgrade_echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                assert!(head.starts_with("GET /chat"), "{head}");
                tcp.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
                )
                .await
                .unwrap();
                let mut buf = vec![0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Reads bytes until the end of an HTTP head (one byte at a time: nothing after it is consumed).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed before the end of the head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Polls `admin`'s metrics until `done` holds (panics after [`TIMEOUT`]).
async fn metrics_until(admin: std::net::SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let text = metrics(admin).await;
        if done(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn upgraded_bytes_and_duration_are_counted_on_both_sides() {
    let pki = Pki::new();
    let app = upgrade_echo_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({
            "services": [ { "name": "up", "namespace": "bank", "port": 80,
                            "endpoints": [endpoint(&server, app, "bank", "http")] } ],
        }))
        .start()
        .await;

    let mut tcp = TcpStream::connect(client.outbound_addr).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\nHost: up.bank\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    tcp.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; PAYLOAD];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);

    // While the stream is open, both sides show it open, with its bytes.
    let out = [
        "direction=\"outbound\"",
        "dst_workload=\"bank\"",
        "server_id=\"spiffe://cluster.local/ns/bank/sa/bank\"",
    ];
    let inb = [
        "direction=\"inbound\"",
        "client_id=\"spiffe://cluster.local/ns/pg/sa/pg\"",
    ];
    let c = metrics_until(client.admin_addr, |m| {
        sum(m, "tcp_read_bytes_total", &out) >= PAYLOAD as f64
            && sum(m, "tcp_write_bytes_total", &out) >= PAYLOAD as f64
    })
    .await;
    assert_eq!(sum(&c, "tcp_open_total", &out), 1.0, "{c}");
    assert_eq!(sum(&c, "tcp_open_connections", &out), 1.0, "{c}");
    assert_eq!(sum(&c, "tcp_close_total", &out), 0.0, "{c}");
    let s = metrics(server.admin_addr).await;
    assert_eq!(sum(&s, "tcp_open_connections", &inb), 1.0, "{s}");
    assert_eq!(
        sum(&s, "tcp_close_total", &inb),
        0.0,
        "the inbound closed the upgraded connection's count at the 101: {s}"
    );
    assert!(
        sum(&s, "tcp_read_bytes_total", &inb) >= PAYLOAD as f64,
        "{s}"
    );
    assert!(
        sum(&s, "tcp_write_bytes_total", &inb) >= PAYLOAD as f64,
        "{s}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);

    // At close: the outbound stream carried exactly the bytes after the 101, both ways, and
    // lasted at least the 300 ms above; the inbound connection too (plus the heads).
    let c = metrics_until(client.admin_addr, |m| {
        sum(m, "tcp_close_total", &out) == 1.0
    })
    .await;
    assert_eq!(sum(&c, "tcp_read_bytes_total", &out), PAYLOAD as f64, "{c}");
    assert_eq!(
        sum(&c, "tcp_write_bytes_total", &out),
        PAYLOAD as f64,
        "{c}"
    );
    assert_eq!(sum(&c, "tcp_open_connections", &out), 0.0, "{c}");
    assert_eq!(
        sum(&c, "tcp_connection_duration_seconds_count", &out),
        1.0,
        "{c}"
    );
    assert!(
        sum(&c, "tcp_connection_duration_seconds_sum", &out) >= 0.3,
        "{c}"
    );
    let s = metrics_until(server.admin_addr, |m| {
        sum(m, "tcp_close_total", &inb) == 1.0
    })
    .await;
    assert_eq!(sum(&s, "tcp_open_connections", &inb), 0.0, "{s}");
    assert_eq!(
        sum(&s, "tcp_connection_duration_seconds_count", &inb),
        1.0,
        "{s}"
    );
    assert!(
        sum(&s, "tcp_connection_duration_seconds_sum", &inb) >= 0.3,
        "{s}"
    );
    assert!(
        sum(&s, "tcp_read_bytes_total", &inb) > PAYLOAD as f64,
        "{s}"
    );
    assert!(
        sum(&s, "tcp_write_bytes_total", &inb) > PAYLOAD as f64,
        "{s}"
    );
    // and the request that upgraded was allowed by the test policy
    assert_eq!(
        sum(
            &s,
            "authz_allow_total",
            &["policy=\"allow-test\"", "kind=\"http\""]
        ),
        1.0,
        "{s}"
    );
}
