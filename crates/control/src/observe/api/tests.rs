//! The dashboard/API listener's trust decisions, each fed forged input: the DNS-rebinding guard
//! (`Host`), the token (missing, wrong, forged cookie), login, and the checks on queries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header};
use onemesh_window::{Window, WindowSettings};
use tokio::sync::watch;

use super::super::{Hosts, Shared, Token};
use super::handle;
use crate::pki::{CaSettings, CaState, own_credentials};
use crate::state::MeshState;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn bound() -> SocketAddr {
    "127.0.0.1:8084".parse().unwrap()
}

fn shared(extra: &[&str]) -> Shared {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-observe-api-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CaState::open(&dir, "cluster.local", CaSettings::default()).unwrap();
    let credentials = own_credentials(&ca.current(), Duration::from_secs(3600)).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let (_tx, state) = watch::channel(Arc::new(MeshState::default()));
    let retention = Duration::from_secs(3600);
    Shared {
        window: Arc::new(Mutex::new(
            Window::new(WindowSettings {
                resolution: Duration::from_secs(10),
                retention,
                max_series: 1000,
            })
            .unwrap(),
        )),
        state,
        credentials,
        token: Token::load(&token_file).unwrap(),
        hosts: Hosts::new(bound(), &extra).unwrap(),
        addr: bound(),
        trust_domain: "cluster.local".into(),
        retention,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn send(s: &Shared, req: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, String) {
    let resp = handle(s, req).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str, host: Option<&str>) -> hyper::http::request::Builder {
    let mut req = Request::get(uri);
    if let Some(h) = host {
        req = req.header(header::HOST, h);
    }
    req
}

async fn get_status(s: &Shared, uri: &str, host: Option<&str>) -> (StatusCode, String) {
    let (status, _, body) = send(s, get(uri, host).body(Full::default()).unwrap()).await;
    (status, body)
}

fn authed(uri: &str) -> Request<Full<Bytes>> {
    get(uri, Some("127.0.0.1:8084"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn its_own_names_on_its_port_are_answered() {
    let s = shared(&[]);
    for host in [
        "127.0.0.1:8084",
        "localhost:8084",
        "LOCALHOST:8084",
        "[::1]:8084",
    ] {
        assert_eq!(
            get_status(&s, "/", Some(host)).await.0,
            StatusCode::OK,
            "{host}"
        );
    }
}

#[tokio::test]
async fn a_forged_host_is_refused_on_every_path_before_the_token_is_looked_at() {
    let s = shared(&[]);
    for host in [
        "evil.example:8084",
        "evil.example",
        "localhost:9999",
        "127.0.0.1",
        "10.244.0.14:9999",
        "10.244.0.14",
        "127.0.0.1:8084.evil.example",
        "localhost.:8084",
        "",
        "[::1]x:8084",
    ] {
        for path in [
            "/",
            "/api/v1/overview",
            "/api/v1/tap?workload=a/b",
            "/login",
            "/nope",
        ] {
            let req = get(path, Some(host))
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Full::default())
                .unwrap();
            let (status, _, body) = send(&s, req).await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host} {path}");
            assert!(body.contains("DNS rebinding"), "{body}");
            assert!(body.contains("--dashboard-host"), "{body}");
        }
    }
}

#[tokio::test]
async fn a_request_without_host_or_with_a_forged_authority_is_refused() {
    let s = shared(&[]);
    let (status, body) = get_status(&s, "/", None).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(body.contains("names no Host"), "{body}");
    let (status, _) = get_status(&s, "http://evil.example:8084/", Some("127.0.0.1:8084")).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, _) = get_status(&s, "http://localhost:8084/", Some("localhost:8084")).await;
    assert_eq!(status, StatusCode::OK);
    for pair in [
        ["localhost:8084", "evil.example:8084"],
        ["evil.example:8084", "localhost:8084"],
    ] {
        let mut req = Request::get("/");
        for h in pair {
            req = req.header(header::HOST, h);
        }
        let (status, _, body) = send(&s, req.body(Full::default()).unwrap()).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{pair:?}");
        assert!(body.contains("more than one Host"));
    }
}

#[tokio::test]
async fn names_given_by_the_user_are_answered() {
    let s = shared(&["dash.example", "localhost:9084", "[fd00::1]:80"]);
    for host in [
        "dash.example",
        "dash.example:31000",
        "localhost:9084",
        "[fd00::1]",
    ] {
        assert_eq!(
            get_status(&s, "/", Some(host)).await.0,
            StatusCode::OK,
            "{host}"
        );
    }
    for host in ["localhost:9085", "other.example:9084", "[fd00::1]:81"] {
        assert_eq!(
            get_status(&s, "/", Some(host)).await.0,
            StatusCode::MISDIRECTED_REQUEST,
            "{host}"
        );
    }
}

#[test]
fn a_bad_dashboard_host_flag_is_an_error_that_says_what_to_give() {
    for bad in ["", "a/b", "dash.example:http", "a b", "[::1"] {
        let e = Hosts::new(bound(), &[bad.to_string()]).unwrap_err();
        assert!(e.to_string().contains("NAME:PORT"), "{bad}: {e}");
    }
}

#[test]
fn an_unspecified_bind_address_is_not_a_name() {
    let h = Hosts::new("0.0.0.0:8084".parse().unwrap(), &[]).unwrap();
    assert!(!h.allows("0.0.0.0:8084"));
    assert!(h.allows("localhost:8084"));
}

#[tokio::test]
async fn the_api_needs_the_token_and_refuses_forged_ones() {
    let s = shared(&[]);
    let host = Some("127.0.0.1:8084");
    for path in [
        "/api/v1/overview",
        "/api/v1/routes",
        "/api/v1/authz",
        "/api/v1/targets",
        "/api/v1/workloads/card/card/series",
        "/api/v1/tap?workload=card/card",
    ] {
        let (status, body) = get_status(&s, path, host).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body.contains("log in"), "{body}");
        let forged = [
            (
                header::AUTHORIZATION,
                format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            ),
            (header::AUTHORIZATION, format!("Bearer {TOKEN}x")),
            (header::AUTHORIZATION, format!("Basic {TOKEN}")),
            (header::AUTHORIZATION, "Bearer ".to_string()),
            (
                header::COOKIE,
                format!("onemesh_session={}0", &TOKEN[..TOKEN.len() - 1]),
            ),
            (header::COOKIE, format!("other={TOKEN}")),
            (header::COOKIE, format!("xonemesh_session={TOKEN}")),
        ];
        for (name, value) in forged {
            let req = get(path, host)
                .header(name.clone(), &value)
                .body(Full::default())
                .unwrap();
            assert_eq!(
                send(&s, req).await.0,
                StatusCode::UNAUTHORIZED,
                "{path} {name}: {value}"
            );
        }
    }
    assert_eq!(send(&s, authed("/api/v1/overview")).await.0, StatusCode::OK);
    let cookie = get("/api/v1/targets", host)
        .header(header::COOKIE, format!("a=b; onemesh_session={TOKEN}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&s, cookie).await.0, StatusCode::OK);
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_only_for_the_right_token() {
    let s = shared(&[]);
    let host = Some("127.0.0.1:8084");
    let (status, headers, body) = send(
        &s,
        get("/login?token=nope", host)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("<form"), "{body}");
    let (status, headers, _) = send(
        &s,
        get(&format!("/login?token={TOKEN}"), host)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("onemesh_session={TOKEN};")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let post = Request::post("/login")
        .header(header::HOST, "127.0.0.1:8084")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("token={TOKEN}"))))
        .unwrap();
    assert_eq!(send(&s, post).await.0, StatusCode::SEE_OTHER);
    let huge = Request::post("/login")
        .header(header::HOST, "127.0.0.1:8084")
        .body(Full::new(Bytes::from(vec![b'a'; 100_000])))
        .unwrap();
    assert_eq!(send(&s, huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_page_is_served_without_the_token_and_holds_no_data() {
    let s = shared(&[]);
    let (status, headers, body) = send(
        &s,
        get("/", Some("localhost:8084"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("spiffe://"), "{body}");
    let csp = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
}

#[tokio::test]
async fn bad_windows_and_tap_queries_are_refused_with_what_to_write() {
    let s = shared(&[]);
    for (uri, status, needle) in [
        (
            "/api/v1/overview?window=2h",
            StatusCode::BAD_REQUEST,
            "retention",
        ),
        (
            "/api/v1/overview?window=abc",
            StatusCode::BAD_REQUEST,
            "60s",
        ),
        ("/api/v1/overview?window=0s", StatusCode::BAD_REQUEST, "60s"),
        (
            "/api/v1/tap",
            StatusCode::BAD_REQUEST,
            "workload=<namespace>/<name>",
        ),
        (
            "/api/v1/tap?workload=card/card&method=get",
            StatusCode::BAD_REQUEST,
            "POST",
        ),
        (
            "/api/v1/tap?workload=card/card",
            StatusCode::NOT_FOUND,
            "no workload card/card",
        ),
        ("/api/v1/nope", StatusCode::NOT_FOUND, "/api/v1/overview"),
    ] {
        let (got, _, body) = send(&s, authed(uri)).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(body.contains(needle), "{uri}: {body}");
    }
}
