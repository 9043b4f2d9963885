//! A few thousand random and malformed inputs against a running proxy's outbound and inbound
//! listeners: it stays up, keeps serving real traffic, and answers `/live`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: web.bank\r\n",
    b"POST /echo HTTP/1.1\r\nHost: web.bank\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: web.bank\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web.bank\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"OMSH\x01\x00\x1f\x90\x00\x03a:1",
    b"",
];

fn input(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v = SEEDS[rng.usize(..SEEDS.len())].to_vec();
    let n = rng.usize(..600);
    match rng.u8(..4) {
        0 => v.extend((0..n).map(|_| rng.u8(..))),
        1 => v.extend((0..n).map(|_| b"\r\n: /HTTP1.0GETabc\x00\xff"[rng.usize(..19)])),
        2 => {
            // flip bytes of the seed
            for _ in 0..rng.usize(..4) {
                if !v.is_empty() {
                    let i = rng.usize(..v.len());
                    v[i] = rng.u8(..);
                }
            }
        }
        _ => v.truncate(rng.usize(..=v.len())),
    }
    v
}

async fn throw(addr: SocketAddr, bytes: Vec<u8>) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = tcp.write_all(&bytes).await;
    let _ = tcp.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_thousands_of_malformed_inputs() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let client = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [ { "name": "web", "namespace": "bank",
            "endpoints": [ endpoint(&server, app, "bank", "http") ] } ] }))
        .start()
        .await;
    let mut rng = fastrand::Rng::with_seed(0x0e3e5);
    let targets = [client.outbound_addr, server.inbound_addr];
    let total = 3000;
    for batch in 0..total / 100 {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let addr = targets[(batch * 100 + i) % 2];
            tasks.push(tokio::spawn(throw(addr, input(&mut rng))));
        }
        for t in tasks {
            tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap();
        }
    }
    // still serving
    let mut conn = http1_client(client.outbound_addr).await;
    let (status, _, body) = get(&mut conn, "web.bank", "/after").await;
    assert_eq!(status, 200);
    assert!(body.ends_with(b"path=/after"));
    for p in [&client, &server] {
        let m = metrics(p.admin_addr).await;
        assert!(m.contains("request_total"));
    }
}
