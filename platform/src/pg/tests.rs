//! The gateway in memory: merchant keys, method validation, routing to a loopback issuer,
//! one payment per order, an unknown outcome left REQUESTED and resolved by a retry.

use serde_json::json;

use super::*;
use crate::common::testing::{call_with, client_config, dead_url, local_card};

fn gateway(appcard: &str, card: &str) -> Router {
    app(PgState {
        db: Db::open_in_memory(MIGRATIONS).unwrap(),
        appcard: Upstream::new("appcard", appcard, client_config()).unwrap(),
        card: Upstream::new("card", card, client_config()).unwrap(),
    })
}

const KEY: (&str, &str) = ("x-merchant-key", "sk_test_tableshop");

fn card_payment(order: &str, amount: i64) -> serde_json::Value {
    json!({"order_id": order, "amount": amount, "method": "card", "card_number": "9410000000000002"})
}

#[tokio::test]
async fn merchant_key_and_method_details_are_required() {
    let app = gateway(&dead_url(), &dead_url());
    let r = call_with(
        &app,
        "POST",
        "/payments",
        Some("k"),
        &[],
        Some(card_payment("o1", 1_000)),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call_with(
        &app,
        "POST",
        "/payments",
        Some("k"),
        &[("x-merchant-key", "nope")],
        Some(card_payment("o1", 1_000)),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call_with(
        &app,
        "POST",
        "/payments",
        Some("k"),
        &[KEY],
        Some(json!({"order_id": "o1", "amount": 1000, "method": "appcard", "user_id": "u-kim"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["code"], "missing_details");
    let r = call_with(&app, "GET", "/payments/pay_nope", None, &[KEY], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn card_payment_is_approved_once_per_order_and_cancelled() {
    let app = gateway(&dead_url(), &local_card().await);
    let body = card_payment("o-1", 25_000);
    let first = call_with(
        &app,
        "POST",
        "/payments",
        Some("k1"),
        &[KEY],
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(first.body["status"], "APPROVED");
    let again = call_with(
        &app,
        "POST",
        "/payments",
        Some("k1"),
        &[KEY],
        Some(body.clone()),
    )
    .await;
    assert!(again.replayed);
    let dup = call_with(&app, "POST", "/payments", Some("k2"), &[KEY], Some(body)).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["code"], "duplicate_order");

    let id = first.body["id"].as_str().unwrap();
    let c = call_with(
        &app,
        "POST",
        &format!("/payments/{id}/cancel"),
        Some("c1"),
        &[KEY],
        None,
    )
    .await;
    assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    assert_eq!(c.body["status"], "CANCELLED");
    let list = call_with(&app, "GET", "/payments?order_id=o-1", None, &[KEY], None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn decline_is_final_and_unknown_outcome_stays_requested() {
    let card = local_card().await;
    let app = gateway(&dead_url(), &card);
    let over = json!({"order_id": "o-big", "amount": 100_001, "method": "card", "card_number": "9410000000000004"});
    let r = call_with(&app, "POST", "/payments", Some("k"), &[KEY], Some(over)).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.body["code"], "over_limit");

    // appcard is down: the payment stays REQUESTED and the caller is told to retry.
    let body = json!({"order_id": "o-app", "amount": 5_000, "method": "appcard",
                      "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
    let r = call_with(&app, "POST", "/payments", Some("ka"), &[KEY], Some(body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let list = call_with(&app, "GET", "/payments?order_id=o-app", None, &[KEY], None).await;
    assert_eq!(list.body[0]["status"], "REQUESTED");
}

#[tokio::test]
async fn settlement_needs_a_valid_day_and_the_own_key() {
    let app = gateway(&dead_url(), &dead_url());
    let r = call_with(
        &app,
        "GET",
        "/merchants/tableshop/settlement?date=2026-11-25",
        None,
        &[KEY],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["gross"], 0);
    assert_eq!(r.body["fee_bps"], 250);
    let r = call_with(
        &app,
        "GET",
        "/merchants/tableshop/settlement?date=yesterday",
        None,
        &[KEY],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call_with(
        &app,
        "GET",
        "/merchants/cafe/settlement?date=2026-11-25",
        None,
        &[KEY],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
