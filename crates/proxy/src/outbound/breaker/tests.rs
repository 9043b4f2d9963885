//! The breaker on virtual time: consecutive failures, the success-rate window, backoff and its
//! jitter, probation, the ejection cap, circuit_open, and `Retry-After` avoidance (forged values
//! included).

use std::time::{Duration, SystemTime};

use super::*;
use crate::discover::{Endpoint, EndpointProtocol};

fn ep(port: u16) -> Endpoint {
    Endpoint {
        addr: ([127, 0, 0, 1], port).into(),
        target_port: 80,
        identity: "spiffe://cluster.local/ns/a/sa/a".parse().unwrap(),
        workload: "a".into(),
        namespace: "a".into(),
        weight: 1,
        protocol: EndpointProtocol::Http,
    }
}

fn balancer(n: u16) -> Balancer {
    let eps: Vec<_> = (1..=n).map(ep).collect();
    Balancer::default().update(&eps)
}

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: n,
        success_rate: None,
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(60),
        max_ejection_percent: 50,
    }
}

fn health(b: &Breaker, load: &EndpointLoad) -> Health {
    b.health(load.endpoint.addr, load.endpoint.target_port)
}

fn is_ejected(b: &Breaker, load: &EndpointLoad) -> bool {
    matches!(health(b, load), Health::Ejected { .. })
}

/// Picks `n` times and returns how many went to each port.
fn spread(b: &Breaker, bal: &Balancer, n: usize) -> std::collections::BTreeMap<u16, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        match b.pick(bal) {
            Pick::Endpoint(l) => *out.entry(l.endpoint.addr.port()).or_default() += 1,
            other => panic!("no endpoint: {other:?}"),
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_and_a_success_resets_the_count() {
    let b = Breaker::for_test(consecutive(3), 1);
    let bal = balancer(2);
    let sick = &bal.endpoints()[0];
    b.record(&bal, sick, true);
    b.record(&bal, sick, true);
    b.record(&bal, sick, false); // the run is broken
    b.record(&bal, sick, true);
    b.record(&bal, sick, true);
    assert_eq!(health(&b, sick), Health::Healthy { failing: false });
    b.record(&bal, sick, true);
    assert!(is_ejected(&b, sick));
    // every pick goes to the other endpoint while it is out
    assert_eq!(spread(&b, &bal, 50).get(&1), None);
}

#[tokio::test(start_paused = true)]
async fn success_rate_trips_only_with_enough_requests_in_the_window() {
    let config = BreakerConfig {
        consecutive_failures: 0,
        success_rate: Some(SuccessRate {
            min_permille: 800,
            window: Duration::from_secs(10),
            min_requests: 10,
        }),
        ..consecutive(0)
    };
    let b = Breaker::for_test(config, 2);
    let bal = balancer(2);
    let e = &bal.endpoints()[0];
    // 5 failures of 9 requests: a 44 % success rate, but below the minimum count
    for i in 0..9 {
        b.record(&bal, e, i % 2 == 0);
    }
    assert!(!is_ejected(&b, e));
    // 20 s later the old window has slid out: 9 more requests with 5 failures are not enough
    tokio::time::advance(Duration::from_secs(20)).await;
    for i in 0..9 {
        b.record(&bal, e, i % 2 == 0);
    }
    assert!(!is_ejected(&b, e));
    // the 10th request of the window (a failure) trips the rule
    b.record(&bal, e, true);
    assert!(is_ejected(&b, e));

    // a 90 % success rate stays in rotation, however many requests
    let other = &bal.endpoints()[1];
    for i in 0..200 {
        b.record(&bal, other, i % 10 == 0);
    }
    assert_eq!(health(&b, other), Health::Healthy { failing: false });
}

#[test]
fn backoff_doubles_up_to_the_max_and_jitters_within_half() {
    let config = consecutive(1);
    let mut rng = fastrand::Rng::with_seed(3);
    for (n, full) in [
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 8),
        (7, 60),
        (40, 60),
        (u32::MAX, 60),
    ] {
        let full = Duration::from_secs(full);
        let mut seen_low = false;
        for _ in 0..200 {
            let d = backoff(&config, n, &mut rng);
            assert!(
                d <= full && d >= full / 2,
                "ejection {n}: {d:?} outside [{full:?}/2, {full:?}]"
            );
            seen_low |= d < full * 3 / 4;
        }
        assert!(seen_low, "ejection {n}: no jitter seen");
    }
}

#[tokio::test(start_paused = true)]
async fn probation_by_one_request_success_heals_failure_ejects_longer() {
    let b = Breaker::for_test(consecutive(1), 4);
    let bal = balancer(2);
    let sick = bal.endpoints()[0].clone();
    b.record(&bal, &sick, true);
    let Health::Ejected { until: first } = health(&b, &sick) else {
        panic!("not ejected");
    };
    let first_len = first - Instant::now();
    assert!(first_len <= Duration::from_secs(1) && first_len >= Duration::from_millis(500));
    tokio::time::advance(first_len).await;
    // the ejection is over: the next pick is the probe, and only one request probes
    let Pick::Endpoint(probe) = b.pick(&bal) else {
        panic!("no pick");
    };
    assert_eq!(probe.endpoint.addr.port(), 1);
    assert_eq!(
        health(&b, &sick),
        Health::Probation {
            probing: Some(Instant::now())
        }
    );
    assert_eq!(spread(&b, &bal, 20).get(&1), None);
    // the probe fails: ejected again, for up to twice as long
    b.record(&bal, &sick, true);
    let Health::Ejected { until: second } = health(&b, &sick) else {
        panic!("not ejected again");
    };
    let second_len = second - Instant::now();
    assert!(second_len >= Duration::from_secs(1) && second_len <= Duration::from_secs(2));
    tokio::time::advance(second_len).await;
    let Pick::Endpoint(probe) = b.pick(&bal) else {
        panic!("no pick");
    };
    assert_eq!(probe.endpoint.addr.port(), 1);
    // the probe succeeds: healthy, back in rotation, and the next ejection starts short again
    b.record(&bal, &sick, false);
    assert_eq!(health(&b, &sick), Health::Healthy { failing: false });
    assert!(spread(&b, &bal, 200).get(&1).copied().unwrap_or(0) > 0);
    b.record(&bal, &sick, true);
    let Health::Ejected { until } = health(&b, &sick) else {
        panic!("not ejected");
    };
    assert!(until - Instant::now() <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_cap_keeps_endpoints_in_rotation_until_every_one_fails() {
    let b = Breaker::for_test(consecutive(2), 5);
    let bal = balancer(4);
    let [e1, e2, e3, e4] = [0, 1, 2, 3].map(|i| bal.endpoints()[i].clone());
    for e in [&e1, &e2, &e3] {
        b.record(&bal, e, true);
        b.record(&bal, e, true);
    }
    // 50 % of 4: two ejected, the third failing but kept in rotation
    assert!(is_ejected(&b, &e1) && is_ejected(&b, &e2));
    assert_eq!(health(&b, &e3), Health::Healthy { failing: true });
    let picks = spread(&b, &bal, 200);
    assert!(picks.get(&3).copied().unwrap_or(0) > 0, "{picks:?}");
    assert_eq!(picks.get(&1).copied().unwrap_or(0), 0);
    // a success brings the failing one back to healthy
    b.record(&bal, &e3, false);
    assert_eq!(health(&b, &e3), Health::Healthy { failing: false });
    // now the last two fail as well: every endpoint is out or failing, all are ejected
    for e in [&e3, &e4] {
        b.record(&bal, e, true);
        b.record(&bal, e, true);
    }
    for e in [&e1, &e2, &e3, &e4] {
        assert!(is_ejected(&b, e), "{:?}", health(&b, e));
    }
    assert!(matches!(b.pick(&bal), Pick::CircuitOpen));
}

#[tokio::test(start_paused = true)]
async fn a_single_failing_endpoint_opens_the_circuit_then_is_probed() {
    let b = Breaker::for_test(consecutive(3), 6);
    let bal = balancer(1);
    let e = bal.endpoints()[0].clone();
    for _ in 0..3 {
        b.record(&bal, &e, true);
    }
    assert!(matches!(b.pick(&bal), Pick::CircuitOpen));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(b.pick(&bal), Pick::Endpoint(_)));
    // while its probe is in flight, others fail fast rather than pile onto it
    assert!(matches!(b.pick(&bal), Pick::CircuitOpen));
    b.record(&bal, &e, false);
    assert!(matches!(b.pick(&bal), Pick::Endpoint(_)));
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_reports_is_given_up() {
    let b = Breaker::for_test(consecutive(1), 10);
    let bal = balancer(1);
    let e = bal.endpoints()[0].clone();
    b.record(&bal, &e, true);
    tokio::time::advance(Duration::from_secs(1)).await;
    // the probe is picked, but its request is dropped before an attempt starts
    assert!(matches!(b.pick(&bal), Pick::Endpoint(_)));
    assert!(matches!(b.pick(&bal), Pick::CircuitOpen));
    tokio::time::advance(PROBE_TIMEOUT).await;
    assert!(
        matches!(b.pick(&bal), Pick::Endpoint(_)),
        "the endpoint stayed out for good"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_attempt_counts_as_a_failure() {
    let b = Breaker::for_test(consecutive(1), 7);
    let bal = balancer(2);
    let picker = Picker {
        balancer: &bal,
        breaker: Some(&b),
    };
    let e = bal.endpoints()[0].clone();
    drop(picker.start(&e)); // the route's timeout fired
    assert!(is_ejected(&b, &e));
}

#[tokio::test(start_paused = true)]
async fn only_5xx_and_no_answer_count_not_4xx() {
    let b = Breaker::for_test(consecutive(1), 8);
    let bal = balancer(2);
    let picker = Picker {
        balancer: &bal,
        breaker: Some(&b),
    };
    let e = bal.endpoints()[0].clone();
    for (status, proxy_made) in [(403, true), (429, true), (404, false), (200, false)] {
        let mut rsp = Response::new(crate::body::empty());
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
        if proxy_made {
            rsp.headers_mut()
                .insert(crate::error::ERROR_HEADER, "forbidden".parse().unwrap());
        }
        picker.start(&e).finish(&Ok(rsp));
        assert!(!is_ejected(&b, &e), "{status} ejected the endpoint");
    }
    let mut grpc = Response::new(crate::body::empty());
    grpc.headers_mut()
        .insert("grpc-status", "14".parse().unwrap());
    picker.start(&e).finish(&Ok(grpc));
    assert!(is_ejected(&b, &e), "a gRPC error is a failure");
    let other = bal.endpoints()[1].clone();
    picker
        .start(&other)
        .finish(&Err(ProxyError::Upstream("reset".into())));
    // no answer is a failure: beyond the 50 % cap, but then every endpoint fails, so both are out
    assert!(is_ejected(&b, &other));
    assert!(matches!(b.pick(&bal), Pick::CircuitOpen));
}

fn too_many(retry_after: &str) -> Response<Body> {
    let mut rsp = Response::new(crate::body::empty());
    *rsp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    rsp.headers_mut()
        .insert(http::header::RETRY_AFTER, retry_after.parse().unwrap());
    rsp
}

#[tokio::test(start_paused = true)]
async fn retry_after_keeps_an_endpoint_out_until_then_unless_all_are() {
    let bal = balancer(3);
    let picker = Picker {
        balancer: &bal,
        breaker: None,
    };
    let limited = bal.endpoints()[0].clone();
    picker.start(&limited).finish(&Ok(too_many("5")));
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..100 {
        let e = bal.pick_with(&mut rng).unwrap();
        assert_ne!(e.endpoint.addr.port(), 1);
    }
    // every endpoint avoided: picked anyway
    for e in &bal.endpoints()[1..] {
        picker.start(e).finish(&Ok(too_many("5")));
    }
    assert!(bal.pick_with(&mut rng).is_some());
    // once the time has passed, it is back (the cheapest of the three: it answered fastest)
    tokio::time::advance(Duration::from_secs(5)).await;
    let back = (0..100).any(|_| bal.pick_with(&mut rng).unwrap().endpoint.addr.port() == 1);
    assert!(back, "the endpoint stayed avoided after its Retry-After");
}

#[tokio::test(start_paused = true)]
async fn forged_retry_after_values_are_capped_or_ignored() {
    let bal = balancer(2);
    let picker = Picker {
        balancer: &bal,
        breaker: None,
    };
    let e = bal.endpoints()[0].clone();
    // a huge value is capped at 60 s
    picker
        .start(&e)
        .finish(&Ok(too_many("99999999999999999999999999")));
    assert!(e.is_avoided());
    tokio::time::advance(MAX_RETRY_AFTER).await;
    assert!(!e.is_avoided());
    // garbage avoids nothing
    for forged in [
        "-5",
        "1.5",
        " 10",
        "10 s",
        "0x10",
        "soon",
        "0",
        "Thu, 01 Jan 1970 00:00:00 GMT",
    ] {
        picker.start(&e).finish(&Ok(too_many(forged)));
        assert!(!e.is_avoided(), "{forged:?} was taken as a wait");
    }
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(retry_after(b"7", now), Some(Duration::from_secs(7)));
    assert_eq!(retry_after(b"600", now), Some(MAX_RETRY_AFTER));
    let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(
        retry_after(date.as_bytes(), now),
        Some(Duration::from_secs(30))
    );
    let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400 * 365));
    assert_eq!(retry_after(far.as_bytes(), now), Some(MAX_RETRY_AFTER));
    let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(retry_after(past.as_bytes(), now), None);
    for forged in [
        &b""[..],
        b"\xff\xfe",
        b"Mon, 99 Foo 2024 99:99:99 GMT",
        b"1e9",
        b"+3",
    ] {
        assert_eq!(retry_after(forged, now), None, "{forged:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn breakers_follow_their_route_and_config() {
    let metrics = Arc::new(Metrics::new());
    let mut service = Service {
        name: "bank.bank".into(),
        namespace: "bank".into(),
        port: 80,
        endpoints: vec![ep(1)],
        routes: Vec::new(),
        breaker: None,
    };
    let breakers = Breakers::default();
    let default = Matched::default();
    assert!(breakers.of(&service, &default, &metrics).is_none());
    service.breaker = Some(Arc::new(consecutive(5)));
    let s1 = breakers.of(&service, &default, &metrics).unwrap();
    let s2 = breakers.of(&service, &default, &metrics).unwrap();
    assert!(Arc::ptr_eq(&s1, &s2));
    // a route with its own breaker gets its own states
    let pay = Matched {
        name: Some("pay".into()),
        breaker: Some(Arc::new(consecutive(2))),
        ..Matched::default()
    };
    let r = breakers.of(&service, &pay, &metrics).unwrap();
    assert!(!Arc::ptr_eq(&r, &s1));
    assert_eq!(r.config().consecutive_failures, 2);
    // a changed config starts over
    service.breaker = Some(Arc::new(consecutive(6)));
    let s3 = breakers.of(&service, &default, &metrics).unwrap();
    assert!(!Arc::ptr_eq(&s1, &s3));
}

#[tokio::test(start_paused = true)]
async fn gauges_show_each_endpoints_state() {
    let metrics = Arc::new(Metrics::new());
    let b = Breaker::new(
        Arc::new(consecutive(1)),
        metrics.clone(),
        "bank.bank".into(),
        "".into(),
    );
    let bal = balancer(2);
    b.record(&bal, &bal.endpoints()[1], false);
    b.record(&bal, &bal.endpoints()[0], true);
    let text = metrics.encode();
    let line = |ep: &str, state: &str| {
        format!(
            "breaker_endpoint_state{{direction=\"outbound\",dst_service=\"bank.bank\",route=\"\",endpoint=\"{ep}\",state=\"{state}\"}}"
        )
    };
    assert!(
        text.contains(&format!("{} 1", line("127.0.0.1:1", "ejected"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 0", line("127.0.0.1:1", "healthy"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 1", line("127.0.0.1:2", "healthy"))),
        "{text}"
    );
    assert!(
        text.contains(
            "breaker_ejection_total{direction=\"outbound\",dst_service=\"bank.bank\",route=\"\",endpoint=\"127.0.0.1:1\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_breaker_takes_its_gauges_along() {
    let metrics = Arc::new(Metrics::new());
    let b = Breaker::new(
        Arc::new(consecutive(1)),
        metrics.clone(),
        "bank.bank".into(),
        "pay".into(),
    );
    let bal = balancer(1);
    b.record(&bal, &bal.endpoints()[0], true);
    assert!(metrics.encode().contains("breaker_endpoint_state{"));
    drop(b);
    assert!(!metrics.encode().contains("breaker_endpoint_state{"));
}
