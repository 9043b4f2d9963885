//! What a caller holding a valid mesh leaf must not be able to do through an inbound proxy: reach
//! a port the workload did not declare, or the proxy's own outbound, admin and inbound ports (a
//! hand-made transport header names the port); send a path the app could read differently from
//! policy (`400 ambiguous_path`); open an h2c tunnel (`400 h2c_upgrade`, both directions); keep
//! a spliced stream open for ever without a byte (`ONEMESH_PROXY_STREAM_IDLE_TIMEOUT`).
//!
//! The callers here are in the server's own namespace, so the default policy allows them: every
//! refusal is the new check's, not policy's.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use onemesh_identity::SpiffeId;
use onemesh_proxy::transport_header::Protocol;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn alpn() -> [&'static [u8]; 1] {
    [onemesh_proxy::client::ALPN]
}

/// A leaf for `spiffe://cluster.local/ns/order/sa/customers`: same namespace as `order`.
fn customers(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    let customers = SpiffeId::new("cluster.local", "order", "customers").unwrap();
    pki.credentials(&customers)
        .client_config(&id("order"), &alpn())
}

fn inbound_errors(m: &str, reason: &str) -> f64 {
    sum(
        m,
        "proxy_error_total",
        &["direction=\"inbound\"", &format!("reason=\"{reason}\"")],
    )
}

#[tokio::test]
async fn a_transport_header_reaches_only_declared_ports() {
    let pki = Pki::new();
    let (order_app, order_seen) = counted_http1_app().await;
    // Another workload's app on the same host (bank's, in the issue): not declared by order.
    let (bank_app, bank_seen) = counted_http1_app().await;
    let (bank_db, bank_db_seen) = counted_banner_app().await;
    let order = ProxyBuilder::new(&pki, "order")
        .static_config(json!({ "inbound": { "ports": [order_app] } }))
        .start()
        .await;
    let caller = customers(&pki);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

    // The declared port works (the default policy allows the same namespace).
    let rsp = raw_mtls(
        caller.clone(),
        order.inbound_addr,
        Protocol::Http1,
        order_app,
        get("/ok").as_bytes(),
    )
    .await
    .unwrap();
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(
        rsp.contains("client=spiffe://cluster.local/ns/order/sa/customers"),
        "{rsp}"
    );
    assert_eq!(order_seen.load(Ordering::SeqCst), 1);

    // (a) another local app's port, (b) the proxy's outbound, (c) its admin, (d) its inbound.
    let cases = [
        (bank_app, "/accounts", "undeclared_port"),
        (order.outbound_addr.port(), "/payments", "proxy_port"),
        (order.admin_addr.port(), "/metrics", "proxy_port"),
        (order.inbound_addr.port(), "/ok", "proxy_port"),
    ];
    for (port, path, reason) in cases {
        for protocol in [Protocol::Http1, Protocol::H2] {
            if protocol == Protocol::H2 {
                // HTTP/2 over a hand-made header: the refusal arrives as an h2 response.
                let status = h2_over_header(&caller, order.inbound_addr, port, path).await;
                assert_eq!(
                    status,
                    Some((403, reason.to_string())),
                    "h2 to {port}{path}"
                );
                continue;
            }
            let rsp = raw_mtls(
                caller.clone(),
                order.inbound_addr,
                protocol,
                port,
                get(path).as_bytes(),
            )
            .await
            .unwrap();
            assert!(rsp.starts_with("HTTP/1.1 403"), "{port}{path}: {rsp}");
            assert!(
                rsp.contains(&format!("onemesh-error: {reason}")),
                "{port}{path}: {rsp}"
            );
            assert!(rsp.contains(&port.to_string()), "names the port: {rsp}");
        }
    }
    // Opaque to an undeclared server-speaks-first app: closed, nothing read.
    let rsp = raw_mtls(
        caller.clone(),
        order.inbound_addr,
        Protocol::Opaque,
        bank_db,
        b"hi\n",
    )
    .await
    .unwrap_or_default();
    assert_eq!(rsp, "", "an opaque stream reached port {bank_db}");

    assert_eq!(
        bank_seen.load(Ordering::SeqCst),
        0,
        "bank's app was reached"
    );
    assert_eq!(
        bank_db_seen.load(Ordering::SeqCst),
        0,
        "bank's db was reached"
    );
    assert_eq!(order_seen.load(Ordering::SeqCst), 1);
    let m = metrics(order.admin_addr).await;
    assert_eq!(inbound_errors(&m, "undeclared_port"), 3.0, "{m}");
    assert_eq!(inbound_errors(&m, "proxy_port"), 6.0, "{m}");
    // The admin port was never served through the inbound.
    assert_eq!(
        sum(&m, "request_total", &["direction=\"inbound\""]),
        1.0,
        "{m}"
    );
}

/// One HTTP/2 GET over a hand-made h2 transport header: (status, onemesh-error).
async fn h2_over_header(
    config: &std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    port: u16,
    path: &str,
) -> Option<(u16, String)> {
    use onemesh_proxy::transport_header::TransportHeader;
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("order")
        .ok()?
        .to_owned();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .ok()?;
    let header = TransportHeader {
        protocol: Protocol::H2,
        target_port: port,
        authority: "x".into(),
    };
    tls.write_all(&header.encode().ok()?).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://x{path}"))
        .body(Full::new(bytes::Bytes::new()))
        .ok()?;
    let rsp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    let reason = rsp
        .headers()
        .get("onemesh-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((rsp.status().as_u16(), reason))
}

#[tokio::test]
async fn without_declared_ports_nothing_is_forwarded() {
    let pki = Pki::new();
    let (app, seen) = counted_http1_app().await;
    let order = ProxyBuilder::new(&pki, "order").start().await;
    let rsp = raw_mtls(
        customers(&pki),
        order.inbound_addr,
        Protocol::Http1,
        app,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(rsp.contains("onemesh-error: undeclared_port"), "{rsp}");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

/// bank's proxy, with its app allowing `pg` on `/v1` only, and a `pg` client proxy.
struct Guarded {
    pki: Pki,
    bank: onemesh_proxy::Proxy,
    pg: onemesh_proxy::Proxy,
    app: u16,
    h2: u16,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn guarded() -> Guarded {
    let pki = Pki::new();
    let (app, seen) = counted_http1_app().await;
    let h2 = h2_app().await;
    let bank = ProxyBuilder::new(&pki, "bank")
        .static_config(
            json!({ "inbound": { "ports": [app, h2], "authorizations": [ {
            "name": "pg-v1", "routes": [ { "path_prefix": "/v1" } ],
            "identities": [ id("pg").to_string() ] } ] } }),
        )
        .start()
        .await;
    let pg = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [
            { "name": "web", "namespace": "bank", "endpoints": [ endpoint(&bank, app, "bank", "http") ] },
            { "name": "h2", "namespace": "bank", "endpoints": [ endpoint(&bank, h2, "bank", "http") ] },
        ] }))
        .start()
        .await;
    Guarded {
        pki,
        bank,
        pg,
        app,
        h2,
        seen,
    }
}

#[tokio::test]
async fn ambiguous_paths_to_an_allowed_prefix_are_refused_before_policy() {
    let g = guarded().await;
    let pg = g
        .pki
        .credentials(&id("pg"))
        .client_config(&id("bank"), &alpn());
    let spellings = [
        "/v1/..%2fadmin",
        "/v1%2Fadmin",
        "/v1%5cadmin",
        "/v1%5C..%5Cadmin",
        "/v1\\..\\admin",
        "/v1/..;/admin",
        "/v1;x=1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/%252e%252e/admin",
        "/v1/../admin",
        "/v1/./pay",
        "/v1/%c0%ae%c0%ae/admin",
    ];
    for path in spellings {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let rsp = raw_mtls(
            pg.clone(),
            g.bank.inbound_addr,
            Protocol::Http1,
            g.app,
            request.as_bytes(),
        )
        .await
        .unwrap();
        assert!(rsp.starts_with("HTTP/1.1 400"), "{path}: {rsp}");
        assert!(
            rsp.contains("onemesh-error: ambiguous_path"),
            "{path}: {rsp}"
        );
    }
    assert_eq!(g.seen.load(Ordering::SeqCst), 0, "the app saw a request");

    // Through the client proxy too, HTTP/1 and HTTP/2 (the h2 hop carries the raw :path).
    let mut conn = http1_client(g.pg.outbound_addr).await;
    let (status, headers, _) = get(&mut conn, "web.bank", "/v1/%2e%2e/admin").await;
    assert_eq!(status, 400);
    assert_eq!(headers["onemesh-error"], "ambiguous_path");
    let (status, _, body) = get(&mut conn, "web.bank", "/v1/pay%20day").await;
    assert_eq!(status, 200, "an ordinary encoding passes");
    assert_eq!(
        &body[..],
        b"version=HTTP/1.1 client=spiffe://cluster.local/ns/pg/sa/pg path=/v1/pay%20day"
    );
    let (status, headers, _) = get(&mut conn, "web.bank", "/admin").await;
    assert_eq!(status, 403, "outside /v1 policy still decides");
    assert_eq!(headers["onemesh-error"], "forbidden");
    assert_eq!(
        g.seen.load(Ordering::SeqCst),
        1,
        "one connection for the one allowed request"
    );

    let tcp = TcpStream::connect(g.pg.outbound_addr).await.unwrap();
    let (mut h2, c) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(c);
    for (path, want) in [("/v1/..;/admin", 400), ("/v1/ok", 200)] {
        let req = http::Request::get(format!("http://h2.bank{path}"))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let rsp = tokio::time::timeout(TIMEOUT, h2.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rsp.status(), want, "h2 {path}");
        if want == 400 {
            assert_eq!(rsp.headers()["onemesh-error"], "ambiguous_path");
        } else {
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.ends_with(b"path=/v1/ok"), "{body:?}");
        }
    }

    let m = metrics(g.bank.admin_addr).await;
    assert_eq!(
        inbound_errors(&m, "ambiguous_path"),
        (spellings.len() + 2) as f64,
        "{m}"
    );
    let _ = g.h2;
}

const H2C: &[(&str, &str)] = &[
    ("connection", "Upgrade, HTTP2-Settings"),
    ("upgrade", "h2c"),
    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
];

#[tokio::test]
async fn h2c_upgrades_are_refused_in_both_directions() {
    let g = guarded().await;
    // inbound: a hand-made HTTP/1 connection asks the app to switch to h2c
    let pg = g
        .pki
        .credentials(&id("pg"))
        .client_config(&id("bank"), &alpn());
    for headers in [
        "Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: close\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: upgrade, close\r\nUpgrade: websocket, H2C\r\n",
    ] {
        let request = format!("GET /v1/x HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let rsp = raw_mtls(
            pg.clone(),
            g.bank.inbound_addr,
            Protocol::Http1,
            g.app,
            request.as_bytes(),
        )
        .await
        .unwrap();
        assert!(rsp.starts_with("HTTP/1.1 400"), "{headers}: {rsp}");
        assert!(rsp.contains("onemesh-error: h2c_upgrade"), "{rsp}");
    }
    assert_eq!(
        g.seen.load(Ordering::SeqCst),
        0,
        "the app saw an h2c upgrade"
    );
    let m = metrics(g.bank.admin_addr).await;
    assert_eq!(inbound_errors(&m, "h2c_upgrade"), 3.0, "{m}");

    // outbound: the app must not tunnel through its own proxy either (to a mesh service or an
    // outside one)
    let outside = http1_app().await;
    for host in ["web.bank".to_string(), format!("127.0.0.1:{outside}")] {
        let mut conn = http1_client(g.pg.outbound_addr).await;
        let (status, headers, body) = get_with(&mut conn, &host, "/v1/x", H2C).await;
        assert_eq!(status, 400, "{host}");
        assert_eq!(headers["onemesh-error"], "h2c_upgrade");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("prior knowledge"), "{body}");
    }
    assert_eq!(g.seen.load(Ordering::SeqCst), 0);
    let m = metrics(g.pg.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "proxy_error_total",
            &["direction=\"outbound\"", "reason=\"h2c_upgrade\""]
        ),
        2.0
    );
}

/// An opaque stream through a tcp forward: returns how long the quiet stream stayed open.
async fn quiet_stream(
    client_idle: &str,
    server_idle: &str,
) -> (Duration, onemesh_proxy::Proxy, onemesh_proxy::Proxy) {
    let pki = Pki::new();
    let banner = banner_app().await;
    let bank = ProxyBuilder::new(&pki, "bank")
        .env(onemesh_proxy::config::ENV_STREAM_IDLE_TIMEOUT, server_idle)
        .static_config(json!({ "inbound": allow(&["pg"], &[banner]) }))
        .start()
        .await;
    let pg = ProxyBuilder::new(&pki, "pg")
        .env(onemesh_proxy::config::ENV_STREAM_IDLE_TIMEOUT, client_idle)
        .static_config(json!({
            "services": [ { "name": "db", "namespace": "bank", "port": 5432,
                "endpoints": [ endpoint(&bank, banner, "bank", "opaque") ] } ],
            "tcp_forwards": [ { "listen": "127.0.0.1:0", "service": "db.bank", "port": 5432 } ],
        }))
        .start()
        .await;
    let (_, forward) = pg.tcp_forward_addrs[0].clone();
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    let mut hello = [0u8; 6];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&hello, b"HELLO\n");
    // Traffic keeps it open: an echo every 200 ms for longer than the timeout.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tcp.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        tcp.read_exact(&mut echo).await.unwrap();
    }
    let quiet = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut rest))
        .await
        .expect("the quiet stream was never closed")
        .unwrap_or_default();
    (quiet.elapsed(), pg, bank)
}

#[tokio::test]
async fn quiet_opaque_streams_are_closed_after_the_idle_timeout() {
    // the server side's inbound closes it
    let (open, pg, bank) = quiet_stream("1h", "600ms").await;
    assert!(
        open >= Duration::from_millis(550) && open < Duration::from_secs(5),
        "closed after {open:?}"
    );
    let m = metrics(bank.admin_addr).await;
    assert_eq!(inbound_errors(&m, "stream_idle_timeout"), 1.0, "{m}");
    drop(pg);
    // the client side's outbound closes it
    let (open, pg, _bank) = quiet_stream("600ms", "1h").await;
    assert!(
        open >= Duration::from_millis(550) && open < Duration::from_secs(5),
        "closed after {open:?}"
    );
    let m = metrics(pg.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "proxy_error_total",
            &["direction=\"outbound\"", "reason=\"stream_idle_timeout\""]
        ),
        1.0,
        "{m}"
    );
}
