//! Unit tests of the hop-by-hop header handling.

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
    strip_hop_by_hop(&mut h);
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
