//! The shop in memory: menu, carts, orders, validation, and paying while the gateway is down
//! (503, order stays PENDING, a different pay request is refused).

use serde_json::json;

use super::*;
use crate::common::testing::{call, client_config, dead_url};

fn shop() -> Router {
    app(OrderState {
        db: Db::open_in_memory(MIGRATIONS).unwrap(),
        pg: Upstream::new("pg", &dead_url(), client_config()).unwrap(),
        merchant_key: "sk_test_tableshop".into(),
    })
}

#[tokio::test]
async fn menu_and_orders() {
    let app = shop();
    let menu = call(&app, "GET", "/menu", None, None).await;
    assert_eq!(menu.body.as_array().unwrap().len(), 6);
    let body = json!({"table_no": 4, "items": [{"menu_id": "m-bulgogi", "qty": 2}, {"menu_id": "m-soju", "qty": 3}]});
    let o = call(&app, "POST", "/orders", Some("o1"), Some(body.clone())).await;
    assert_eq!(o.status, StatusCode::CREATED);
    assert_eq!(o.body["amount"], 2 * 18_000 + 3 * 5_000);
    assert_eq!(o.body["status"], "PENDING");
    let again = call(&app, "POST", "/orders", Some("o1"), Some(body)).await;
    assert!(again.replayed);
    assert_eq!(
        again.body["id"], o.body["id"],
        "a retried order is the same order"
    );
    let all = call(&app, "GET", "/orders?status=PENDING", None, None).await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    let bad = call(&app, "GET", "/orders?status=LOST", None, None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn invalid_orders_are_refused() {
    let app = shop();
    for body in [
        json!({"table_no": 0, "items": [{"menu_id": "m-soju", "qty": 1}]}),
        json!({"table_no": 1, "items": []}),
        json!({"table_no": 1, "items": [{"menu_id": "m-soju", "qty": 21}]}),
        json!({"table_no": 1, "items": [{"menu_id": "m-pizza", "qty": 1}]}),
        json!({"table_no": "one"}),
    ] {
        let r = call(
            &app,
            "POST",
            "/orders",
            Some(&format!("{body}")),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {:?}",
            r.body
        );
    }
}

#[tokio::test]
async fn pay_with_gateway_down_stays_pending_and_pins_the_request() {
    let app = shop();
    let o = call(
        &app,
        "POST",
        "/orders",
        Some("o"),
        Some(json!({"table_no": 2, "items": [{"menu_id": "m-soju", "qty": 1}]})),
    )
    .await;
    let id = o.body["id"].as_str().unwrap();
    let uri = format!("/orders/{id}/pay");
    let pay = json!({"method": "card", "card_number": "9410000000000001"});
    let r = call(&app, "POST", &uri, Some("p1"), Some(pay.clone())).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["code"], "payment_unavailable");
    let other = json!({"method": "card", "card_number": "9410000000000002"});
    let r = call(&app, "POST", &uri, Some("p2"), Some(other)).await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "another pay request is refused while one is open"
    );
    let r = call(
        &app,
        "POST",
        &format!("/orders/{id}/cancel"),
        Some("c"),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "cannot cancel while the payment is unresolved"
    );
    let missing = call(
        &app,
        "POST",
        &uri,
        Some("p3"),
        Some(json!({"method": "appcard", "user_id": "u-kim"})),
    )
    .await;
    assert_eq!(missing.body["code"], "missing_details");
    let order = call(&app, "GET", &format!("/orders/{id}"), None, None).await;
    assert_eq!(order.body["status"], "PENDING");
}

#[tokio::test]
async fn unpaid_order_cancels_without_the_gateway_and_carts_check_out_once() {
    let app = shop();
    let o = call(
        &app,
        "POST",
        "/orders",
        Some("o"),
        Some(json!({"table_no": 2, "items": [{"menu_id": "m-soju", "qty": 1}]})),
    )
    .await;
    let id = o.body["id"].as_str().unwrap();
    let r = call(
        &app,
        "POST",
        &format!("/orders/{id}/cancel"),
        Some("c"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "CANCELLED");
    let r = call(
        &app,
        "POST",
        &format!("/orders/{id}/pay"),
        Some("p"),
        Some(json!({"method": "card", "card_number": "9410000000000001"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["code"], "wrong_state");

    let cart = call(
        &app,
        "POST",
        "/carts",
        Some("cart"),
        Some(json!({"table_no": 9})),
    )
    .await;
    let cid = cart.body["id"].as_str().unwrap();
    let empty = call(
        &app,
        "POST",
        &format!("/carts/{cid}/checkout"),
        Some("x"),
        None,
    )
    .await;
    assert_eq!(empty.status, StatusCode::CONFLICT);
    call(
        &app,
        "POST",
        &format!("/carts/{cid}/items"),
        Some("i"),
        Some(json!({"menu_id": "m-tteokbokki", "qty": 15})),
    )
    .await;
    let capped = call(
        &app,
        "POST",
        &format!("/carts/{cid}/items"),
        Some("j"),
        Some(json!({"menu_id": "m-tteokbokki", "qty": 10})),
    )
    .await;
    assert_eq!(
        capped.body["items"][0]["qty"], 20,
        "quantities add up to at most 20"
    );
    let done = call(
        &app,
        "POST",
        &format!("/carts/{cid}/checkout"),
        Some("y"),
        None,
    )
    .await;
    assert_eq!(done.status, StatusCode::CREATED);
    assert_eq!(done.body["amount"], 20 * 7_000);
    let late = call(
        &app,
        "POST",
        &format!("/carts/{cid}/items"),
        Some("z"),
        Some(json!({"menu_id": "m-soju", "qty": 1})),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
}
