//! Whole-behaviour tests of the benchmark backend: it binds port 0, answers HTTP/1.1 keep-alive
//! and HTTP/2 requests with exactly the configured body, and drains uploads.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use onemesh_bench::backend::{BODY_BYTE, Backend};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn start(body_bytes: usize) -> std::net::SocketAddr {
    let backend = Backend::bind("127.0.0.1:0".parse().unwrap(), body_bytes)
        .await
        .unwrap();
    let addr = backend.local_addr();
    assert_ne!(addr.port(), 0, "port 0 must become a real port");
    tokio::spawn(backend.serve());
    addr
}

#[tokio::test]
async fn http1_keep_alive_returns_the_fixed_body_every_time() {
    tokio::time::timeout(LIMIT, async {
        let addr = start(1024).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        // Three requests on one connection: keep-alive works and the body never changes.
        for i in 0..3 {
            let upload = Bytes::from(vec![b'u'; 100 * i]);
            let req = Request::post("/anything")
                .header("host", "backend.bench")
                .body(Full::new(upload))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 1024);
            assert!(body.iter().all(|b| *b == BODY_BYTE));
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn http2_prior_knowledge_returns_a_64k_body() {
    tokio::time::timeout(LIMIT, async {
        let addr = start(64 * 1024).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://backend.bench/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 64 * 1024);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn binding_a_taken_port_is_a_clear_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Backend::bind(addr, 1).await.err().unwrap();
    assert!(
        err.to_string().contains("could not bind the backend"),
        "{err}"
    );
}
