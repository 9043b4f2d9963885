//! The reference platform under `onemesh up`, as the README's first command runs it (the repo's
//! own mesh.yaml, less the traffic generator so balances are ours to check): a customer orders
//! and pays through the public entry, the money moves once along order → pg → appcard → card →
//! bank over mTLS, a cancel reverses every step, declines change no balance, and the payment-chain
//! policy holds: only `card` reaches `bank`; everyone else gets a 403 naming the policy. (The
//! dashboard in headless Chromium: tests/observe.rs.)

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Up, request};

/// The repo's mesh.yaml without the `customers` traffic generator.
fn platform_mesh() -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mesh.yaml"))
            .unwrap();
    let docs: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("name: customers"))
        .collect();
    assert!(docs.len() > 15, "mesh.yaml lost its resources");
    docs.join("\n---\n")
}

struct Platform {
    up: Up,
}

impl Platform {
    fn app(&self, key: &str) -> String {
        let w = self.up.workload(key);
        let port = w["app_ports"]["8080"].as_u64().unwrap();
        format!("127.0.0.1:{port}")
    }

    fn entry(&self) -> String {
        let url = self.up.status()["entries"]["order/order"]
            .as_str()
            .unwrap()
            .to_string();
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    async fn call(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: &str,
    ) -> (u16, Value) {
        let (status, body) = http(addr, method, path, body, key).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// GETs `path` from a workload's app directly (a check behind the mesh's back).
    async fn get(&self, workload: &str, path: &str) -> Value {
        let (status, v) = self.call(&self.app(workload), "GET", path, None, "").await;
        assert_eq!(status, 200, "GET {path} at {workload}: {v}");
        v
    }

    async fn balance(&self, account: &str) -> i64 {
        let (status, v) = self
            .call(
                &self.app("bank/bank"),
                "GET",
                &format!("/accounts/{account}"),
                None,
                "",
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["balance"].as_i64().unwrap()
    }
}

/// A JSON request straight to an address (the entry, or an app behind its proxy for checks).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("x-merchant-key", "sk_test_tableshop");
    if !key.is_empty() {
        req = req.header("idempotency-key", key);
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    if !bytes.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = send
        .send_request(req.body(Full::new(bytes::Bytes::from(bytes))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn new_order(p: &Platform, menu: &str, qty: i64, key: &str) -> Value {
    let (status, order) = p
        .call(
            &p.entry(),
            "POST",
            "/orders",
            Some(json!({"table_no": 7, "items": [{"menu_id": menu, "qty": qty}]})),
            key,
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "create order: {status} {order}"
    );
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_pays_and_cancels_through_the_mesh_and_policy_holds() {
    let bins = support::bin_dir();
    assert!(
        bins.join("onemesh-platform").exists(),
        "onemesh-platform is not built: run `cargo build --workspace --bins` first (scripts/test does)"
    );
    let p = Platform {
        up: Up::start("platform", &platform_mesh()),
    };
    let kim_before = p.balance("acc-kim").await;
    let settlement_before = p.balance("acc-card-settlement").await;

    // Order and pay with Kim's app card (a check card: the bank is debited).
    let order = new_order(&p, "m-bibimbap", 2, "t-order-1").await;
    let id = order["id"].as_str().unwrap().to_string();
    let amount = order["amount"].as_i64().unwrap();
    assert_eq!(amount, 24_000);
    let pay = json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
    let (status, paid) = p
        .call(
            &p.entry(),
            "POST",
            &format!("/orders/{id}/pay"),
            Some(pay.clone()),
            "t-pay-1",
        )
        .await;
    assert_eq!(status, 200, "pay: {paid}\n{}", p.up.log());
    assert_eq!(paid["status"], "PAID");
    // The same pay retried (same key) charges nothing more.
    let (status, again) = p
        .call(
            &p.entry(),
            "POST",
            &format!("/orders/{id}/pay"),
            Some(pay),
            "t-pay-1",
        )
        .await;
    assert_eq!((status, &again["status"]), (200, &json!("PAID")));

    let payment = paid["payment_id"].as_str().unwrap().to_string();
    let pg = p.get("pg/pg", &format!("/payments/{payment}")).await;
    assert_eq!(pg["status"], "APPROVED", "{pg}");
    let auths = p
        .get(
            "card/card",
            &format!("/authorizations?payment_ref={payment}"),
        )
        .await;
    let auths = auths.as_array().unwrap();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(auths[0]["status"], "APPROVED");
    let txns = p
        .get("bank/bank", &format!("/transactions?reference={payment}"))
        .await;
    let debits: Vec<&Value> = txns
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "debit")
        .collect();
    assert_eq!(debits.len(), 1, "exactly one debit: {txns}");
    assert_eq!(p.balance("acc-kim").await, kim_before - amount);
    assert_eq!(
        p.balance("acc-card-settlement").await,
        settlement_before + amount
    );

    // Cancel reverses every step.
    let (status, cancelled) = p
        .call(
            &p.entry(),
            "POST",
            &format!("/orders/{id}/cancel"),
            None,
            "t-cancel-1",
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    let pg = p.get("pg/pg", &format!("/payments/{payment}")).await;
    assert_eq!(pg["status"], "CANCELLED", "{pg}");
    let auths = p
        .get(
            "card/card",
            &format!("/authorizations?payment_ref={payment}"),
        )
        .await;
    assert_ne!(auths[0]["status"], "APPROVED", "{auths}");
    assert_eq!(p.balance("acc-kim").await, kim_before);
    assert_eq!(p.balance("acc-card-settlement").await, settlement_before);

    // Insufficient funds and a wrong PIN fail clearly and move no money.
    let park_before = p.balance("acc-park").await;
    let order = new_order(&p, "m-hanwoo", 1, "t-order-2").await;
    let (status, refused) = p
        .call(&p.entry(), "POST", &format!("/orders/{}/pay", order["id"].as_str().unwrap()),
            Some(json!({"method": "appcard", "user_id": "u-park", "card_id": "c-park-3", "pin": "0000"})), "t-pay-2")
        .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["code"], "insufficient_funds", "{refused}");
    assert_eq!(p.balance("acc-park").await, park_before);
    let order = new_order(&p, "m-soju", 1, "t-order-3").await;
    let (status, refused) = p
        .call(&p.entry(), "POST", &format!("/orders/{}/pay", order["id"].as_str().unwrap()),
            Some(json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "9999"})), "t-pay-3")
        .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["code"], "wrong_pin", "{refused}");
    assert_eq!(p.balance("acc-kim").await, kim_before);

    // Only card may call the bank: everyone else gets the mesh's 403 naming the policy.
    for caller in ["order/order", "pg/pg", "appcard/appcard"] {
        let outbound = p.up.workload(caller)["outbound"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, headers, body) =
            request(&outbound, "GET", "bank.bank", "/accounts", b"").await;
        assert_eq!(status, 403, "{caller} reached the bank: {body}");
        assert_eq!(headers["onemesh-error"], "forbidden");
        assert!(body.contains("bank-allow-card"), "{caller}: {body}");
    }
    let outbound = p.up.workload("card/card")["outbound"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, body) = request(&outbound, "GET", "bank.bank", "/accounts", b"").await;
    assert_eq!(status, 200, "card cannot reach the bank: {body}");
}
