//! Unit tests of what may be replayed and of the budget.

use super::*;

fn request(method: http::Method, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    req
}

#[test]
fn only_bodiless_idempotent_or_retryable_requests_are_kept() {
    assert!(
        Replay::of(&request(http::Method::GET, body::empty()), false)
            .0
            .is_some()
    );
    assert!(
        Replay::of(&request(http::Method::POST, body::empty()), false)
            .0
            .is_none()
    );
    assert!(
        Replay::of(&request(http::Method::POST, body::empty()), true)
            .0
            .is_some()
    );
    let with_body = request(http::Method::PUT, body::full("x"));
    assert!(Replay::of(&with_body, true).0.is_none());
}

#[test]
fn the_budget_allows_a_fifth_of_requests() {
    let budget = RetryBudget::default();
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
}
