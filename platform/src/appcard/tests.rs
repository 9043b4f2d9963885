//! The wallet in memory (with a loopback issuer): PIN checks before the issuer is asked,
//! confirmation and cancel recorded once, registration keeps only the token.

use serde_json::json;

use super::*;
use crate::common::testing::{call, client_config, dead_url, local_card};

fn wallet(card_url: &str) -> Router {
    app(AppcardState {
        db: Db::open_in_memory(MIGRATIONS).unwrap(),
        card: Upstream::new("card", card_url, client_config()).unwrap(),
    })
}

fn confirm(user: &str, card: &str, pin: &str, reference: &str) -> serde_json::Value {
    json!({"payment_ref": reference, "user_id": user, "card_id": card, "pin": pin,
           "amount": 10_000, "merchant": "tableshop"})
}

#[tokio::test]
async fn wrong_pin_and_unknown_card_are_refused_before_the_issuer() {
    let app = wallet(&dead_url()); // the issuer is never reached
    let r = call(
        &app,
        "POST",
        "/payments",
        Some("k1"),
        Some(confirm("u-kim", "c-kim-1", "0000", "p1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["code"], "wrong_pin");
    let r = call(
        &app,
        "POST",
        "/payments",
        Some("k2"),
        Some(confirm("u-kim", "c-lee-2", "1234", "p2")),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["code"], "no_card");
    let r = call(
        &app,
        "POST",
        "/payments",
        Some("k3"),
        Some(confirm("u-nobody", "c-kim-1", "1234", "p3")),
    )
    .await;
    assert_eq!(r.body["code"], "no_user");
    // Right PIN, issuer down: 503 and nothing stored, so a retry can still succeed.
    let r = call(
        &app,
        "POST",
        "/payments",
        Some("k4"),
        Some(confirm("u-kim", "c-kim-1", "1234", "p4")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["code"], "card_unavailable");
    let list = call(&app, "GET", "/payments", None, None).await;
    assert!(list.body.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn confirm_and_cancel_are_recorded_once() {
    let app = wallet(&local_card().await);
    let body = confirm("u-lee", "c-lee-2", "5678", "pay_1");
    let first = call(&app, "POST", "/payments", Some("k"), Some(body.clone())).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(first.body["status"], "APPROVED");
    assert_eq!(first.body["approval_no"].as_str().unwrap().len(), 8);
    let again = call(&app, "POST", "/payments", Some("k"), Some(body)).await;
    assert!(again.replayed);
    let c = call(&app, "POST", "/payments/pay_1/cancel", Some("c"), None).await;
    assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    assert_eq!(c.body["status"], "CANCELLED");
    let p = call(&app, "GET", "/payments/pay_1", None, None).await;
    assert_eq!(p.body["status"], "CANCELLED");
}

#[tokio::test]
async fn registering_a_card_keeps_only_the_token() {
    let app = wallet(&local_card().await);
    let u = call(
        &app,
        "POST",
        "/users",
        Some("u1"),
        Some(json!({"name": "Jung Hoseok", "pin": "2468"})),
    )
    .await;
    assert_eq!(u.status, StatusCode::CREATED);
    let id = u.body["id"].as_str().unwrap();
    let r = call(
        &app,
        "POST",
        &format!("/users/{id}/cards"),
        Some("r1"),
        Some(json!({"card_number": "9410000000000006"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["last4"], "0006");
    let text = r.body.to_string();
    assert!(
        !text.contains("9410000000000006"),
        "the number never comes back"
    );
    let cards = call(&app, "GET", &format!("/users/{id}/cards"), None, None).await;
    assert_eq!(cards.body.as_array().unwrap().len(), 1);
    // The new user can pay with the new card and their PIN.
    let card_id = r.body["id"].as_str().unwrap();
    let p = call(
        &app,
        "POST",
        "/payments",
        Some("p"),
        Some(confirm(id, card_id, "2468", "pay_new")),
    )
    .await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
    let bad = call(
        &app,
        "POST",
        "/users",
        Some("u2"),
        Some(json!({"name": "x", "pin": "12"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}
