//! Unit tests of the header handling: hop-by-hop stripping, lookups by name, classification.

use http::header::{self, HeaderMap, HeaderValue};

use super::*;

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_static(v));
    }
    m
}

#[test]
fn end_to_end_headers_pass_untouched() {
    let mut h = map(&[("host", "a"), ("content-length", "3"), ("x-id", "1")]);
    let before = h.clone();
    assert!(!strip_hop_by_hop(&mut h));
    assert_eq!(h, before);
}

#[test]
fn hop_by_hop_and_connection_named_headers_go_te_trailers_stays() {
    let mut h = map(&[
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic Zm9v"),
        ("te", "trailers, deflate"),
        ("x-kept", "yes"),
    ]);
    strip_hop_by_hop(&mut h);
    let names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
    assert_eq!(names, vec!["x-kept", "te"]);
    assert_eq!(h[header::TE], "trailers");
}

#[test]
fn te_without_trailers_is_removed() {
    let mut h = map(&[("te", "deflate"), ("x-kept", "yes")]);
    strip_hop_by_hop(&mut h);
    assert!(!h.contains_key(header::TE));
    assert!(h.contains_key("x-kept"));
}

#[test]
fn find_and_take_match_by_name_and_take_every_value() {
    let mut h = map(&[
        ("host", "a"),
        ("onemesh-client-id", "spoofed-1"),
        ("onemesh-client-id", "spoofed-2"),
        ("x-kept", "yes"),
    ]);
    assert_eq!(
        find(&h, &CLIENT_ID).map(|v| v.as_bytes()),
        Some(&b"spoofed-1"[..])
    );
    assert_eq!(find(&h, &ORIG_PROTO), None);
    assert_eq!(take(&mut h, &ORIG_PROTO), None);
    assert_eq!(
        take(&mut h, &CLIENT_ID),
        Some(HeaderValue::from_static("spoofed-1"))
    );
    assert!(!h.contains_key(&CLIENT_ID));
    assert_eq!(h.len(), 2);
}

#[test]
fn server_errors_and_grpc_errors_are_failures() {
    let rsp = |status: u16, grpc: Option<&'static str>| {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        if let Some(g) = grpc {
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(g));
        }
        r
    };
    assert_eq!(classify(&rsp(200, None)), Classification::Success);
    assert_eq!(classify(&rsp(404, None)), Classification::Success);
    assert_eq!(classify(&rsp(503, None)), Classification::Failure);
    assert_eq!(classify(&rsp(200, Some("0"))), Classification::Success);
    assert_eq!(classify(&rsp(200, Some("14"))), Classification::Failure);
}

#[test]
fn an_answer_made_by_a_proxy_is_a_failure_whatever_its_status() {
    for (status, reason) in [
        (403, "forbidden"),
        (400, "malformed"),
        (503, "no_endpoints"),
    ] {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        r.headers_mut()
            .insert("onemesh-error", HeaderValue::from_static(reason));
        assert_eq!(classify(&r), Classification::Failure, "{status} {reason}");
    }
}

#[test]
fn h2c_upgrades_are_recognized_and_websocket_is_not() {
    for h2c in [
        map(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ]),
        map(&[("upgrade", "H2C")]),
        map(&[("upgrade", "websocket, h2c")]),
        map(&[("upgrade", "foo"), ("upgrade", " h2c/1 ")]),
        map(&[("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")]),
    ] {
        assert!(is_h2c_upgrade(&h2c), "{h2c:?}");
    }
    for other in [
        map(&[("upgrade", "websocket"), ("connection", "upgrade")]),
        map(&[("upgrade", "h2cx")]),
        map(&[("upgrade", "h2")]),
        map(&[("host", "a"), ("x-upgrade", "h2c")]),
        HeaderMap::new(),
    ] {
        assert!(!is_h2c_upgrade(&other), "{other:?}");
    }
}
