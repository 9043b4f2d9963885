//! End to end through two proxies and mTLS: HTTP/1.1 (keep-alive, proxy form, a chunked 10 MB
//! upload, a streaming download), HTTP/2 with prior knowledge, gRPC unary and server streaming
//! (tonic on both ends), a WebSocket echo, and an opaque server-speaks-first protocol. Each test
//! checks the bytes that arrived and the identities both sides saw (the app's
//! `onemesh-client-id` header and the metric labels).

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use onemesh_proxy::Proxy;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PG_ID: &str = "spiffe://cluster.local/ns/pg/sa/pg";
const BANK_ID: &str = "spiffe://cluster.local/ns/bank/sa/bank";

struct Mesh {
    _pki: Pki,
    server: Proxy,
    client: Proxy,
}

/// App ports behind the `bank` proxy; the `pg` proxy knows them as services in namespace bank.
async fn mesh() -> Mesh {
    mesh_with("http1", "10s").await
}

/// [`mesh`] with the client proxy's `ONEMESH_PROXY_HTTP1_TRANSPORT` and the server proxy's
/// `ONEMESH_PROXY_HEADER_READ_TIMEOUT`.
async fn mesh_with(http1_transport: &str, server_header_timeout: &str) -> Mesh {
    let pki = Pki::new();
    let (web, h2, grpc, ws, banner) = (
        http1_app().await,
        h2_app().await,
        grpc_app().await,
        ws_app().await,
        banner_app().await,
    );
    let server = ProxyBuilder::new(&pki, "bank")
        .env("ONEMESH_PROXY_HEADER_READ_TIMEOUT", server_header_timeout)
        .static_config(json!({ "inbound": allow(&["pg"], &[web, h2, grpc, ws, banner]) }))
        .start()
        .await;
    let svc = |name: &str, port: u16, app: u16, protocol: &str| {
        json!({ "name": name, "namespace": "bank", "port": port,
                "endpoints": [endpoint(&server, app, "bank", protocol)] })
    };
    let client = ProxyBuilder::new(&pki, "pg")
        .env("ONEMESH_PROXY_HTTP1_TRANSPORT", http1_transport)
        .static_config(json!({
            "services": [
                svc("web", 80, web, "http"),
                svc("h2", 80, h2, "http"),
                svc("grpc", 80, grpc, "http"),
                svc("ws", 80, ws, "http"),
                svc("db", 5432, banner, "opaque"),
            ],
            "tcp_forwards": [ { "listen": "127.0.0.1:0", "service": "db.bank", "port": 5432 } ],
        }))
        .start()
        .await;
    Mesh {
        _pki: pki,
        server,
        client,
    }
}

#[tokio::test]
async fn http1_keep_alive_carries_identity_both_ways() {
    let m = mesh().await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    for i in 0..3 {
        let (status, _, body) = get(&mut conn, "web.bank", &format!("/whoami/{i}")).await;
        assert_eq!(status, 200);
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            body,
            format!("version=HTTP/1.1 client={PG_ID} path=/whoami/{i}")
        );
    }
    // proxy form (HTTP_PROXY=...): absolute URI, on the same connection
    let req = Request::get("http://web.bank.svc.cluster.local/abs")
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    let rsp = conn.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"path=/abs"), "{body:?}");

    // a forged client id from the app is replaced by the verified one
    let req = Request::get("/forged")
        .header("host", "web.bank")
        .header(
            "onemesh-client-id",
            "spiffe://cluster.local/ns/bank/sa/admin",
        )
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    let body = conn
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert!(
        body.starts_with(format!("version=HTTP/1.1 client={PG_ID} ").as_bytes()),
        "{body:?}"
    );

    let server = metrics(m.server.admin_addr).await;
    assert_eq!(
        sum(
            &server,
            "request_total",
            &[
                "direction=\"inbound\"",
                &format!("client_id=\"{PG_ID}\""),
                "tls=\"true\""
            ]
        ),
        5.0
    );
    let client = metrics(m.client.admin_addr).await;
    assert_eq!(
        sum(
            &client,
            "request_total",
            &[
                "direction=\"outbound\"",
                &format!("server_id=\"{BANK_ID}\""),
                "dst_namespace=\"bank\""
            ]
        ),
        5.0
    );
}

/// POSTs `n` copies of `chunk` (chunked, no content-length) to the app's `/echo` through the
/// mesh; returns the body echoed back after checking the status.
async fn echo_upload(
    conn: &mut hyper::client::conn::http1::SendRequest<AppBody>,
    chunk: Bytes,
    n: usize,
) -> Bytes {
    let frames = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
    );
    let req = Request::post("/echo")
        .header("host", "web.bank")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let rsp = tokio::time::timeout(TIMEOUT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    tokio::time::timeout(TIMEOUT, rsp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes()
}

/// Two application connections at once (each starts with a slow request, so the two overlap),
/// each with keep-alive requests and a chunked upload.
async fn two_busy_connections(m: &Mesh) {
    let work = |i: usize| async move {
        let mut conn = http1_client(m.client.outbound_addr).await;
        // Both in flight at once for a while, whatever the scheduling.
        let (status, _, _) = get(&mut conn, "web.bank", "/slow/300").await;
        assert_eq!(status, 200);
        for j in 0..3 {
            let (status, _, body) = get(&mut conn, "web.bank", &format!("/whoami/{i}-{j}")).await;
            assert_eq!(status, 200);
            let expected = format!("version=HTTP/1.1 client={PG_ID} path=/whoami/{i}-{j}");
            assert_eq!(body, Bytes::from(expected));
        }
        let body = echo_upload(&mut conn, Bytes::from(vec![i as u8; 65536]), 16).await;
        assert_eq!(body.len(), 16 * 65536);
        assert!(body.iter().all(|b| *b == i as u8));
    };
    tokio::join!(work(1), work(2));
}

/// Mesh connections the server proxy accepted from the client proxy.
async fn accepted_from_pg(m: &Mesh) -> f64 {
    let server = metrics(m.server.admin_addr).await;
    sum(
        &server,
        "tcp_open_total",
        &["direction=\"inbound\"", &format!("client_id=\"{PG_ID}\"")],
    )
}

#[tokio::test]
async fn http1_rides_pooled_http1_connections_by_default() {
    let m = mesh().await;
    two_busy_connections(&m).await;
    // One mesh connection per concurrent request, reused: two here.
    assert_eq!(accepted_from_pg(&m).await, 2.0);
    two_busy_connections(&m).await;
    assert_eq!(
        accepted_from_pg(&m).await,
        2.0,
        "pooled connections were reused"
    );
}

#[tokio::test]
async fn http1_can_ride_one_multiplexed_h2_connection() {
    let m = mesh_with("h2", "10s").await;
    two_busy_connections(&m).await;
    two_busy_connections(&m).await;
    assert_eq!(accepted_from_pg(&m).await, 1.0);
}

#[tokio::test]
async fn a_quiet_proxy_keeps_a_few_warm_mesh_connections() {
    use onemesh_proxy::memory::KEEP_MESH_IDLE_WHEN_QUIET as KEEP;
    let m = mesh().await;
    // A burst of overlapping slow requests: each holds a mesh connection of its own.
    let addr = m.client.outbound_addr;
    let slow = |_| async move {
        let mut conn = http1_client(addr).await;
        let (status, _, _) = get(&mut conn, "web.bank", "/slow/600").await;
        assert_eq!(status, 200);
    };
    futures_util::future::join_all((0..KEEP + 6).map(slow)).await;
    let accepted = accepted_from_pg(&m).await;
    assert!(
        accepted > KEEP as f64,
        "the burst used {accepted} connections"
    );
    // Quiet now: the client proxy closes its idle mesh connections beyond KEEP.
    let open = || async {
        let server = metrics(m.server.admin_addr).await;
        let labels = ["direction=\"inbound\"", &format!("client_id=\"{PG_ID}\"")];
        sum(&server, "tcp_open_connections", &labels)
    };
    // (Scraping is activity too, and both proxies share this process: look only now and then.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open().await > KEEP as f64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(open().await, KEEP as f64);
    // The warm ones still carry traffic, without a new handshake.
    let mut conn = http1_client(addr).await;
    let (status, _, _) = get(&mut conn, "web.bank", "/whoami/after").await;
    assert_eq!(status, 200);
    assert_eq!(accepted_from_pg(&m).await, accepted);
}

#[tokio::test]
async fn idle_mesh_connections_outlive_the_header_read_timeout() {
    // hyper's header read timeout also closes a connection waiting for its next request; between
    // proxies the pool reuses idle connections for up to a minute, so the serving side waits at
    // least that long (else a request could go out on a connection being closed).
    let m = mesh_with("http1", "1s").await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    let (status, _, _) = get(&mut conn, "web.bank", "/whoami/first").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, _) = get(&mut conn, "web.bank", "/whoami/second").await;
    assert_eq!(status, 200);
    assert_eq!(
        accepted_from_pg(&m).await,
        1.0,
        "the idle connection was reused"
    );
}

#[tokio::test]
async fn every_spelling_of_a_host_reaches_its_service() {
    // Targets are cached by the host as written: each spelling must still resolve like the
    // canonical one (case, default port, trailing dot), and a bad one must not be cached as good.
    let m = mesh().await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    for host in [
        "web.bank",
        "WEB.Bank",
        "web.bank:80",
        "web.bank.",
        "web.bank",
    ] {
        let (status, _, body) = get(&mut conn, host, "/whoami/spelled").await;
        assert_eq!(status, 200, "host {host}");
        let expected = format!("version=HTTP/1.1 client={PG_ID} path=/whoami/spelled");
        assert_eq!(body, Bytes::from(expected), "host {host}");
    }
    let mut conn = http1_client(m.client.outbound_addr).await;
    let (status, _, _) = get(&mut conn, "web.bank:99999", "/").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn idle_app_connections_are_not_reused_past_the_app_idle_timeout() {
    // Apps close idle keep-alive connections (Node.js, uvicorn: after 5 s); the inbound must
    // have stopped reusing one before that, or a request could go out as the app closes it.
    use onemesh_proxy::inbound::APP_IDLE_TIMEOUT;
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (app, accepted) = counted_http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(
            json!({ "services": [ { "name": "web", "namespace": "bank", "port": 80,
            "endpoints": [endpoint(&server, app, "bank", "http")] } ] }),
        )
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    for _ in 0..2 {
        let (status, _, _) = get(&mut conn, "web.bank", "/whoami/x").await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "kept alive while in use"
    );
    tokio::time::sleep(APP_IDLE_TIMEOUT + Duration::from_millis(300)).await;
    let (status, _, _) = get(&mut conn, "web.bank", "/whoami/y").await;
    assert_eq!(status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a fresh connection after the timeout"
    );
}

#[tokio::test]
async fn the_app_never_sees_the_meshs_own_headers_from_outside() {
    // A caller cannot claim an identity, and an egress id from outside cannot reach the app
    // (passed on, it would make the app's own outbound refuse a request as a loop).
    let m = mesh().await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    let spoofed = [
        (
            "onemesh-client-id",
            "spiffe://cluster.local/ns/bank/sa/admin",
        ),
        ("onemesh-egress-id", "0123456789abcdef"),
    ];
    let (status, _, body) =
        get_with(&mut conn, "web.bank", "/header/onemesh-client-id", &spoofed).await;
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from(PG_ID));
    let (status, _, body) =
        get_with(&mut conn, "web.bank", "/header/onemesh-egress-id", &spoofed).await;
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from("none"));
}

#[tokio::test]
async fn chunked_upload_and_streaming_download() {
    let m = mesh().await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    // 10 MB upload without a content-length (chunked), echoed back
    let chunk = Bytes::from((0..65536u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let n_chunks = 10 * 1024 * 1024 / chunk.len();
    let body = echo_upload(&mut conn, chunk.clone(), n_chunks).await;
    assert_eq!(body.len(), n_chunks * chunk.len());
    assert!(body.chunks(chunk.len()).all(|c| c == &chunk[..]));

    // streaming download on the same connection
    let (status, _, body) = get(&mut conn, "web.bank", "/download?n=5000000").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 5_000_000);
    assert!(body.iter().all(|b| *b == b'x'));
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let m = mesh().await;
    let tcp = TcpStream::connect(m.client.outbound_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<Bytes>,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://h2.bank/h2")
            .body(http_body_util::Empty::new())
            .unwrap();
        let rsp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("version=HTTP/2.0 client={PG_ID} path=/h2"));
    }
}

#[tokio::test]
async fn grpc_unary_and_server_streaming() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let m = mesh().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", m.client.outbound_addr))
            .unwrap()
            .origin("http://grpc.bank:80".parse().unwrap())
            .connect_timeout(Duration::from_secs(5))
            .timeout(TIMEOUT)
            .connect()
            .await
            .unwrap();
    let mut client = HealthClient::new(channel);
    let rsp = client
        .check(HealthCheckRequest {
            service: "bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rsp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let missing = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let mut stream = client
        .watch(HealthCheckRequest {
            service: "bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let server = metrics(m.server.admin_addr).await;
    assert!(
        sum(
            &server,
            "request_total",
            &["direction=\"inbound\"", &format!("client_id=\"{PG_ID}\"")]
        ) >= 3.0
    );
}

#[tokio::test]
async fn websocket_echo() {
    let m = mesh().await;
    let tcp = TcpStream::connect(m.client.outbound_addr).await.unwrap();
    let (mut ws, rsp) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::client_async("ws://ws.bank/chat", tcp),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rsp.status(), 101);
    for i in 0..5 {
        let msg = tokio_tungstenite::tungstenite::Message::text(format!("hello {i}"));
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    let big = tokio_tungstenite::tungstenite::Message::binary(vec![7u8; 200_000]);
    ws.send(big.clone()).await.unwrap();
    let back = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, big);
    ws.close(None).await.unwrap();
    let server = metrics(m.server.admin_addr).await;
    assert_eq!(
        sum(
            &server,
            "request_total",
            &["direction=\"inbound\"", &format!("client_id=\"{PG_ID}\"")]
        ),
        1.0
    );
}

#[tokio::test]
async fn opaque_server_speaks_first() {
    let m = mesh().await;
    let (_, forward) = m.client.tcp_forward_addrs[0].clone();
    let mut tcp = TcpStream::connect(forward).await.unwrap();
    let mut banner = [0u8; 6];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"HELLO\n");
    let payload = vec![42u8; 100_000];
    tcp.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    drop(tcp);
    // the server side counted the bytes, labelled with the caller's identity
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let server = metrics(m.server.admin_addr).await;
        let client_label = format!("client_id=\"{PG_ID}\"");
        let read = sum(
            &server,
            "tcp_read_bytes_total",
            &["direction=\"inbound\"", &client_label],
        );
        let closed = sum(
            &server,
            "tcp_close_total",
            &["direction=\"inbound\"", &client_label],
        );
        if closed >= 1.0 {
            assert!(read >= payload.len() as f64, "read {read}");
            let written = sum(
                &server,
                "tcp_write_bytes_total",
                &["direction=\"inbound\"", &client_label],
            );
            assert!(written >= (payload.len() + 6) as f64, "written {written}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inbound tcp connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = metrics(m.client.admin_addr).await;
    assert_eq!(
        sum(
            &client,
            "tcp_open_total",
            &[
                "direction=\"outbound\"",
                &format!("server_id=\"{BANK_ID}\"")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn http1_trailers_cross_both_proxies() {
    let m = mesh().await;
    let mut conn = http1_client(m.client.outbound_addr).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"trailers"))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let req = Request::post("/echo")
        .header("host", "web.bank")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap();
    conn.ready().await.unwrap();
    let rsp = tokio::time::timeout(TIMEOUT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = tokio::time::timeout(TIMEOUT, rsp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let got_trailers = collected.trailers().cloned();
    assert_eq!(&collected.to_bytes()[..], b"hello trailers");
    assert_eq!(
        got_trailers.as_ref().and_then(|t| t.get("x-checksum")),
        trailers.get("x-checksum")
    );
}
