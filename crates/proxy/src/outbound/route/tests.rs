//! Route matching: the first match decides, no match is `default`.

use std::time::Duration;

use super::*;
use crate::discover::Route;

fn service() -> Service {
    let route = |name: &str, methods: Vec<http::Method>, prefix: &str| Route {
        name: name.into(),
        methods,
        path_prefix: prefix.into(),
        timeout: Some(Duration::from_secs(2)),
        retryable: name == "pay",
        backends: None,
        retry: None,
        breaker: None,
    };
    Service {
        name: "card.card".into(),
        namespace: "card".into(),
        port: 80,
        endpoints: Vec::new(),
        routes: vec![
            route("pay", vec![http::Method::POST], "/pay"),
            route("all", Vec::new(), "/"),
        ],
        breaker: None,
    }
}

fn request(method: http::Method, path: &str) -> Request<Body> {
    let mut req = Request::new(crate::body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("a valid path");
    req
}

#[test]
fn the_first_matching_route_decides() {
    let s = service();
    let pay = matched(&s, &request(http::Method::POST, "/pay/1"));
    assert_eq!(pay.name.as_deref(), Some("pay"));
    assert!(pay.retryable);
    assert_eq!(pay.timeout, Some(Duration::from_secs(2)));
    let get = matched(&s, &request(http::Method::GET, "/pay/1"));
    assert_eq!(get.name.as_deref(), Some("all"));
    assert!(!get.retryable);
}

#[test]
fn no_route_is_default_without_timeout_or_retry() {
    let mut s = service();
    s.routes.clear();
    assert_eq!(
        matched(&s, &request(http::Method::GET, "/")),
        Matched::default()
    );
}
