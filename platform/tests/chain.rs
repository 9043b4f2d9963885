//! The whole chain in-process (order → pg → appcard/card → bank), wired by URL on 127.0.0.1:
//! a customer orders and pays, every service records the payment once, a cancel reverses
//! every step, and declines (insufficient funds, wrong PIN, over limit) fail with clear errors
//! and change no balance.

mod support;

use std::future::Future;
use std::time::Duration;

use onemesh_platform::run::Service;
use serde_json::{Value, json};
use support::{MERCHANT_KEY, Platform};

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s");
}

fn key() -> String {
    format!("test-{:016x}", fastrand::u64(..))
}

async fn balance(p: &Platform, account: &str) -> i64 {
    let (_, a) = p
        .http
        .get(&format!("{}/accounts/{account}", p.url(Service::Bank)))
        .await;
    a["balance"].as_i64().unwrap()
}

async fn bank_txns(p: &Platform, reference: &str) -> Vec<Value> {
    let (_, t) = p
        .http
        .get(&format!(
            "{}/transactions?reference={reference}",
            p.url(Service::Bank)
        ))
        .await;
    t.as_array().unwrap().clone()
}

async fn new_order(p: &Platform, items: Value) -> Value {
    let (status, order) = p
        .http
        .post(
            &format!("{}/orders", p.url(Service::Order)),
            &key(),
            json!({"table_no": 7, "items": items}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "PENDING");
    order
}

async fn pg_payment(p: &Platform, id: &str) -> Value {
    let (status, payment) = p
        .http
        .get_with(
            &format!("{}/payments/{id}", p.url(Service::Pg)),
            &[("x-merchant-key", MERCHANT_KEY)],
        )
        .await;
    assert_eq!(status, 200, "{payment}");
    payment
}

async fn authorizations(p: &Platform, payment_ref: &str) -> Vec<Value> {
    let (_, a) = p
        .http
        .get(&format!(
            "{}/authorizations?payment_ref={payment_ref}",
            p.url(Service::Card)
        ))
        .await;
    a.as_array().unwrap().clone()
}

const KIM: &str = "acc-kim";
const SETTLEMENT: &str = "acc-card-settlement";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appcard_payment_records_once_everywhere_and_cancel_reverses_every_step() {
    bounded(async {
        let p = Platform::start(&[]).await;
        let kim_before = balance(&p, KIM).await;
        let order = new_order(
            &p,
            json!([{"menu_id": "m-bibimbap", "qty": 2}, {"menu_id": "m-soju", "qty": 1}]),
        )
        .await;
        let id = order["id"].as_str().unwrap();
        assert_eq!(order["amount"], 29_000);

        let pay_url = format!("{}/orders/{id}/pay", p.url(Service::Order));
        let pay =
            json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
        let pay_key = key();
        let (status, paid) = p.http.post(&pay_url, &pay_key, pay.clone()).await;
        assert_eq!(status, 200, "{paid}");
        assert_eq!(paid["status"], "PAID");
        let payment_id = paid["payment_id"].as_str().unwrap().to_string();
        let approval_no = paid["approval_no"].as_str().unwrap().to_string();

        // A retried pay (same key) replays; a new pay of a paid order is refused; neither charges.
        let (status, replay) = p.http.post(&pay_url, &pay_key, pay.clone()).await;
        assert_eq!((status, &replay), (200, &paid));
        let (status, again) = p.http.post(&pay_url, &key(), pay.clone()).await;
        assert_eq!(status, 409, "{again}");

        let payment = pg_payment(&p, &payment_id).await;
        assert_eq!(payment["status"], "APPROVED");
        assert_eq!(payment["approval_no"], approval_no.as_str());
        let auths = authorizations(&p, &payment_id).await;
        assert_eq!(auths.len(), 1, "exactly one approval");
        assert_eq!(auths[0]["status"], "APPROVED");
        assert_eq!(auths[0]["approval_no"], approval_no.as_str());
        let (_, wallet) = p
            .http
            .get(&format!(
                "{}/payments/{payment_id}",
                p.url(Service::Appcard)
            ))
            .await;
        assert_eq!(wallet["status"], "APPROVED");
        let txns = bank_txns(&p, &payment_id).await;
        assert_eq!(txns.len(), 1, "exactly one debit: {txns:?}");
        assert_eq!(txns[0]["kind"], "debit");
        assert_eq!(balance(&p, KIM).await, kim_before - 29_000);

        // Cancel reverses every step, once.
        let cancel_url = format!("{}/orders/{id}/cancel", p.url(Service::Order));
        let cancel_key = key();
        let (status, cancelled) = p.http.post(&cancel_url, &cancel_key, json!({})).await;
        assert_eq!(status, 200, "{cancelled}");
        assert_eq!(cancelled["status"], "CANCELLED");
        let (status, _) = p.http.post(&cancel_url, &key(), json!({})).await;
        assert_eq!(status, 200, "cancelling a cancelled order is a no-op");
        assert_eq!(pg_payment(&p, &payment_id).await["status"], "CANCELLED");
        assert_eq!(
            authorizations(&p, &payment_id).await[0]["status"],
            "CANCELLED"
        );
        let (_, wallet) = p
            .http
            .get(&format!(
                "{}/payments/{payment_id}",
                p.url(Service::Appcard)
            ))
            .await;
        assert_eq!(wallet["status"], "CANCELLED");
        let txns = bank_txns(&p, &payment_id).await;
        let kinds: Vec<&str> = txns.iter().map(|t| t["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["debit", "credit"], "one debit and one refund");
        assert_eq!(balance(&p, KIM).await, kim_before);
        assert_eq!(balance(&p, SETTLEMENT).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_number_payment_on_credit_holds_limit_and_cancel_releases_it() {
    bounded(async {
        let p = Platform::start(&[]).await;
        let order = new_order(&p, json!([{"menu_id": "m-bulgogi", "qty": 1}])).await;
        let id = order["id"].as_str().unwrap();
        let (status, paid) = p
            .http
            .post(
                &format!("{}/orders/{id}/pay", p.url(Service::Order)),
                &key(),
                json!({"method": "card", "card_number": "9410000000000002"}),
            )
            .await;
        assert_eq!(status, 200, "{paid}");
        let payment_id = paid["payment_id"].as_str().unwrap();
        let card_url = format!("{}/cards/9410000000000002", p.url(Service::Card));
        assert_eq!(p.http.get(&card_url).await.1["used"], 18_000);
        assert!(
            bank_txns(&p, payment_id).await.is_empty(),
            "credit cards do not touch the bank"
        );
        assert_eq!(authorizations(&p, payment_id).await.len(), 1);

        let (status, _) = p
            .http
            .post(
                &format!("{}/orders/{id}/cancel", p.url(Service::Order)),
                &key(),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(p.http.get(&card_url).await.1["used"], 0);
    })
    .await;
}

async fn declined(p: &Platform, items: Value, pay: Value, code: &str) {
    let summary_before = p
        .http
        .get(&format!("{}/ledger/summary", p.url(Service::Bank)))
        .await
        .1;
    let (_, accounts_before) = p
        .http
        .get(&format!("{}/accounts", p.url(Service::Bank)))
        .await;
    let order = new_order(p, items).await;
    let id = order["id"].as_str().unwrap();
    let (status, err) = p
        .http
        .post(
            &format!("{}/orders/{id}/pay", p.url(Service::Order)),
            &key(),
            pay,
        )
        .await;
    assert_eq!(status, 402, "{err}");
    assert_eq!(err["code"], code, "{err}");
    assert!(!err["error"].as_str().unwrap().is_empty());
    let (_, order) = p
        .http
        .get(&format!("{}/orders/{id}", p.url(Service::Order)))
        .await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_code"], code);
    let (_, payments) = p
        .http
        .get_with(
            &format!("{}/payments?order_id={id}", p.url(Service::Pg)),
            &[("x-merchant-key", MERCHANT_KEY)],
        )
        .await;
    let payment = &payments[0];
    assert_eq!(payment["status"], "DECLINED");
    assert_eq!(payment["decline_code"], code);
    let payment_id = payment["id"].as_str().unwrap();
    assert!(
        authorizations(p, payment_id).await.is_empty(),
        "no approval for a decline"
    );
    assert!(
        bank_txns(p, payment_id).await.is_empty(),
        "no bank posting for a decline"
    );
    let (_, accounts_after) = p
        .http
        .get(&format!("{}/accounts", p.url(Service::Bank)))
        .await;
    assert_eq!(accounts_before, accounts_after, "no balance changed");
    let summary_after = p
        .http
        .get(&format!("{}/ledger/summary", p.url(Service::Bank)))
        .await
        .1;
    assert_eq!(summary_before, summary_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_fail_with_clear_errors_and_change_no_balance() {
    bounded(async {
        let p = Platform::start(&[]).await;
        declined(
            &p,
            json!([{"menu_id": "m-bulgogi", "qty": 2}]),
            json!({"method": "appcard", "user_id": "u-park", "card_id": "c-park-3", "pin": "0000"}),
            "insufficient_funds",
        )
        .await;
        declined(
            &p,
            json!([{"menu_id": "m-soju", "qty": 1}]),
            json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "9999"}),
            "wrong_pin",
        )
        .await;
        declined(
            &p,
            json!([{"menu_id": "m-hanwoo", "qty": 1}]),
            json!({"method": "appcard", "user_id": "u-choi", "card_id": "c-choi-4", "pin": "1111"}),
            "over_limit",
        )
        .await;
        declined(
            &p,
            json!([{"menu_id": "m-soju", "qty": 1}]),
            json!({"method": "card", "card_number": "9410000000000005"}),
            "card_inactive",
        )
        .await;
        declined(
            &p,
            json!([{"menu_id": "m-hanwoo", "qty": 14}]),
            json!({"method": "card", "card_number": "9410000000000001"}),
            "fraud_amount_ceiling",
        )
        .await;
        let (_, card) = p
            .http
            .get(&format!("{}/cards/9410000000000004", p.url(Service::Card)))
            .await;
        assert_eq!(card["used"], 0, "over-limit holds nothing");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_outage_leaves_order_pending_and_a_retry_charges_once() {
    bounded(async {
        let p = Platform::start(&[Service::Bank]).await;
        let order = new_order(&p, json!([{"menu_id": "m-tteokbokki", "qty": 3}])).await;
        let id = order["id"].as_str().unwrap();
        let pay_url = format!("{}/orders/{id}/pay", p.url(Service::Order));
        let pay = json!({"method": "card", "card_number": "9410000000000006"});
        let pay_key = key();
        let (status, err) = p.http.post(&pay_url, &pay_key, pay.clone()).await;
        assert_eq!(status, 503, "{err}");
        assert_eq!(err["code"], "payment_unavailable");
        let (_, pending) = p
            .http
            .get(&format!("{}/orders/{id}", p.url(Service::Order)))
            .await;
        assert_eq!(pending["status"], "PENDING");
        // A different pay request for the same order is refused while the first is unresolved.
        let other =
            json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
        let (status, _) = p.http.post(&pay_url, &key(), other).await;
        assert_eq!(status, 409);

        p.serve(Service::Bank).await;
        let before = balance(&p, "acc-choi").await;
        let (status, paid) = p.http.post(&pay_url, &pay_key, pay.clone()).await;
        assert_eq!(status, 200, "{paid}");
        assert_eq!(paid["status"], "PAID");
        let payment_id = paid["payment_id"].as_str().unwrap();
        assert_eq!(bank_txns(&p, payment_id).await.len(), 1);
        assert_eq!(balance(&p, "acc-choi").await, before - 21_000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_checkout_and_settlement_report() {
    bounded(async {
        let p = Platform::start(&[]).await;
        let o = p.url(Service::Order);
        let (status, cart) = p.http.post(&format!("{o}/carts"), &key(), json!({"table_no": 3})).await;
        assert_eq!(status, 201, "{cart}");
        let cart_id = cart["id"].as_str().unwrap();
        for (dish, qty) in [("m-bibimbap", 1), ("m-kimchi-jjigae", 2), ("m-bibimbap", 1)] {
            let (status, _) = p
                .http
                .post(&format!("{o}/carts/{cart_id}/items"), &key(), json!({"menu_id": dish, "qty": qty}))
                .await;
            assert_eq!(status, 200);
        }
        let (status, order) = p.http.post(&format!("{o}/carts/{cart_id}/checkout"), &key(), json!({})).await;
        assert_eq!(status, 201, "{order}");
        assert_eq!(order["amount"], 2 * 12_000 + 2 * 9_000);
        let (status, _) = p.http.post(&format!("{o}/carts/{cart_id}/checkout"), &key(), json!({})).await;
        assert_eq!(status, 409, "a cart checks out once");
        let id = order["id"].as_str().unwrap();
        let (status, _) = p
            .http
            .post(
                &format!("{o}/orders/{id}/pay"),
                &key(),
                json!({"method": "appcard", "user_id": "u-lee", "card_id": "c-lee-2", "pin": "5678"}),
            )
            .await;
        assert_eq!(status, 200);

        let today = onemesh_platform::common::date_of_ms(onemesh_platform::common::now_ms());
        let (status, report) = p
            .http
            .get_with(
                &format!("{}/merchants/tableshop/settlement?date={today}", p.url(Service::Pg)),
                &[("x-merchant-key", MERCHANT_KEY)],
            )
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["gross"], 42_000);
        assert_eq!(report["fees"], 42_000 * 250 / 10_000);
        assert_eq!(report["net"], 42_000 - 1_050);
        let (status, _) = p
            .http
            .get_with(
                &format!("{}/merchants/cafe/settlement?date={today}", p.url(Service::Pg)),
                &[("x-merchant-key", MERCHANT_KEY)],
            )
            .await;
        assert_eq!(status, 403, "a merchant reads only its own settlement");
    })
    .await;
}
