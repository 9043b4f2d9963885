//! Unit tests of fault matching and draws (seeded generator, paused time).

use super::*;

fn rule(abort: Option<(AbortWith, f64)>, delay: Option<(Duration, f64)>) -> FaultRule {
    FaultRule {
        route: "authorize".into(),
        ports: vec![8080],
        matches: RouteMatch {
            methods: vec![Method::POST],
            path_prefix: "/v1/authorizations".into(),
        },
        header: None,
        abort,
        delay,
    }
}

fn path(p: &str) -> CheckedPath<'_> {
    crate::path::check(p).expect("a plain path")
}

#[test]
fn matches_port_method_and_path_prefix() {
    let r = rule(
        Some((AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE), 100.0)),
        None,
    );
    let h = HeaderMap::new();
    assert!(r.matches(8080, &Method::POST, path("/v1/authorizations/7"), &h));
    assert!(
        !r.matches(9090, &Method::POST, path("/v1/authorizations"), &h),
        "other port"
    );
    assert!(
        !r.matches(8080, &Method::GET, path("/v1/authorizations"), &h),
        "other method"
    );
    assert!(
        !r.matches(8080, &Method::POST, path("/v1/authorizationsx"), &h),
        "not a segment"
    );
    let any_port = FaultRule {
        ports: vec![],
        ..r.clone()
    };
    assert!(any_port.matches(1, &Method::POST, path("/v1/authorizations"), &h));
}

#[test]
fn a_header_gated_fault_needs_the_header_and_its_value() {
    let mut r = rule(
        Some((AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE), 100.0)),
        None,
    );
    r.header = Some((
        HeaderName::from_static("x-fault"),
        Some(HeaderValue::from_static("on")),
    ));
    let p = path("/v1/authorizations");
    let mut h = HeaderMap::new();
    assert!(!r.matches(8080, &Method::POST, p, &h), "no header");
    h.insert("x-fault", HeaderValue::from_static("off"));
    assert!(!r.matches(8080, &Method::POST, p, &h), "another value");
    h.append("x-fault", HeaderValue::from_static("on"));
    assert!(r.matches(8080, &Method::POST, p, &h), "one of the values");
    r.header = Some((HeaderName::from_static("x-fault"), None));
    let mut h = HeaderMap::new();
    h.insert("x-fault", HeaderValue::from_static("anything"));
    assert!(r.matches(8080, &Method::POST, p, &h), "any value");
}

#[test]
fn the_first_matching_rule_decides() {
    let a = rule(Some((AbortWith::Grpc(14), 100.0)), None);
    let mut b = rule(
        Some((AbortWith::Http(StatusCode::BAD_GATEWAY), 100.0)),
        None,
    );
    b.route = "b".into();
    b.matches.path_prefix = "/".into();
    let rules = [a, b];
    let h = HeaderMap::new();
    let hit = find(&rules, 8080, &Method::POST, path("/v1/authorizations"), &h);
    assert_eq!(hit.map(|r| &*r.route), Some("authorize"));
    let hit = find(&rules, 8080, &Method::POST, path("/v2"), &h);
    assert_eq!(hit.map(|r| &*r.route), Some("b"));
    assert!(find(&rules, 8080, &Method::GET, path("/v2"), &h).is_none());
}

#[test]
fn an_abort_percentage_holds_over_many_draws() {
    let r = rule(
        Some((AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE), 30.0)),
        None,
    );
    let mut rng = fastrand::Rng::with_seed(15);
    let n = 20_000;
    let aborted = (0..n)
        .filter(|_| r.draw(|| rng.f64()).abort.is_some())
        .count();
    let share = aborted as f64 / f64::from(n);
    // 30 % ± 1.5 points: over 6 standard deviations (σ ≈ 0.32 points) for 20,000 draws.
    assert!((0.285..0.315).contains(&share), "aborted {share}");
}

#[test]
fn zero_and_hundred_percent_are_exact() {
    let never = rule(
        Some((AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE), 0.0)),
        Some((Duration::from_secs(1), 0.0)),
    );
    let always = rule(
        Some((AbortWith::Grpc(14), 100.0)),
        Some((Duration::from_secs(3), 100.0)),
    );
    // The generator's extremes: 0.0 and just under 1.0.
    for x in [0.0, 0.999_999] {
        assert_eq!(never.draw(|| x), Injection::default());
        assert_eq!(
            always.draw(|| x),
            Injection {
                delay: Some(Duration::from_secs(3)),
                abort: Some(AbortWith::Grpc(14)),
            }
        );
    }
}

#[test]
fn delay_and_abort_draw_independently() {
    let r = rule(
        Some((AbortWith::Http(StatusCode::SERVICE_UNAVAILABLE), 50.0)),
        Some((Duration::from_millis(10), 50.0)),
    );
    let mut rng = fastrand::Rng::with_seed(3);
    let mut both = 0;
    let n = 10_000;
    for _ in 0..n {
        let i = r.draw(|| rng.f64());
        if i.delay.is_some() && i.abort.is_some() {
            both += 1;
        }
    }
    let share = f64::from(both) / f64::from(n);
    assert!((0.22..0.28).contains(&share), "both {share}");
}
