//! Audit mode and the explain endpoint through a real inbound: a caller denied by an audit-only
//! policy reaches the app and is counted as `would_deny`; a 403 names the `onemesh authz explain`
//! command; `POST /authz/explain` on the control-only admin listener is refused to anyone but the
//! control plane, explains bad bodies with a 400, and agrees with what the inbound really does
//! for allow, deny by policy, deny by route, deny by default, would_deny, an ambiguous path and an
//! opaque connection.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use onemesh_identity::SpiffeId;
use onemesh_proxy::Proxy;
use onemesh_proxy::transport_header::Protocol;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;

const CONTROL: &str = "spiffe://cluster.local/ns/onemesh/sa/control";

struct Card {
    pki: Pki,
    proxy: Proxy,
    /// Guarded by `card-allow-pg` (enforce: pg, POST /v1/).
    guarded: u16,
    /// Guarded by `ops-audit` (audit: namespace ops).
    audited: u16,
    /// No policy: the default (same namespace).
    open: u16,
}

async fn card() -> Card {
    let pki = Pki::new();
    let (guarded, audited, open) = (http1_app().await, http1_app().await, http1_app().await);
    let proxy = ProxyBuilder::new(&pki, "card")
        .env("ONEMESH_PROXY_CONTROL_ADMIN_ADDR", "127.0.0.1:0")
        .env("ONEMESH_PROXY_CONTROL_ID", CONTROL)
        .static_config(json!({ "inbound": {
            "ports": [guarded, audited, open],
            "authorizations": [
                { "name": "card-allow-pg", "ports": [guarded],
                  "routes": [ { "methods": ["POST"], "path_prefix": "/v1/" } ],
                  "identities": [id("pg").to_string()] },
                { "name": "ops-audit", "ports": [audited], "mode": "audit",
                  "namespaces": ["ops"] },
            ] } }))
        .start()
        .await;
    Card {
        pki,
        proxy,
        guarded,
        audited,
        open,
    }
}

fn alpn() -> [&'static [u8]; 1] {
    [onemesh_proxy::client::ALPN]
}

/// What the inbound did: the status of the app's or the proxy's answer and the body, or `None`
/// when the connection was closed without an answer (an opaque denial).
async fn call(
    c: &Card,
    caller: &str,
    port: u16,
    request: Option<(&str, &str)>,
) -> Option<(u16, String)> {
    let config = c
        .pki
        .credentials(&id(caller))
        .client_config(&id("card"), &alpn());
    let (protocol, bytes) = match request {
        Some((method, path)) => (
            Protocol::Http1,
            format!("{method} {path} HTTP/1.1\r\nHost: card\r\nConnection: close\r\n\r\n"),
        ),
        None => (
            Protocol::Opaque,
            "GET /opaque HTTP/1.1\r\nHost: card\r\nConnection: close\r\n\r\n".to_string(),
        ),
    };
    let text = raw_mtls(
        config,
        c.proxy.inbound_addr,
        protocol,
        port,
        bytes.as_bytes(),
    )
    .await
    .unwrap_or_default();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// `POST /authz/explain` with `body`, as `peer`.
async fn explain(
    pki: &Pki,
    peer: &SpiffeId,
    addr: SocketAddr,
    body: impl Into<Bytes>,
) -> (u16, Value) {
    let config: Arc<rustls::ClientConfig> = pki
        .credentials(peer)
        .client_config(&id("card"), &[b"http/1.1"]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("proxy").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/authz/explain")
        .header("host", "proxy")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let rsp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = rsp.status().as_u16();
    let text = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&text).unwrap())
}

/// caller, port, request, expected decision, expected policy.
type Case<'a> = (&'a str, u16, Option<(&'a str, &'a str)>, &'a str, &'a str);

fn control() -> SpiffeId {
    CONTROL.parse().unwrap()
}

fn question(caller: &str, port: u16, request: Option<(&str, &str)>) -> String {
    json!({
        "caller": id(caller).to_string(),
        "port": port,
        "method": request.map(|r| r.0),
        "path": request.map(|r| r.1),
    })
    .to_string()
}

#[tokio::test]
async fn audit_mode_lets_a_denied_caller_through_and_counts_it() {
    let c = card().await;
    let (status, body) = call(&c, "bank", c.audited, Some(("GET", "/x")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path=/x"), "the app answered: {body}");
    let m = c.proxy.metrics.encode();
    let would = sum(
        &m,
        "authz_would_deny_total",
        &["policy=\"ops-audit\"", "kind=\"http\""],
    );
    assert_eq!(would, 1.0, "{m}");
    assert_eq!(sum(&m, "authz_deny_total", &[]), 0.0, "{m}");
    assert_eq!(sum(&m, "authz_allow_total", &[]), 0.0, "{m}");
    // an opaque connection too
    let (status, _) = call(&c, "bank", c.audited, None).await.unwrap();
    assert_eq!(status, 200);
    let m = c.proxy.metrics.encode();
    assert_eq!(
        sum(&m, "authz_would_deny_total", &["kind=\"tcp\""]),
        1.0,
        "{m}"
    );
    // the enforce policy on another port is not softened by it
    let (status, _) = call(&c, "bank", c.guarded, Some(("POST", "/v1/pay")))
        .await
        .unwrap();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_403_names_the_explain_command() {
    let c = card().await;
    let (status, body) = call(&c, "bank", c.guarded, Some(("POST", "/v1/pay")))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        body.contains(
            "caller spiffe://cluster.local/ns/bank/sa/bank is not allowed by policy card-allow-pg"
        ),
        "{body}"
    );
    let command = format!(
        "onemesh authz explain --from spiffe://cluster.local/ns/bank/sa/bank --to card/card:{} \
         --method POST --path /v1/pay",
        c.guarded
    );
    assert!(body.contains(&command), "{body}");
}

#[tokio::test]
async fn explain_is_for_the_control_plane_only_and_refuses_bad_bodies() {
    let c = card().await;
    let addr = c.proxy.control_admin_addr.unwrap();
    let good = question("pg", c.guarded, Some(("POST", "/v1/pay")));
    // forged: a valid leaf of another workload asks
    let (status, v) = explain(&c.pki, &id("pg"), addr, good.clone()).await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not the control plane"),
        "{v}"
    );
    let (status, v) = explain(&c.pki, &control(), addr, good).await;
    assert_eq!(
        (status, v["decision"].as_str()),
        (200, Some("allow")),
        "{v}"
    );
    for (body, says) in [
        ("{not json".to_string(), "not an explain request"),
        (
            r#"{"caller": "pg", "port": 1}"#.to_string(),
            "not a SPIFFE id",
        ),
        (
            format!(r#"{{"port": 1, "path": "{}"}}"#, "a".repeat(20_000)),
            "larger than 16384 bytes",
        ),
    ] {
        let (status, v) = explain(&c.pki, &control(), addr, body).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
}

#[tokio::test]
async fn explain_agrees_with_what_the_inbound_does() {
    let c = card().await;
    let addr = c.proxy.control_admin_addr.unwrap();
    let cases: [Case; 8] = [
        (
            "pg",
            c.guarded,
            Some(("POST", "/v1/pay")),
            "allow",
            "card-allow-pg",
        ),
        (
            "bank",
            c.guarded,
            Some(("POST", "/v1/pay")),
            "deny",
            "card-allow-pg",
        ),
        (
            "pg",
            c.guarded,
            Some(("GET", "/v1/pay")),
            "deny",
            "card-allow-pg",
        ),
        (
            "pg",
            c.open,
            Some(("GET", "/")),
            "deny",
            "default:same-namespace",
        ),
        (
            "card",
            c.open,
            Some(("GET", "/")),
            "allow",
            "default:same-namespace",
        ),
        (
            "bank",
            c.audited,
            Some(("GET", "/")),
            "would_deny",
            "ops-audit",
        ),
        (
            "pg",
            c.guarded,
            Some(("POST", "/v1/%2e%2e/admin")),
            "deny",
            "",
        ),
        ("pg", c.guarded, None, "deny", "card-allow-pg"),
    ];
    for (caller, port, request, decision, policy) in cases {
        let (status, v) = explain(&c.pki, &control(), addr, question(caller, port, request)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["decision"], decision, "{caller} {request:?}: {v}");
        assert_eq!(v["policy"], policy, "{caller} {request:?}: {v}");
        let real = call(&c, caller, port, request).await;
        let reached_app = real.as_ref().is_some_and(|(s, _)| *s == 200);
        assert_eq!(
            reached_app,
            decision != "deny",
            "{caller} {request:?}: explain said {decision}, the inbound answered {real:?}"
        );
    }
    // the detail of an ambiguous path and of an undeclared port
    let q = question("pg", c.guarded, Some(("POST", "/v1/%2e%2e/admin")));
    let (_, v) = explain(&c.pki, &control(), addr, q).await;
    assert_eq!(v["path"]["ok"], false, "{v}");
    let q = json!({"caller": null, "port": 1, "method": null, "path": null}).to_string();
    let (_, v) = explain(&c.pki, &control(), addr, q).await;
    assert_eq!(
        v["port"],
        json!({"declared": false, "refusal": "undeclared_port"}),
        "{v}"
    );
    assert_eq!(v["policies"].as_array().unwrap().len(), 2, "{v}");
}

#[tokio::test]
async fn the_inbound_enters_each_decision_in_the_decision_log() {
    let pki = Pki::new();
    let app = http1_app().await;
    let proxy = ProxyBuilder::new(&pki, "card")
        .env("ONEMESH_PROXY_AUDIT", "on")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let c = Card {
        pki,
        proxy,
        guarded: app,
        audited: app,
        open: app,
    };
    for _ in 0..3 {
        let (status, _) = call(&c, "pg", app, Some(("GET", "/ok"))).await.unwrap();
        assert_eq!(status, 200);
    }
    let (status, _) = call(&c, "bank", app, Some(("GET", "/no"))).await.unwrap();
    assert_eq!(status, 403);
    let m = c.proxy.metrics.encode();
    assert_eq!(
        sum(&m, "audit_decisions_total", &["outcome=\"individual\""]),
        1.0,
        "{m}"
    );
    // allowed decisions are counted by the shipping task's next collection (every second), the
    // denial is shipped (static mode: to stdout) with it
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let m = c.proxy.metrics.encode();
        let aggregated = sum(&m, "audit_decisions_total", &["outcome=\"aggregated\""]);
        let shipped = sum(&m, "audit_shipped_records_total", &[]);
        if aggregated == 3.0 && shipped == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
