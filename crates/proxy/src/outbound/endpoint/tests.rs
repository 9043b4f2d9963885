//! The one request rewrite, for each hop a request can take.

use super::*;

fn request(uri: &str, host: Option<&str>, extra: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::new(body::empty());
    *req.uri_mut() = uri.parse().expect("a valid uri");
    if let Some(h) = host {
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(h).expect("a valid host"),
        );
    }
    for (k, v) in extra {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("a valid name"),
            HeaderValue::from_str(v).expect("a valid value"),
        );
    }
    req
}

#[test]
fn to_a_proxy_over_http1_the_request_is_origin_form_with_a_host() {
    let mut req = request(
        "http://web.bank/a?b=1",
        None,
        &[
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("onemesh-orig-proto", "HTTP/1.0"),
        ],
    );
    rewrite_request(
        &mut req,
        Hop::MeshHttp1 {
            authority: "web.bank:80",
        },
        false,
    )
    .expect("rewritten");
    assert_eq!(req.uri(), "/a?b=1");
    assert_eq!(req.headers()[header::HOST], "web.bank:80");
    assert_eq!(req.version(), Version::HTTP_11);
    for gone in ["connection", "x-hop", "onemesh-orig-proto"] {
        assert!(!req.headers().contains_key(gone), "{gone}");
    }
}

#[test]
fn an_upgrade_keeps_its_hop_by_hop_headers() {
    let extra = [("connection", "upgrade"), ("upgrade", "websocket")];
    let mut req = request("/ws", Some("web.bank"), &extra);
    rewrite_request(
        &mut req,
        Hop::MeshHttp1 {
            authority: "web.bank:80",
        },
        true,
    )
    .expect("rewritten");
    assert_eq!(req.headers()[header::UPGRADE], "websocket");
    assert_eq!(req.headers()[header::HOST], "web.bank");
}

#[test]
fn to_a_proxy_over_http2_the_request_is_absolute_with_its_version() {
    let mut req = request("/a", Some("web.bank"), &[("onemesh-orig-proto", "forged")]);
    rewrite_request(
        &mut req,
        Hop::MeshH2 {
            authority: "web.bank:80",
        },
        false,
    )
    .expect("rewritten");
    assert_eq!(req.uri(), "http://web.bank:80/a");
    assert!(!req.headers().contains_key(header::HOST));
    assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");
    assert_eq!(req.version(), Version::HTTP_2);
}

#[test]
fn egress_goes_to_where_it_connects_with_the_apps_host() {
    let mut req = request("/x", None, &[("proxy-authorization", "secret")]);
    let hop = Hop::Egress {
        connect_to: "10.0.0.1:8080",
        authority: "example.com:80",
    };
    rewrite_request(&mut req, hop, false).expect("rewritten");
    assert_eq!(req.uri(), "http://10.0.0.1:8080/x");
    assert_eq!(req.headers()[header::HOST], "example.com:80");
    assert!(!req.headers().contains_key(header::PROXY_AUTHORIZATION));
}

#[test]
fn a_response_loses_its_hop_by_hop_headers_and_gets_the_apps_version() {
    let mut rsp = Response::new(());
    rsp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    rsp.headers_mut()
        .insert(header::TE, HeaderValue::from_static("trailers"));
    rewrite_response(&mut rsp, Version::HTTP_10);
    assert!(rsp.headers().is_empty());
    assert_eq!(rsp.version(), Version::HTTP_10);
}
