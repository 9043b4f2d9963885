//! Every failure of the proxy path is a status with an `onemesh-error` header and a metric:
//! 503 no endpoints, 502 connect failure, 502 TLS failure (wrong identity), 504 route timeout,
//! 431 oversized headers, 400 malformed head, 408 slow client.

mod support;

use std::net::SocketAddr;

use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn error_count(admin: SocketAddr, reason: &str) -> f64 {
    let m = metrics(admin).await;
    sum(
        &m,
        "proxy_error_total",
        &["direction=\"outbound\"", &format!("reason=\"{reason}\"")],
    )
}

/// Writes raw bytes to the outbound port and reads the whole answer.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn upstream_failures_map_to_statuses() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut wrong_id = endpoint(&server, app, "bank", "http");
    wrong_id["identity"] = json!(id("mallory").to_string());
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [
            { "name": "empty", "namespace": "bank", "endpoints": [] },
            { "name": "down", "namespace": "bank", "endpoints": [ {
                "addr": closed.to_string(), "target_port": 1, "identity": id("bank").to_string(),
                "workload": "bank", "namespace": "bank" } ] },
            { "name": "imposter", "namespace": "bank", "endpoints": [ wrong_id ] },
            { "name": "slow", "namespace": "bank", "endpoints": [ endpoint(&server, app, "bank", "http") ],
              "routes": [ { "name": "slow", "path_prefix": "/slow/", "timeout_ms": 200 } ] },
        ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    for (host, path, status, reason) in [
        ("empty.bank", "/", 503, "no_endpoints"),
        ("down.bank", "/", 502, "connect_failed"),
        ("imposter.bank", "/", 502, "tls_failed"),
        ("slow.bank", "/slow/2000", 504, "timeout"),
    ] {
        let (got, headers, _) = get(&mut conn, host, path).await;
        assert_eq!(got, status, "{host}");
        assert_eq!(headers["onemesh-error"], reason, "{host}");
        assert_eq!(error_count(client.admin_addr, reason).await, 1.0, "{host}");
    }
    // the same route answers in time when the app is fast enough
    let (got, _, body) = get(&mut conn, "slow.bank", "/slow/10").await;
    assert_eq!(got, 200);
    assert_eq!(&body[..], b"slept 10");
    let m = metrics(client.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "tls_handshake_failure_total",
            &["direction=\"outbound\"", "reason=\"identity_mismatch\""]
        ),
        // the GET was tried, then retried once
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "response_total",
            &[
                "route=\"slow\"",
                "status_code=\"504\"",
                "classification=\"failure\""
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn bad_request_heads_get_the_proxys_answer() {
    let pki = Pki::new();
    let client = ProxyBuilder::new(&pki, "pg")
        .env(onemesh_proxy::config::ENV_HEADER_READ_TIMEOUT, "300ms")
        .env(onemesh_proxy::config::ENV_MAX_HEADER_BYTES, "8192")
        .start()
        .await;
    let addr = client.outbound_addr;

    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    let rsp = raw(addr, &big).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{rsp}");
    assert!(rsp.contains("onemesh-error: header_too_large"), "{rsp}");

    let rsp = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(rsp.contains("onemesh-error: malformed"), "{rsp}");

    // a slow client: the head never completes
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .unwrap();
    let rsp = String::from_utf8_lossy(&out);
    assert!(rsp.starts_with("HTTP/1.1 408"), "{rsp}");
    assert!(rsp.contains("onemesh-error: header_timeout"), "{rsp}");

    // a request without any host
    let rsp = raw(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(rsp.contains("onemesh-error: malformed"), "{rsp}");

    for reason in ["header_too_large", "header_timeout"] {
        assert_eq!(
            error_count(addr_admin(&client), reason).await,
            1.0,
            "{reason}"
        );
    }
    assert_eq!(error_count(addr_admin(&client), "malformed").await, 2.0);
}

fn addr_admin(p: &onemesh_proxy::Proxy) -> SocketAddr {
    p.admin_addr
}

/// Reads a kept-alive connection until what came ends with `end` (a response's known body).
async fn read_until(tcp: &mut TcpStream, end: &str) -> String {
    let mut buf = Vec::new();
    while !buf.ends_with(end.as_bytes()) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_times_out_too() {
    let pki = Pki::new();
    let app = http1_app().await;
    let client = ProxyBuilder::new(&pki, "pg")
        .env(onemesh_proxy::config::ENV_HEADER_READ_TIMEOUT, "300ms")
        .start()
        .await;
    let mut tcp = TcpStream::connect(client.outbound_addr).await.unwrap();
    // Several quick requests first (their heads each get the timeout anew, then are done with it;
    // the gaps add up to more than one timeout), then one whose head never completes.
    for i in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let req = format!("GET /{i} HTTP/1.1\r\nHost: localhost:{app}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let rsp = read_until(&mut tcp, &format!("path=/{i}")).await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "request {i}: {rsp}");
    }
    // The proxy waits for the next head from the moment it answered the last one.
    let started = std::time::Instant::now();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let waited = started.elapsed();
    // hyper closes a kept-alive connection whose next head is late without an answer.
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "closed after {waited:?}, before the head's own timeout"
    );
    assert!(
        waited < std::time::Duration::from_secs(2),
        "closed after {waited:?}, long past the head's 300 ms timeout"
    );
}

#[tokio::test]
async fn egress_passthrough_reaches_names_outside_the_mesh() {
    let pki = Pki::new();
    let app = http1_app().await;
    let client = ProxyBuilder::new(&pki, "pg").start().await;
    let mut conn = http1_client(client.outbound_addr).await;
    let (status, _, body) = get(&mut conn, &format!("localhost:{app}"), "/outside").await;
    assert_eq!(status, 200);
    // no mesh identity reached the app
    assert_eq!(&body[..], b"version=HTTP/1.1 client=none path=/outside");
    let m = metrics(client.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "request_total",
            &["direction=\"outbound\"", "tls=\"no_identity\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_request_to_the_proxys_own_port_is_refused_not_looped() {
    let pki = Pki::new();
    let app = http1_app().await;
    let client = ProxyBuilder::new(&pki, "pg").start().await;
    let mut conn = http1_client(client.outbound_addr).await;
    // The outbound's own address is outside the mesh: egress would send it back to itself.
    let own = client.outbound_addr.to_string();
    let (status, headers, body) = get(&mut conn, &own, "/again").await;
    assert_eq!(status, 502);
    assert_eq!(headers["onemesh-error"], "loop_detected");
    assert!(String::from_utf8_lossy(&body).contains("leads back to this proxy"));
    // Ordinary egress still works, on the same connection.
    let (status, _, _) = get(&mut conn, &format!("localhost:{app}"), "/outside").await;
    assert_eq!(status, 200);
    let m = metrics(client.admin_addr).await;
    assert_eq!(
        sum(&m, "proxy_error_total", &["reason=\"loop_detected\""]),
        1.0
    );
}

#[tokio::test]
async fn idempotent_requests_are_retried_within_the_budget() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = json!({ "addr": closed.to_string(), "target_port": 1,
        "identity": id("bank").to_string(), "workload": "bank", "namespace": "bank" });
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [
            { "name": "flaky", "namespace": "bank",
              "endpoints": [ down.clone(), endpoint(&server, app, "bank", "http") ] },
            { "name": "dead", "namespace": "bank", "endpoints": [ down.clone(), down ] },
        ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    // one endpoint down: a failed first try goes to the other one
    for i in 0..10 {
        let (status, _, _) = get(&mut conn, "flaky.bank", &format!("/r/{i}")).await;
        assert_eq!(status, 200, "request {i}");
    }
    let retries = |m: &str, reason: &str| {
        sum(
            m,
            "retry_total",
            &["direction=\"outbound\"", &format!("reason=\"{reason}\"")],
        )
    };
    let before = retries(&metrics(client.admin_addr).await, "retried");

    // everything down: a GET is retried once (budget: 1 token in reserve + 0.2 per request)
    let (status, _, _) = get(&mut conn, "dead.bank", "/").await;
    assert_eq!(status, 502);
    let m = metrics(client.admin_addr).await;
    assert_eq!(retries(&m, "retried"), before + 1.0);
    // a POST is never retried
    let rsp = post_empty(&mut conn, "dead.bank", "/").await;
    assert_eq!(rsp.status(), 502);
    assert_eq!(
        retries(&metrics(client.admin_addr).await, "retried"),
        before + 1.0
    );
}

#[tokio::test]
async fn reads_the_endpoints_proxy_could_not_deliver_go_to_another_endpoint() {
    // A pod going away: its proxy still answers, its app is gone (`502 connect_failed`).
    let pki = Pki::new();
    let app = http1_app().await;
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let alive = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let leaving = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[gone]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [
            { "name": "bank", "namespace": "bank", "endpoints": [
                endpoint(&leaving, gone, "bank", "http"),
                endpoint(&alive, app, "bank", "http") ] },
        ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    for i in 0..20 {
        let (status, headers, _) = get(&mut conn, "bank.bank", &format!("/r/{i}")).await;
        assert_eq!(status, 200, "read {i}: {headers:?}");
    }
    let m = metrics(client.admin_addr).await;
    assert!(
        sum(&m, "retry_total", &["reason=\"retried\""]) >= 1.0,
        "the leaving endpoint was never tried: the test proves nothing"
    );
    // A POST that the leaving endpoint could not deliver is not sent again: the caller sees it.
    for _ in 0..20 {
        let rsp = post_empty(&mut conn, "bank.bank", "/pay").await;
        if rsp.status() == 502 {
            assert_eq!(rsp.headers()["onemesh-error"], "connect_failed");
        }
        // Let the leaving endpoint's penalty decay a little so it is drawn again.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let after = metrics(client.admin_addr).await;
    assert_eq!(
        sum(&after, "retry_total", &["reason=\"retried\""]),
        sum(&m, "retry_total", &["reason=\"retried\""]),
        "a POST was retried"
    );
}

/// A bodiless POST (never retried by the mesh) on `conn`.
async fn post_empty(
    conn: &mut hyper::client::conn::http1::SendRequest<AppBody>,
    host: &str,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::post(path)
        .header("host", host)
        .body(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    conn.ready().await.unwrap();
    conn.send_request(req).await.unwrap()
}
