//! Unit tests of the token buckets, on tokio's paused clock.

use super::*;

fn id(ns: &str, sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
        .parse()
        .expect("a valid id")
}

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate { per_second, burst }
}

fn passed(limit: &RateLimit, caller: Option<&SpiffeId>, n: usize) -> usize {
    let now = Instant::now();
    (0..n).filter(|_| limit.check(caller, now).is_ok()).count()
}

#[tokio::test(start_paused = true)]
async fn a_burst_passes_then_the_bucket_refills_at_its_rate() {
    let limit = RateLimit::new("l".into(), vec![], Some(rate(10, 5)), None, vec![]);
    assert_eq!(passed(&limit, None, 20), 5, "the burst");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(passed(&limit, None, 20), 1, "one token per 100 ms");
    tokio::time::advance(Duration::from_millis(350)).await;
    assert_eq!(passed(&limit, None, 20), 3);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        passed(&limit, None, 20),
        5,
        "refilled to the burst, never above"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_says_when_the_next_request_passes() {
    let limit = RateLimit::new("l".into(), vec![], Some(rate(2, 1)), None, vec![]);
    let now = Instant::now();
    assert!(limit.check(None, now).is_ok());
    let refused = limit.check(None, now).expect_err("the burst is spent");
    assert_eq!(refused.scope, Scope::Total);
    assert_eq!(refused.retry_after, Duration::from_millis(500));
    assert_eq!(retry_after_secs(refused.retry_after), 1, "rounded up");
    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(limit.check(None, Instant::now()).is_err(), "not yet");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(limit.check(None, Instant::now()).is_ok(), "exactly then");
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
}

#[tokio::test(start_paused = true)]
async fn each_identity_has_its_own_bucket_and_unauthenticated_callers_share_one() {
    let limit = RateLimit::new("l".into(), vec![], None, Some(rate(1, 3)), vec![]);
    let (a, b) = (id("order", "web"), id("pg", "api"));
    assert_eq!(passed(&limit, Some(&a), 10), 3);
    assert_eq!(
        passed(&limit, Some(&b), 10),
        3,
        "a's spending leaves b's bucket full"
    );
    assert_eq!(
        passed(&limit, None, 10),
        3,
        "all unauthenticated callers: one bucket"
    );
    assert_eq!(passed(&limit, None, 10), 0);
    let refused = limit
        .check(Some(&a), Instant::now())
        .expect_err("a is empty");
    assert_eq!(refused.scope, Scope::Identity);
    assert_eq!(limit.tracked_callers(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_total_is_shared_and_a_refused_caller_takes_nothing_from_it() {
    let limit = RateLimit::new(
        "l".into(),
        vec![],
        Some(rate(1, 4)),
        Some(rate(1, 2)),
        vec![],
    );
    let (a, b, c) = (id("x", "a"), id("x", "b"), id("x", "c"));
    assert_eq!(passed(&limit, Some(&a), 10), 2, "a's own limit");
    assert_eq!(
        passed(&limit, Some(&b), 10),
        2,
        "b's own, and the total is spent"
    );
    let refused = limit
        .check(Some(&c), Instant::now())
        .expect_err("total spent");
    assert_eq!(refused.scope, Scope::Total);
}

#[tokio::test(start_paused = true)]
async fn callers_named_by_an_override_share_its_bucket() {
    let over = Override {
        rate: rate(1, 10),
        identities: vec![id("pg", "api")],
        namespaces: vec!["ops".into()],
    };
    let limit = RateLimit::new("l".into(), vec![], None, Some(rate(1, 1)), vec![over]);
    assert_eq!(passed(&limit, Some(&id("pg", "api")), 6), 6);
    assert_eq!(
        passed(&limit, Some(&id("ops", "a")), 6),
        4,
        "the same bucket"
    );
    let refused = limit
        .check(Some(&id("ops", "b")), Instant::now())
        .expect_err("override spent");
    assert_eq!(refused.scope, Scope::Override);
    assert_eq!(
        passed(&limit, Some(&id("pg", "web")), 6),
        1,
        "others: identity rate"
    );
}

#[tokio::test(start_paused = true)]
async fn the_caller_map_is_capped_and_idle_buckets_are_forgotten() {
    let limit = RateLimit::new("l".into(), vec![], None, Some(rate(1, 1)), vec![]);
    let ids: Vec<SpiffeId> = (0..MAX_CALLERS)
        .map(|i| id("many", &format!("c{i}")))
        .collect();
    for id in &ids {
        assert_eq!(passed(&limit, Some(id), 1), 1);
    }
    assert_eq!(limit.tracked_callers(), MAX_CALLERS);
    // Full and nobody idle: newcomers share the overflow bucket.
    let (x, y) = (id("new", "x"), id("new", "y"));
    assert_eq!(passed(&limit, Some(&x), 1), 1);
    assert_eq!(passed(&limit, Some(&y), 1), 0, "overflow bucket spent by x");
    assert_eq!(limit.tracked_callers(), MAX_CALLERS, "never above the cap");
    // Once their buckets are full again, the old callers are forgotten to make room.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(passed(&limit, Some(&y), 1), 1);
    assert_eq!(
        limit.tracked_callers(),
        1,
        "idle buckets dropped, y tracked"
    );
    assert_eq!(
        passed(&limit, Some(&y), 1),
        0,
        "y has a bucket of its own now"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_limit_keeps_its_buckets_across_updates() {
    let old = RateLimit::new("l".into(), vec![8080], Some(rate(1, 2)), None, vec![]);
    assert_eq!(passed(&old, None, 5), 2);
    let mut same = RateLimit::new("l".into(), vec![8080], Some(rate(1, 2)), None, vec![]);
    same.adopt(&old);
    assert_eq!(passed(&same, None, 5), 0, "still spent");
    let mut changed = RateLimit::new("l".into(), vec![8080], Some(rate(1, 3)), None, vec![]);
    changed.adopt(&old);
    assert_eq!(passed(&changed, None, 5), 3, "a new rate starts full");
}

#[tokio::test(start_paused = true)]
async fn only_limits_covering_the_port_apply() {
    let limits = [RateLimit::new(
        "p9090".into(),
        vec![9090],
        Some(rate(1, 1)),
        None,
        vec![],
    )];
    let now = Instant::now();
    let get = &http::Method::GET;
    let path = crate::path::check("/").unwrap();
    for _ in 0..5 {
        assert!(check(&limits, (8080, get, path), None, now).is_ok());
    }
    assert!(check(&limits, (9090, get, path), None, now).is_ok());
    let (limit, refused) = check(&limits, (9090, get, path), None, now).expect_err("spent");
    assert_eq!(&*limit.name, "p9090");
    assert_eq!(refused.scope, Scope::Total);
}

#[tokio::test(start_paused = true)]
async fn a_limit_with_a_match_covers_only_the_requests_it_matches() {
    let limits = [
        RateLimit::new("pay".into(), vec![], Some(rate(1, 1)), None, vec![]).matching(RouteMatch {
            methods: vec![http::Method::POST],
            path_prefix: "/pay".into(),
        }),
    ];
    let now = Instant::now();
    let at = |p: &'static str| crate::path::check(p).unwrap();
    let post = &http::Method::POST;
    // other methods, other paths and a path that only starts with the prefix's letters: free
    for _ in 0..5 {
        assert!(check(&limits, (80, &http::Method::GET, at("/pay")), None, now).is_ok());
        assert!(check(&limits, (80, post, at("/orders")), None, now).is_ok());
        assert!(check(&limits, (80, post, at("/payments")), None, now).is_ok());
    }
    // matched: the bucket of one is spent by the first
    assert!(check(&limits, (80, post, at("/pay/1")), None, now).is_ok());
    let (limit, _) = check(&limits, (80, post, at("/pay")), None, now).expect_err("spent");
    assert_eq!(&*limit.name, "pay");
    // a limit with another match is another limit: it does not adopt the buckets
    let mut wider = RateLimit::new("pay".into(), vec![], Some(rate(1, 1)), None, vec![]);
    wider.adopt(&limits[0]);
    assert!(wider.check(None, now).is_ok(), "adopted the spent bucket");
}
