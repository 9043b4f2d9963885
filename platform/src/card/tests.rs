//! The issuer in memory (with a loopback bank for check cards): approvals, declines by rule,
//! limit holds and releases, idempotent authorization and cancel, tokens.

use serde_json::json;

use super::*;
use crate::common::testing::{call, client_config, dead_url, local_bank};

async fn issuer(bank_url: &str) -> Router {
    app(CardState {
        db: Db::open_in_memory(MIGRATIONS).unwrap(),
        bank: Upstream::new("bank", bank_url, client_config()).unwrap(),
    })
}

fn auth(card: &str, amount: i64, reference: &str) -> serde_json::Value {
    json!({"card_number": card, "amount": amount, "merchant": "tableshop", "payment_ref": reference})
}

#[tokio::test]
async fn credit_authorization_holds_limit_once_and_cancel_releases() {
    let app = issuer(&dead_url()).await; // credit cards never call the bank
    let body = auth("9410000000000002", 30_000, "pay_a");
    let first = call(
        &app,
        "POST",
        "/authorizations",
        Some("k1"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(first.body["status"], "APPROVED");
    assert_eq!(first.body["approval_no"].as_str().unwrap().len(), 8);
    let again = call(
        &app,
        "POST",
        "/authorizations",
        Some("k1"),
        Some(body.clone()),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    let other_key = call(&app, "POST", "/authorizations", Some("k2"), Some(body)).await;
    assert_eq!(other_key.status, StatusCode::CONFLICT);
    assert_eq!(other_key.body["code"], "duplicate_payment");
    let card = call(&app, "GET", "/cards/9410000000000002", None, None).await;
    assert_eq!(card.body["used"], 30_000);
    assert_eq!(card.body["masked_number"], "9410-****-****-0002");

    let id = first.body["id"].as_str().unwrap();
    let uri = format!("/authorizations/{id}/cancel");
    let c = call(&app, "POST", &uri, Some("c1"), None).await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(c.body["status"], "CANCELLED");
    let c2 = call(&app, "POST", &uri, Some("c2"), None).await;
    assert_eq!(
        c2.body["status"], "CANCELLED",
        "a second cancel changes nothing"
    );
    let card = call(&app, "GET", "/cards/9410000000000002", None, None).await;
    assert_eq!(card.body["used"], 0);
}

#[tokio::test]
async fn rules_decline_with_codes() {
    let app = issuer(&dead_url()).await;
    for (body, status, code) in [
        (
            auth("9410000000000004", 100_001, "r1"),
            StatusCode::PAYMENT_REQUIRED,
            "over_limit",
        ),
        (
            auth("9410000000000005", 1_000, "r2"),
            StatusCode::PAYMENT_REQUIRED,
            "card_inactive",
        ),
        (
            auth("9410000000000002", FRAUD_CEILING + 1, "r3"),
            StatusCode::PAYMENT_REQUIRED,
            "fraud_amount_ceiling",
        ),
        (
            auth("9999000000000000", 1_000, "r4"),
            StatusCode::NOT_FOUND,
            "unknown_card",
        ),
        (
            json!({"amount": 5, "merchant": "m", "payment_ref": "r5"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "card_choice",
        ),
        (
            auth("12", 1_000, "r6"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_data",
        ),
    ] {
        let r = call(
            &app,
            "POST",
            "/authorizations",
            Some(&format!("k-{code}")),
            Some(body),
        )
        .await;
        assert_eq!(r.status, status, "{:?}", r.body);
        assert_eq!(r.body["code"], code);
    }
    let list = call(&app, "GET", "/authorizations", None, None).await;
    assert!(
        list.body.as_array().unwrap().is_empty(),
        "declines record no approval"
    );
}

#[tokio::test]
async fn check_card_debits_the_bank_once_and_refunds_on_cancel() {
    let bank_url = local_bank().await;
    let app = issuer(&bank_url).await;
    let body = json!({"token": "tok_kim_1", "amount": 12_000, "merchant": "tableshop", "payment_ref": "pay_c"});
    let first = call(
        &app,
        "POST",
        "/authorizations",
        Some("k"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = call(&app, "POST", "/authorizations", Some("k"), Some(body)).await;
    assert!(again.replayed);

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let txns: serde_json::Value = http
        .get(format!("{bank_url}/transactions?reference=pay_c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(txns.as_array().unwrap().len(), 1, "one debit");

    let id = first.body["id"].as_str().unwrap();
    let c = call(
        &app,
        "POST",
        &format!("/authorizations/{id}/cancel"),
        Some("c"),
        None,
    )
    .await;
    assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    let txns: serde_json::Value = http
        .get(format!("{bank_url}/transactions?reference=pay_c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = txns
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["debit", "credit"]);
}

#[tokio::test]
async fn check_card_declines_on_insufficient_funds_and_503s_without_bank() {
    let bank_url = local_bank().await;
    let app = issuer(&bank_url).await;
    let r = call(
        &app,
        "POST",
        "/authorizations",
        Some("k"),
        Some(auth("9410000000000003", 20_001, "p1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.body["code"], "insufficient_funds");

    let offline = issuer(&dead_url()).await;
    let r = call(
        &offline,
        "POST",
        "/authorizations",
        Some("k"),
        Some(auth("9410000000000001", 1_000, "p2")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["code"], "bank_unavailable");
    let list = call(
        &offline,
        "GET",
        "/authorizations?payment_ref=p2",
        None,
        None,
    )
    .await;
    assert!(
        list.body.as_array().unwrap().is_empty(),
        "nothing recorded while the bank is down"
    );
}

#[tokio::test]
async fn tokens_are_issued_for_active_cards_only() {
    let app = issuer(&dead_url()).await;
    let r = call(
        &app,
        "POST",
        "/tokens",
        Some("t1"),
        Some(json!({"card_number": "9410000000000006"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["last4"], "0006");
    assert!(r.body["token"].as_str().unwrap().starts_with("tok_"));
    let r = call(
        &app,
        "POST",
        "/tokens",
        Some("t2"),
        Some(json!({"card_number": "9410000000000005"})),
    )
    .await;
    assert_eq!(r.body["code"], "card_inactive");
}

#[tokio::test]
async fn a_crash_between_debit_and_approval_heals_on_retry_without_a_second_debit() {
    let bank_url = local_bank().await;
    let app = issuer(&bank_url).await;
    // The state a crash leaves: the bank booked the debit under the derived key, the issuer
    // recorded nothing (its transaction never committed).
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let debit = http
        .post(format!("{bank_url}/accounts/acc-kim/debit"))
        .header(
            "idempotency-key",
            crate::common::derive_key("card", "pay_crash", "debit"),
        )
        .json(
            &json!({"amount": 7_000, "counterparty": SETTLEMENT_ACCOUNT, "reference": "pay_crash"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(debit.status(), 201);
    // The caller retries: the issuer approves, and the bank replays instead of debiting again.
    let r = call(
        &app,
        "POST",
        "/authorizations",
        Some("retry"),
        Some(auth("9410000000000001", 7_000, "pay_crash")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["status"], "APPROVED");
    let txns: serde_json::Value = http
        .get(format!("{bank_url}/transactions?reference=pay_crash"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(txns.as_array().unwrap().len(), 1, "still exactly one debit");
    let kim: serde_json::Value = http
        .get(format!("{bank_url}/accounts/acc-kim"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kim["balance"], 1_000_000_000 - 7_000);
}
