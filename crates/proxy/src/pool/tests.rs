//! Unit tests of the HTTP/1.1 pool against a small real server that counts its connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::body;

/// A server answering `/close` with `connection: close` and anything else with its path;
/// returns its address and the count of connections it accepted.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut rsp =
                        Response::new(Full::new(Bytes::from(req.uri().path().to_owned())));
                    if req.uri().path() == "/close" {
                        rsp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(rsp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn get(pool: &Http1Pool<SocketAddr>, addr: SocketAddr, path: &str) -> String {
    let req = Request::builder()
        .uri(path)
        .header(http::header::HOST, "app")
        .body(body::empty())
        .unwrap();
    let dial = || async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        handshake(tcp, "the test server").await
    };
    let rsp = pool.send(addr, req, dial).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    for i in 0..5 {
        assert_eq!(get(&pool, addr, &format!("/{i}")).await, format!("/{i}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_then_reuse_them() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    let both = tokio::join!(get(&pool, addr, "/a"), get(&pool, addr, "/b"));
    assert_eq!(both, ("/a".to_string(), "/b".to_string()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let both = tokio::join!(get(&pool, addr, "/c"), get(&pool, addr, "/d"));
    assert_eq!(both, ("/c".to_string(), "/d".to_string()));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the two idle connections were reused"
    );
}

#[tokio::test]
async fn a_connection_the_server_closes_is_replaced() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    assert_eq!(get(&pool, addr, "/close").await, "/close");
    // The closed connection may still sit in the pool for a moment: the next request must not
    // fail because of it.
    assert_eq!(get(&pool, addr, "/after").await, "/after");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_response_dropped_unread_does_not_return_its_connection() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    let req = Request::builder()
        .uri("/dropped")
        .header(http::header::HOST, "app")
        .body(body::empty())
        .unwrap();
    let dial = || async move { handshake(TcpStream::connect(addr).await.unwrap(), "test").await };
    let rsp = pool.send(addr, req, dial).await.unwrap();
    drop(rsp);
    assert_eq!(get(&pool, addr, "/next").await, "/next");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn shrinking_keeps_the_most_recent_idle_connections() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    let _ = tokio::join!(
        get(&pool, addr, "/1"),
        get(&pool, addr, "/2"),
        get(&pool, addr, "/3")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    pool.shrink_idle(1);
    let _ = tokio::join!(get(&pool, addr, "/4"), get(&pool, addr, "/5"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "one kept connection plus one new one"
    );
}

#[tokio::test]
async fn a_burst_dials_a_few_connections_and_shares_them() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::new(Duration::from_secs(1));
    let burst = (0..40).map(|i| {
        let pool = pool.clone();
        async move { get(&pool, addr, &format!("/{i}")).await }
    });
    let answers = futures_util::future::join_all(burst).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(*a, format!("/{i}"));
    }
    let dialled = accepted.load(Ordering::SeqCst);
    assert!(
        (1..40).contains(&dialled),
        "40 requests at once dialled {dialled} connections; the dial limit should share them"
    );
}

#[tokio::test]
async fn prune_closes_connections_idle_past_their_timeout() {
    let (addr, accepted) = server().await;
    let pool = Http1Pool::with_idle_timeout(Duration::from_secs(1), Duration::from_millis(50));
    assert_eq!(get(&pool, addr, "/1").await, "/1");
    assert_eq!(pool.prune(), 0, "a fresh idle connection stays");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(pool.prune(), 1);
    assert_eq!(get(&pool, addr, "/2").await, "/2");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the pruned connection was not reused"
    );
}
