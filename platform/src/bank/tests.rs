//! The bank in memory: postings are idempotent by key, double-entry sums to zero, insufficient
//! funds and unknown accounts are refused without changing any balance.

use serde_json::json;

use super::*;
use crate::common::testing::call;

fn bank() -> Router {
    app(BankState {
        db: Db::open_in_memory(MIGRATIONS).unwrap(),
    })
}

async fn balance(app: &Router, id: &str) -> i64 {
    call(app, "GET", &format!("/accounts/{id}"), None, None)
        .await
        .body["balance"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn seeded_ledger_balances_to_zero() {
    let app = bank();
    let s = call(&app, "GET", "/ledger/summary", None, None).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["total_balance"], 0);
    assert_eq!(s.body["entries_sum"], 0);
    assert_eq!(s.body["customer_and_settlement_total"], 1_800_020_000_i64);
    assert_eq!(balance(&app, "acc-park").await, 20_000);
}

#[tokio::test]
async fn debit_is_idempotent_by_key() {
    let app = bank();
    let body =
        json!({"amount": 15_000, "counterparty": "acc-card-settlement", "reference": "pay_1"});
    let first = call(
        &app,
        "POST",
        "/accounts/acc-kim/debit",
        Some("k1"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = call(
        &app,
        "POST",
        "/accounts/acc-kim/debit",
        Some("k1"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed && !first.replayed);
    assert_eq!(first.body, again.body);
    assert_eq!(balance(&app, "acc-kim").await, 1_000_000_000 - 15_000);
    assert_eq!(balance(&app, "acc-card-settlement").await, 15_000);

    let entries = first.body["entries"].as_array().unwrap();
    let sum: i64 = entries.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    assert_eq!(sum, 0, "a transaction's entries sum to zero");

    let other = json!({"amount": 99, "counterparty": "acc-card-settlement", "reference": "pay_1"});
    let conflict = call(
        &app,
        "POST",
        "/accounts/acc-kim/debit",
        Some("k1"),
        Some(other),
    )
    .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["code"], "idempotency_conflict");
    assert_eq!(balance(&app, "acc-kim").await, 1_000_000_000 - 15_000);

    let txns = call(&app, "GET", "/transactions?reference=pay_1", None, None).await;
    assert_eq!(txns.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn insufficient_funds_is_refused_and_changes_nothing() {
    let app = bank();
    let body = json!({"amount": 20_001, "counterparty": "acc-card-settlement", "reference": "p"});
    let r = call(
        &app,
        "POST",
        "/accounts/acc-park/debit",
        Some("k"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["code"], "insufficient_funds");
    assert_eq!(balance(&app, "acc-park").await, 20_000);
    // The refusal is final for this key: replayed, still nothing booked.
    let again = call(
        &app,
        "POST",
        "/accounts/acc-park/debit",
        Some("k"),
        Some(body),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.body["code"], "insufficient_funds");
    let s = call(&app, "GET", "/ledger/summary", None, None).await;
    assert_eq!(
        s.body["transactions"], 1,
        "only the opening transaction exists"
    );
}

#[tokio::test]
async fn transfers_and_credits_move_money_both_ways() {
    let app = bank();
    let t = json!({"from": "acc-lee", "to": "acc-choi", "amount": 1_000, "reference": "r"});
    let r = call(&app, "POST", "/transfers", Some("t1"), Some(t)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let c = json!({"amount": 500, "counterparty": "acc-choi", "reference": "r2"});
    let r = call(
        &app,
        "POST",
        "/accounts/acc-lee/credit",
        Some("c1"),
        Some(c),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(balance(&app, "acc-lee").await, 500_000_000 - 500);
    assert_eq!(balance(&app, "acc-choi").await, 300_000_000 + 500);
    let st = call(&app, "GET", "/accounts/acc-lee/statement", None, None).await;
    assert_eq!(st.body.as_array().unwrap().len(), 3);
    let s = call(&app, "GET", "/ledger/summary", None, None).await;
    assert_eq!(s.body["total_balance"], 0);
}

#[tokio::test]
async fn bad_input_gets_json_4xx() {
    let app = bank();
    let body = json!({"amount": 1, "counterparty": "acc-card-settlement", "reference": "p"});
    let r = call(
        &app,
        "POST",
        "/accounts/acc-kim/debit",
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "missing_idempotency_key");
    let r = call(
        &app,
        "POST",
        "/accounts/nobody/debit",
        Some("x"),
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        "POST",
        "/transfers",
        Some("y"),
        Some(json!({"amount": "lots"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let zero = json!({"from": "acc-kim", "to": "acc-lee", "amount": 0, "reference": "z"});
    let r = call(&app, "POST", "/transfers", Some("z"), Some(zero)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let same = json!({"from": "acc-kim", "to": "acc-kim", "amount": 5, "reference": "z"});
    let r = call(&app, "POST", "/transfers", Some("s"), Some(same)).await;
    assert_eq!(r.body["code"], "same_account");
    let r = call(&app, "GET", "/nowhere", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["code"], "no_route");
    let spec = call(&app, "GET", "/openapi.json", None, None).await;
    assert!(spec.body["paths"]["/transfers"]["post"].is_object());
}

#[tokio::test]
async fn the_equity_account_cannot_be_posted_to_or_from() {
    let app = bank();
    let mint = json!({"amount": 1_000_000, "counterparty": "bank-equity", "reference": "mint"});
    let r = call(
        &app,
        "POST",
        "/accounts/acc-park/credit",
        Some("m1"),
        Some(mint.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["code"], "equity_account");
    let r = call(
        &app,
        "POST",
        "/accounts/acc-park/debit",
        Some("m2"),
        Some(mint),
    )
    .await;
    assert_eq!(r.body["code"], "equity_account");
    let from_equity =
        json!({"from": "bank-equity", "to": "acc-park", "amount": 1_000_000, "reference": "mint"});
    let r = call(&app, "POST", "/transfers", Some("m3"), Some(from_equity)).await;
    assert_eq!(r.body["code"], "equity_account");

    assert_eq!(balance(&app, "acc-park").await, 20_000);
    let s = call(&app, "GET", "/ledger/summary", None, None).await;
    assert_eq!(s.body["customer_and_settlement_total"], 1_800_020_000_i64);
    assert_eq!(s.body["transactions"], 1, "only the opening transaction");
}
