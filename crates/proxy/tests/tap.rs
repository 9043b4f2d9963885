//! The control-only admin listener and tap: only the control plane's identity gets a tap (another
//! workload's valid certificate gets 403, the control id from another CA or no certificate fails
//! the handshake, each counted); the right one streams masked events of both directions (no card
//! number from the authority, path, query or a header, no `x-merchant-key` value); a rate limit
//! drops events and reports them; a tap that is never read does not slow requests; at most 8 taps.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use onemesh_identity::SpiffeId;
use onemesh_proxy::Proxy;
use serde_json::json;
use support::*;
use tokio::net::TcpStream;

const CONTROL: &str = "spiffe://cluster.local/ns/onemesh/sa/control";
const CARD: &str = "4111111111111111";

fn control_id() -> SpiffeId {
    CONTROL.parse().unwrap()
}

struct Mesh {
    pki: Pki,
    card: Proxy,
    pg: Proxy,
}

/// `pg` calls `card` (also as `c4111111111111111.card`, a card number in the authority); both
/// serve the control-only admin listener to [`CONTROL`].
async fn mesh() -> Mesh {
    let pki = Pki::new();
    let app = http1_app().await;
    let card = ProxyBuilder::new(&pki, "card")
        .env("ONEMESH_PROXY_CONTROL_ADMIN_ADDR", "127.0.0.1:0")
        .env("ONEMESH_PROXY_CONTROL_ID", CONTROL)
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let svc = |name: &str| {
        json!({ "name": name, "namespace": "card", "port": 80,
                "endpoints": [endpoint(&card, app, "card", "http")] })
    };
    let pg = ProxyBuilder::new(&pki, "pg")
        .env("ONEMESH_PROXY_CONTROL_ADMIN_ADDR", "127.0.0.1:0")
        .env("ONEMESH_PROXY_CONTROL_ID", CONTROL)
        .static_config(json!({ "services": [svc("card"), svc(&format!("c{CARD}"))] }))
        .start()
        .await;
    Mesh { pki, card, pg }
}

/// A client config presenting a leaf for `id` issued by `pki`, expecting the server `server`.
fn client_config(pki: &Pki, id: &SpiffeId, server: &str) -> Arc<rustls::ClientConfig> {
    pki.credentials(id)
        .client_config(&support::id(server), &[b"http/1.1"])
}

/// Opens `GET <path>` on a control-only admin listener: the response, or the error when the
/// handshake (or the request) fails.
async fn open(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("proxy").unwrap();
    let tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "proxy")
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())
}

/// Reads a tap body line by line.
struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    fn new(rsp: http::Response<hyper::body::Incoming>) -> Self {
        Self {
            body: rsp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next line, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?
                .expect("the tap stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

async fn body_text(rsp: http::Response<hyper::body::Incoming>) -> String {
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn refused(m: &Proxy, reason: &str) -> f64 {
    m.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("control_admin_refused_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn only_the_control_plane_identity_gets_a_tap() {
    let m = mesh().await;
    let addr = m
        .card
        .control_admin_addr
        .expect("control admin listener on");

    // another workload's valid leaf: verified, then refused with 403
    let pg = client_config(&m.pki, &id("pg"), "card");
    let rsp = open(pg, addr, "/tap").await.unwrap();
    assert_eq!(rsp.status(), 403);
    let text = body_text(rsp).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not the control plane"),
        "{text}"
    );
    assert_eq!(refused(&m.card, "not_control_plane"), 1.0);

    // the control plane's id, minted by another CA: the handshake fails
    let other = Pki::new();
    let forged = other
        .credentials(&control_id())
        .client_config(&id("card"), &[b"http/1.1"]);
    let failed = open(forged, addr, "/tap").await;
    assert!(failed.is_err(), "{:?}", failed.map(|r| r.status()));

    // no client certificate: the handshake fails
    let failed = open(no_cert_client_config(), addr, "/tap").await;
    assert!(failed.is_err(), "{:?}", failed.map(|r| r.status()));
    // both counted (by their handshake failure reason)
    let handshake_refusals: f64 = m
        .card
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("control_admin_refused_total{"))
        .filter(|l| !l.contains("not_control_plane"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(handshake_refusals, 2.0, "{}", m.card.metrics.encode());
    assert_eq!(m.card.tap.taps(), 0);

    // the control plane: a stream
    let control = client_config(&m.pki, &control_id(), "card");
    let rsp = open(control.clone(), addr, "/tap").await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(m.card.tap.taps(), 1);
    drop(rsp);

    // errors before streaming are JSON
    for (path, status) in [
        ("/tap?direction=sideways", 400),
        ("/tap?bogus=1", 400),
        ("/other", 404),
    ] {
        let rsp = open(control.clone(), addr, path).await.unwrap();
        assert_eq!(rsp.status(), status, "{path}");
        let text = body_text(rsp).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].is_string(), "{text}");
    }
}

#[tokio::test]
async fn events_of_both_directions_are_masked_on_the_wire() {
    let m = mesh().await;
    let control = client_config(&m.pki, &control_id(), "card");
    let inbound = open(
        control,
        m.card.control_admin_addr.unwrap(),
        "/tap?direction=inbound",
    )
    .await
    .unwrap();
    assert_eq!(inbound.status(), 200);
    let mut inbound = Lines::new(inbound);
    let control = client_config(&m.pki, &control_id(), "pg");
    let outbound = open(
        control,
        m.pg.control_admin_addr.unwrap(),
        "/tap?to=card/card",
    )
    .await
    .unwrap();
    let mut outbound = Lines::new(outbound);

    let mut conn = http1_client(m.pg.outbound_addr).await;
    let path = format!("/v1/pay/{CARD}?card=4111-1111-1111-1111&pan=4111%201111%201111%201111");
    let (status, _, body) = get_with(
        &mut conn,
        &format!("c{CARD}.card"),
        &path,
        &[
            ("x-merchant-key", "mk_live_SECRET"),
            ("authorization", "Bearer SECRET"),
            ("x-card", "5555 5555 5555 4444"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    // the app got the real path: masking is for the event only
    assert!(String::from_utf8_lossy(&body).contains(CARD));

    let mut lines = Vec::new();
    for (tap, direction) in [(&mut inbound, "inbound"), (&mut outbound, "outbound")] {
        let line = tap.next(TIMEOUT).await.expect("an event");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["direction"], direction, "{line}");
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["tls"], true);
        assert_eq!(v["authority"], "c************1111.card", "{line}");
        assert_eq!(
            v["path"],
            "/v1/pay/************1111?card=****-****-****-1111&pan=****%20****%20****%201111",
            "{line}"
        );
        assert_eq!(v["headers"]["x-merchant-key"], "[masked]");
        assert_eq!(v["headers"]["authorization"], "[masked]");
        assert_eq!(v["headers"]["x-card"], "**** **** **** 4444");
        assert_eq!(v["headers"]["content-type"], "application/json");
        assert_eq!(v["source"]["id"], id("pg").to_string(), "{line}");
        assert_eq!(v["source"]["workload"], "pg");
        assert_eq!(v["destination"]["id"], id("card").to_string(), "{line}");
        assert_eq!(v["destination"]["namespace"], "card");
        assert_eq!(v["destination"]["workload"], "card");
        assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
        lines.push(line);
    }
    for line in &lines {
        for secret in [
            "41111111",
            "4111-1111-1111",
            "4111%201111",
            "SECRET",
            "5555 5555",
        ] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }
}

#[tokio::test]
async fn the_rate_limit_drops_and_reports() {
    let m = mesh().await;
    let control = client_config(&m.pki, &control_id(), "card");
    let rsp = open(
        control,
        m.card.control_admin_addr.unwrap(),
        "/tap?max_rps=2",
    )
    .await
    .unwrap();
    let mut tap = Lines::new(rsp);
    let mut conn = http1_client(m.pg.outbound_addr).await;
    for i in 0..20 {
        let (status, _, _) = get(&mut conn, "card.card", &format!("/r/{i}")).await;
        assert_eq!(status, 200);
    }
    let mut events = 0;
    let mut dropped = 0;
    while events + dropped < 20 {
        let Some(line) = tap.next(Duration::from_secs(5)).await else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v.get("dropped") {
            Some(n) => dropped += n.as_u64().unwrap(),
            None => events += 1,
        }
    }
    assert!(
        (2..=3).contains(&events),
        "{events} events, {dropped} dropped"
    );
    assert_eq!(events + dropped, 20);
}

#[tokio::test]
async fn a_tap_that_is_never_read_does_not_slow_requests() {
    let m = mesh().await;
    // nine taps: the ninth is refused
    let mut taps = Vec::new();
    for _ in 0..8 {
        let control = client_config(&m.pki, &control_id(), "card");
        let rsp = open(
            control,
            m.card.control_admin_addr.unwrap(),
            "/tap?max_rps=1000",
        )
        .await
        .unwrap();
        assert_eq!(rsp.status(), 200);
        taps.push(rsp);
    }
    let control = client_config(&m.pki, &control_id(), "card");
    let rsp = open(control, m.card.control_admin_addr.unwrap(), "/tap")
        .await
        .unwrap();
    assert_eq!(rsp.status(), 429);
    assert!(body_text(rsp).await.contains("already serves 8 taps"));

    // big events (32 headers of 256 bytes) that nobody reads: far more than the queue and the
    // sockets' buffers hold
    let value = "v".repeat(300);
    let names: Vec<String> = (0..32).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let mut conn = http1_client(m.pg.outbound_addr).await;
    let started = std::time::Instant::now();
    for i in 0..1500 {
        let (status, _, _) = get_with(&mut conn, "card.card", &format!("/n/{i}"), &headers).await;
        assert_eq!(status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(m.card.tap.taps(), 8);
    // the reader that comes back learns how many it lost
    let mut tap = Lines::new(taps.pop().unwrap());
    let mut dropped = 0;
    while let Some(line) = tap.next(Duration::from_secs(3)).await {
        if let Some(n) = serde_json::from_str::<serde_json::Value>(&line)
            .unwrap()
            .get("dropped")
        {
            dropped += n.as_u64().unwrap();
        }
    }
    assert!(dropped > 0, "nothing was dropped");
    drop(tap);
    drop(taps);
}
