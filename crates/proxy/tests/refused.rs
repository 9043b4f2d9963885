//! Callers the inbound proxy must refuse: no mesh certificate, an expired one, one from another
//! trust anchor (TLS alert, counted by reason in `tls_handshake_failure_total`), an identity the
//! policy does not allow (403 `forbidden` naming caller and policy, counted in
//! `authz_deny_total`), and a plain connection that was not redirected (closed, counted).

mod support;

use std::time::{Duration, SystemTime};

use onemesh_identity::{CredentialStore, WorkloadKey};
use onemesh_proxy::Proxy;
use serde_json::json;
use support::*;
use tokio::io::AsyncReadExt;

struct Server {
    pki: Pki,
    proxy: Proxy,
    app: u16,
}

async fn server() -> Server {
    let pki = Pki::new();
    let app = http1_app().await;
    let proxy = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    Server { pki, proxy, app }
}

async fn handshake_failures(admin: std::net::SocketAddr, reason: &str) -> f64 {
    // The server records the failure as soon as its side of the handshake ends; poll briefly.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let m = metrics(admin).await;
        let n = sum(
            &m,
            "tls_handshake_failure_total",
            &["direction=\"inbound\"", &format!("reason=\"{reason}\"")],
        );
        if n > 0.0 || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alpn() -> [&'static [u8]; 1] {
    [onemesh_proxy::client::ALPN]
}

#[tokio::test]
async fn allowed_client_gets_through() {
    // The control case for the refusals below: same raw client, valid certificate.
    let s = server().await;
    let store = s.pki.credentials(&id("pg"));
    let rsp = raw_mtls_get(
        store.client_config(&id("bank"), &alpn()),
        s.proxy.inbound_addr,
        s.app,
    )
    .await
    .unwrap();
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(
        rsp.contains("client=spiffe://cluster.local/ns/pg/sa/pg"),
        "{rsp}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let s = server().await;
    let rsp = raw_mtls_get(no_cert_client_config(), s.proxy.inbound_addr, s.app).await;
    assert!(
        !rsp.as_deref().unwrap_or("").contains("HTTP/1.1"),
        "{rsp:?}"
    );
    assert_eq!(
        handshake_failures(s.proxy.admin_addr, "no_client_cert").await,
        1.0
    );
}

#[tokio::test]
async fn client_with_expired_certificate_is_refused() {
    let s = server().await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("pg")).unwrap();
    let now = SystemTime::now();
    let issued = s
        .pki
        .issuer
        .sign_csr_with_validity(
            &csr,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
            |_| true,
        )
        .unwrap();
    let store = CredentialStore::new(id("pg"), key, issued, s.pki.bundle()).unwrap();
    let rsp = raw_mtls_get(
        store.client_config(&id("bank"), &alpn()),
        s.proxy.inbound_addr,
        s.app,
    )
    .await;
    assert!(
        !rsp.as_deref().unwrap_or("").contains("HTTP/1.1"),
        "{rsp:?}"
    );
    assert_eq!(handshake_failures(s.proxy.admin_addr, "expired").await, 1.0);
}

#[tokio::test]
async fn client_from_another_trust_anchor_is_refused() {
    let s = server().await;
    let other = Pki::new();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id("pg")).unwrap();
    let issued = other
        .issuer
        .sign_csr(&csr, Duration::from_secs(3600), |_| true)
        .unwrap();
    // The client trusts both roots (so it accepts the server); the server trusts only its own.
    let bundle = other.bundle().merge(&s.pki.bundle());
    let store = CredentialStore::new(id("pg"), key, issued, bundle).unwrap();
    let rsp = raw_mtls_get(
        store.client_config(&id("bank"), &alpn()),
        s.proxy.inbound_addr,
        s.app,
    )
    .await;
    assert!(
        !rsp.as_deref().unwrap_or("").contains("HTTP/1.1"),
        "{rsp:?}"
    );
    assert_eq!(
        handshake_failures(s.proxy.admin_addr, "unknown_issuer").await,
        1.0
    );
}

#[tokio::test]
async fn identity_not_allowed_by_policy_gets_403_through_its_proxy() {
    let s = server().await;
    let client = ProxyBuilder::new(&s.pki, "order")
        .static_config(json!({ "services": [ { "name": "web", "namespace": "bank",
            "endpoints": [ endpoint(&s.proxy, s.app, "bank", "http") ] } ] }))
        .start()
        .await;
    let mut conn = http1_client(client.outbound_addr).await;
    let (status, headers, body) = get(&mut conn, "web.bank", "/secret").await;
    assert_eq!(status, 403);
    assert_eq!(headers["onemesh-error"], "forbidden");
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains("spiffe://cluster.local/ns/order/sa/order"),
        "{body}"
    );
    assert!(body.contains("allow-test"), "{body}");

    let m = metrics(s.proxy.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "authz_deny_total",
            &[
                "client_id=\"spiffe://cluster.local/ns/order/sa/order\"",
                "policy=\"allow-test\"",
                "kind=\"http\"",
            ]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "response_total",
            &["direction=\"inbound\"", "status_code=\"403\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "proxy_error_total",
            &["direction=\"inbound\"", "reason=\"forbidden\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn plain_connection_without_original_destination_is_closed() {
    let s = server().await;
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.inbound_addr)
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    let m = metrics(s.proxy.admin_addr).await;
    assert_eq!(
        sum(
            &m,
            "proxy_error_total",
            &["direction=\"inbound\"", "reason=\"no_original_dst\""]
        ),
        1.0
    );
}
