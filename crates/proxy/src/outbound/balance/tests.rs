//! Unit tests of the balancer: picks, in-flight cost, decay of a failure's penalty, updates.

use super::*;

fn ep(port: u16) -> Endpoint {
    Endpoint {
        addr: ([127, 0, 0, 1], port).into(),
        target_port: 80,
        identity: "spiffe://cluster.local/ns/a/sa/a".parse().unwrap(),
        workload: "a".into(),
        namespace: "a".into(),
        weight: 1,
        protocol: crate::discover::EndpointProtocol::Http,
    }
}

#[test]
fn empty_and_single() {
    assert!(Balancer::default().pick().is_none());
    let b = Balancer::default().update(&[ep(1)]);
    assert_eq!(b.pick().unwrap().endpoint.addr.port(), 1);
}

#[test]
fn prefers_the_faster_endpoint() {
    let b = Balancer::default().update(&[ep(1), ep(2)]);
    // endpoint 1 is slow: one observation of 500 ms
    let slow = b.endpoints[0].clone();
    slow.observe(Duration::from_millis(500));
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..100 {
        assert_eq!(b.pick_with(&mut rng).unwrap().endpoint.addr.port(), 2);
    }
}

#[test]
fn in_flight_requests_raise_cost() {
    let b = Balancer::default().update(&[ep(1), ep(2)]);
    let busy: Vec<_> = (0..5).map(|_| b.endpoints[1].start()).collect();
    assert!(b.endpoints[1].cost() > b.endpoints[0].cost());
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(b.pick_with(&mut rng).unwrap().endpoint.addr.port(), 1);
    drop(busy);
    assert_eq!(b.endpoints[1].pending.load(Ordering::Relaxed), 0);
}

#[test]
fn a_failed_endpoint_is_tried_again_once_its_penalty_decays() {
    let b = Balancer::default().update(&[ep(1), ep(2)]);
    let (failed, healthy) = (b.endpoints[0].clone(), b.endpoints[1].clone());
    drop(failed.start()); // a failure: counted as a 1 s response
    healthy.observe(Duration::from_millis(2));
    let now = Instant::now();
    assert!(failed.cost_at(now) > healthy.cost_at(now));
    // A minute without traffic later the failed one is cheaper than a busy healthy one, and
    // soon cheaper than an idle one: it gets a request again.
    let later = now + Duration::from_secs(60);
    let _busy = healthy.start();
    assert!(failed.cost_at(later) < healthy.cost_at(now));
    assert!(failed.cost_at(later + Duration::from_secs(60)) < 0.1);
}

#[test]
fn update_keeps_known_state() {
    let b = Balancer::default().update(&[ep(1), ep(2)]);
    b.endpoints[0].observe(Duration::from_millis(900));
    let c = b.update(&[ep(1), ep(3)]);
    assert_eq!(c.len(), 2);
    assert!(Arc::ptr_eq(&b.endpoints[0], &c.endpoints[0]));
    assert!(c.endpoints[0].cost() > c.endpoints[1].cost());
}
