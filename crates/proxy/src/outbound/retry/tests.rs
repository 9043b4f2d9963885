//! Unit tests of the retry stage's decisions: what may be replayed (method, idempotency key,
//! body), what is retried (statuses, gRPC, per-try timeouts), and the budget on virtual time.

use std::time::Duration;

use http_body_util::StreamBody;

use super::*;

fn request(method: http::Method, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    req
}

async fn replay_of(req: Request<Body>, policy: &RetryPolicy, retryable: bool) -> Replay {
    Replay::prepare(req, policy, retryable).await.unwrap().1
}

fn kept(r: &Replay) -> bool {
    matches!(r, Replay::Kept(..))
}

#[tokio::test]
async fn idempotent_keyed_or_retryable_requests_are_kept() {
    let p = &RetryPolicy::DEFAULT;
    let get = request(http::Method::GET, body::empty());
    assert!(kept(&replay_of(get, p, false).await));
    let post = request(http::Method::POST, body::empty());
    assert!(matches!(
        replay_of(post, p, false).await,
        Replay::No("not_idempotent")
    ));
    let post = request(http::Method::POST, body::empty());
    assert!(kept(&replay_of(post, p, true).await));
    // the idempotency key makes a POST safe to repeat (any case: header names are not)
    let mut keyed = request(http::Method::POST, body::empty());
    keyed
        .headers_mut()
        .insert("Idempotency-Key", "order-1".parse().unwrap());
    assert!(kept(&replay_of(keyed, p, false).await));
    // under another name when the route says so, and then not under the default one
    let custom = RetryPolicy {
        idempotency_header: http::HeaderName::from_static("x-request-key"),
        ..RetryPolicy::DEFAULT
    };
    let mut keyed = request(http::Method::POST, body::empty());
    keyed
        .headers_mut()
        .insert("x-request-key", "1".parse().unwrap());
    assert!(kept(&replay_of(keyed, &custom, false).await));
    let mut keyed = request(http::Method::POST, body::empty());
    keyed
        .headers_mut()
        .insert("idempotency-key", "1".parse().unwrap());
    assert!(!kept(&replay_of(keyed, &custom, false).await));
    // one attempt: nothing to keep
    let once = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    let get = request(http::Method::GET, body::empty());
    assert!(!kept(&replay_of(get, &once, false).await));
}

#[tokio::test]
async fn a_short_body_of_declared_length_is_kept_and_sent_whole() {
    let p = &RetryPolicy::DEFAULT;
    let mut post = request(http::Method::POST, body::full("{\"amount\":100}"));
    post.headers_mut()
        .insert("idempotency-key", "k".parse().unwrap());
    let (first, replay) = Replay::prepare(post, p, false).await.unwrap();
    let sent = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&sent[..], b"{\"amount\":100}");
    let again = replay.again().unwrap();
    assert_eq!(again.method(), http::Method::POST);
    assert_eq!(again.headers()["idempotency-key"], "k");
    let resent = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(resent, sent);
}

#[tokio::test]
async fn long_or_unsized_bodies_are_not_kept_and_say_why() {
    let small = RetryPolicy {
        max_body_bytes: 4,
        ..RetryPolicy::DEFAULT
    };
    let put = request(http::Method::PUT, body::full("12345"));
    let (first, replay) = Replay::prepare(put, &small, false).await.unwrap();
    assert!(matches!(replay, Replay::No("body_too_large")));
    // the request itself goes on untouched
    let sent = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&sent[..], b"12345");
    // a body of unknown length is never held back, however short
    let frames = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
        Bytes::from_static(b"1"),
    ))]);
    let put = request(http::Method::PUT, body::boxed(StreamBody::new(frames)));
    assert!(matches!(
        replay_of(put, &RetryPolicy::DEFAULT, false).await,
        Replay::No("body_too_large")
    ));
}

type BoxError = crate::body::BoxError;

fn response(status: u16, grpc: Option<&str>) -> Result<Response<Body>, ProxyError> {
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    if let Some(code) = grpc {
        // gRPC is HTTP/2 only
        *rsp.version_mut() = http::Version::HTTP_2;
        rsp.headers_mut()
            .insert("grpc-status", code.parse().unwrap());
    }
    Ok(rsp)
}

fn load() -> EndpointLoad {
    EndpointLoad::new(crate::discover::Endpoint {
        addr: ([127, 0, 0, 1], 1).into(),
        target_port: 80,
        identity: "spiffe://cluster.local/ns/a/sa/a".parse().unwrap(),
        workload: "a".into(),
        namespace: "a".into(),
        weight: 1,
        protocol: crate::discover::EndpointProtocol::Http,
    })
}

#[test]
fn the_policy_decides_which_failures_are_retried() {
    let load = load();
    let p = &RetryPolicy::DEFAULT;
    for (status, retried) in [
        (502, true),
        (503, true),
        (504, true),
        (500, false),
        (429, false),
    ] {
        assert_eq!(
            wants_retry(p, &response(status, None), &load),
            retried,
            "{status}"
        );
    }
    assert!(
        wants_retry(p, &response(200, Some("14")), &load),
        "UNAVAILABLE"
    );
    let mut http1 = response(200, Some("14"));
    if let Ok(rsp) = &mut http1 {
        *rsp.version_mut() = http::Version::HTTP_11;
    }
    assert!(
        !wants_retry(p, &http1, &load),
        "an HTTP/1.1 answer is not gRPC, whatever its headers"
    );
    assert!(
        !wants_retry(p, &response(200, Some("13")), &load),
        "INTERNAL"
    );
    assert!(!wants_retry(p, &response(200, Some("garbage")), &load));
    // a per-try timeout counts as a 504
    let timeout = Err(ProxyError::Timeout(Duration::from_millis(10)));
    assert!(wants_retry(p, &timeout, &load));
    let only_500 = RetryPolicy {
        on_statuses: RetryPolicy::statuses(&[500]),
        on_grpc: 0,
        on_connect_failure: false,
        ..RetryPolicy::DEFAULT
    };
    assert!(wants_retry(&only_500, &response(500, None), &load));
    assert!(!wants_retry(&only_500, &response(503, None), &load));
    assert!(!wants_retry(&only_500, &response(200, Some("14")), &load));
    assert!(!wants_retry(&only_500, &timeout, &load));
}

#[test]
fn status_bitmaps_cover_400_to_599_only() {
    let p = RetryPolicy {
        on_statuses: RetryPolicy::statuses(&[400, 463, 599, 600, 399, 200]),
        ..RetryPolicy::DEFAULT
    };
    for code in [400, 463, 599] {
        let status = http::StatusCode::from_u16(code).unwrap();
        assert!(p.retries_status(status), "{code}");
    }
    for code in [401, 502, 200] {
        let status = http::StatusCode::from_u16(code).unwrap();
        assert!(!p.retries_status(status), "{code}");
    }
    assert!(!p.retries_grpc(40));
}

#[tokio::test(start_paused = true)]
async fn the_budget_allows_a_share_of_requests() {
    let budget = RetryBudget::new(20, 0);
    // one token in reserve at the start
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
    // eleven requests earn two retries (ten earn a hair under two: 0.2 is not exact)
    for _ in 0..11 {
        budget.deposit();
    }
    assert!(budget.withdraw());
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
    // time alone earns nothing without a minimum rate
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(!budget.withdraw());
}

#[tokio::test(start_paused = true)]
async fn the_minimum_rate_refills_with_time_up_to_a_cap() {
    let budget = RetryBudget::new(0, 10);
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
    tokio::time::advance(Duration::from_millis(500)).await;
    let got = (0..20).filter(|_| budget.withdraw()).count();
    assert_eq!(got, 5, "half a second at 10/s");
    // a long quiet time saves up at most the cap (10)
    tokio::time::advance(Duration::from_secs(3600)).await;
    let got = (0..100).filter(|_| budget.withdraw()).count();
    assert_eq!(got, 10);
    let same = RetryPolicy {
        budget_percent: 0,
        budget_min_per_second: 10,
        ..RetryPolicy::DEFAULT
    };
    assert!(budget.is_for(&same));
    assert!(!budget.is_for(&RetryPolicy::DEFAULT));
}
