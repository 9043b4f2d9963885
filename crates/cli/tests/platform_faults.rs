//! The reference platform under `onemesh up` with faults injected by the mesh (issue 15): what a
//! slow bank or a flaky card issuer does to payments, and that the mesh's timeouts and retries
//! keep the money right.
//!
//! - A 3 s delay on half of bank's debits, under a 1 s route timeout: card's proxy answers `504`,
//!   card's own client tries again with the same `Idempotency-Key`, and every payment ends as its
//!   kind requires with the money invariants intact (nothing debited twice).
//! - An abort (`503`) of 30 % of card's authorizations, with every app's own client retries
//!   turned off (`UPSTREAM_ATTEMPTS=1`) and a route that retries by `Idempotency-Key`: every order
//!   is PAID without the customer ever trying again, each payment has exactly one approval and
//!   one debit, and the callers' `retry_total` shows as many retries as card's proxy aborted.

mod support;

use std::time::{Duration, Instant};

use support::platform::{self, Kind, Outcome};
use support::{Up, metrics};

/// The sum of the samples of `name` whose line holds every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Starts the platform with `extra` resources and waits until every workload serves.
async fn start(tag: &str, mesh: String) -> Up {
    platform::assert_platform_built();
    let up = Up::start(tag, &mesh);
    for a in platform::addrs(&up) {
        let took = platform::time_to_ready(&a, Duration::from_secs(60)).await;
        assert!(
            took.is_some(),
            "{} is not ready\n{}",
            a.key,
            platform::log_tail(&up, &a.key, 20)
        );
    }
    up
}

/// `count` customers one after another, each order of a kind that must end PAID.
async fn pay_orders(up: &Up, tag: &str, count: u64) -> Vec<Outcome> {
    let entry = platform::entry(up);
    let kinds = [Kind::AppcardCheck, Kind::CardNumber, Kind::AppcardCredit];
    let mut out = Vec::new();
    for i in 0..count {
        let kind = kinds[(i % 3) as usize];
        let deadline = Instant::now() + Duration::from_secs(60);
        out.push(platform::customer_order(&entry, &format!("{tag}-{i}"), kind, deadline).await);
    }
    out
}

fn admin(up: &Up, key: &str) -> String {
    up.workload(key)["admin"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bank_meets_cards_route_timeout_and_nothing_is_debited_twice() {
    let mesh = platform::platform_mesh()
        + r#"
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {name: bank-debits, namespace: bank}
spec:
  service: bank
  match: {methods: [POST], pathPrefix: /accounts}
  timeout: 1s
  fault:
    delay: {duration: 3s, percent: 50}
"#;
    let up = start("platform-slow-bank", mesh).await;
    let outcomes = pay_orders(&up, "slow", 12).await;
    let checked = platform::check_invariants(&up, &outcomes).await;
    assert_eq!(checked.paid, outcomes.len(), "{outcomes:?}");

    // The delay was injected, card's proxy timed the debits out, and card tried them again.
    let bank = metrics(&admin(&up, "bank/bank")).await;
    let delayed = sum(
        &bank,
        "fault_injected_total",
        &["route=\"bank-debits\"", "kind=\"delay\""],
    );
    let card = metrics(&admin(&up, "card/card")).await;
    let timed_out = sum(
        &card,
        "response_total",
        &[
            "direction=\"outbound\"",
            "route=\"bank-debits\"",
            "status_code=\"504\"",
        ],
    );
    assert!(delayed >= 1.0, "no delay injected:\n{bank}");
    assert!(
        timed_out >= 1.0,
        "card's route timeout never fired ({delayed} delays):\n{card}"
    );
    println!(
        "slow bank: {} orders PAID, {delayed} debits delayed 3 s, {timed_out} timed out at 1 s, \
         {} customer retries, {} bank transactions",
        checked.paid,
        outcomes.iter().map(|o| o.retries).sum::<u64>(),
        checked.bank_transactions
    );
    up.stop_and_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_card_issuer_is_retried_by_the_mesh_alone_with_one_approval_per_payment() {
    // every app tries each upstream call once: only the mesh retries
    let mut mesh = platform::platform_mesh();
    for service in ["order", "pg", "appcard", "card", "bank"] {
        let command = format!("  command: [\"onemesh-platform\", \"{service}\"]\n");
        assert!(
            mesh.contains(&command),
            "mesh.yaml runs {service} otherwise"
        );
        mesh = mesh.replace(
            &command,
            &format!("{command}  env: {{UPSTREAM_ATTEMPTS: \"1\"}}\n"),
        );
    }
    // 8 attempts: an authorization fails all of them with probability 0.3^8 ≈ 7e-5; a budget
    // that never says no here (ten retries per request), so every abort is retried
    mesh += r#"
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {name: card-authorizations, namespace: card}
spec:
  service: card
  match: {methods: [POST], pathPrefix: /authorizations}
  retry:
    attempts: 8
    on: [connect-failure, 5xx]
    budget: {percent: 1000, minPerSecond: 100}
  fault:
    abort: {httpStatus: 503, percent: 30}
"#;
    let up = start("platform-flaky-card", mesh).await;
    let outcomes = pay_orders(&up, "flaky", 15).await;
    let checked = platform::check_invariants(&up, &outcomes).await;
    assert_eq!(checked.paid, outcomes.len(), "{outcomes:?}");
    let customer_retries: u64 = outcomes.iter().map(|o| o.retries).sum();
    assert_eq!(
        customer_retries, 0,
        "a customer had to try again: the mesh's retries should have hidden every abort: {outcomes:?}"
    );

    // Every abort at card was retried by its caller's proxy (pg for card numbers, appcard for
    // app cards), and nothing else was.
    let card = metrics(&admin(&up, "card/card")).await;
    let aborted = sum(
        &card,
        "fault_injected_total",
        &["route=\"card-authorizations\"", "kind=\"abort\""],
    );
    let mut retried = 0.0;
    for caller in ["pg/pg", "appcard/appcard"] {
        let text = metrics(&admin(&up, caller)).await;
        retried += sum(
            &text,
            "retry_total",
            &["route=\"card-authorizations\"", "reason=\"retried\""],
        );
        let refused = sum(&text, "retry_total", &["route=\"card-authorizations\""]);
        assert_eq!(
            refused,
            sum(
                &text,
                "retry_total",
                &["route=\"card-authorizations\"", "reason=\"retried\""]
            ),
            "{caller} refused a retry:\n{text}"
        );
    }
    assert!(
        aborted >= 1.0,
        "30 % of {} authorizations and not one abort",
        outcomes.len()
    );
    assert_eq!(
        retried, aborted,
        "each aborted authorization is retried once by the caller's proxy"
    );
    println!(
        "flaky card: {} orders PAID, {aborted} authorizations aborted, {retried} retried by the \
         mesh, 0 customer retries",
        checked.paid
    );
    up.stop_and_clean();
}
