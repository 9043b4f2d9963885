//! The reference platform under `onemesh up` for the fault tests (chaos, restart, file modes): the
//! repo's mesh.yaml less its traffic generator, a patient customer that retries each order with
//! the same `Idempotency-Key` until it ends, readiness probes that never panic (a process may be
//! dead when asked), and the platform's money invariants checked through the apps' own APIs.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::Up;

/// What the bank holds in customer and settlement accounts after seeding (platform/README.md).
pub const SEEDED_TOTAL: i64 = 1_800_020_000;
/// The merchant key of the shop at pg.
pub const MERCHANT_KEY: &str = "sk_test_tableshop";

/// The repo's mesh.yaml without the `customers` traffic generator (so balances are ours to check).
pub fn platform_mesh() -> String {
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

/// Panics with what to do if the platform binary is missing.
pub fn assert_platform_built() {
    assert!(
        super::bin_dir().join("onemesh-platform").exists(),
        "onemesh-platform is not built: run `cargo build --workspace --bins` first (scripts/test does)"
    );
}

/// The five workloads of the payment chain.
pub const WORKLOADS: [&str; 5] = [
    "order/order",
    "pg/pg",
    "appcard/appcard",
    "card/card",
    "bank/bank",
];

/// Addresses of one workload, from the layout (they stay the same across restarts).
#[derive(Clone, Debug)]
pub struct Addrs {
    pub key: String,
    pub app: String,
    pub admin: String,
}

pub fn addrs(up: &Up) -> Vec<Addrs> {
    WORKLOADS
        .iter()
        .map(|k| {
            let w = up.workload(k);
            Addrs {
                key: k.to_string(),
                app: up.app_addr(k, 8080),
                admin: w["admin"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// The last `n` lines of `onemesh up`'s log that contain `needle` (a failure message should not
/// carry half a megabyte of log).
pub fn log_tail(up: &Up, needle: &str, n: usize) -> String {
    let log = up.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The public entry of the shop (`order/order`), as `host:port`.
pub fn entry(up: &Up) -> String {
    up.status()["entries"]["order/order"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// One HTTP/1.1 request with a JSON body; any failure (refused, reset, timeout) is an `Err`,
/// never a panic: the process behind `addr` may just have been killed.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let attempt = async {
        let stream = super::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            // Without the `@netns` of an address inside a namespace.
            req = req.header("host", addr.split('@').next().unwrap_or(addr));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = body.map(Value::to_string).unwrap_or_default();
        if !bytes.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(bytes))).unwrap())
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Whether a workload is serving: its proxy's `/ready` is 200 and its app accepts connections.
pub async fn ready(a: &Addrs) -> bool {
    let proxy = matches!(
        call(&a.admin, "GET", "/ready", None, &[], Duration::from_secs(1)).await,
        Ok((200, _))
    );
    proxy && super::connect(&a.app).await.is_ok()
}

/// Polls `ready` every 50 ms until it holds or `bound` passes; the time it took, or None.
pub async fn time_to_ready(a: &Addrs, bound: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        if ready(a).await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// What a customer's order is meant to end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Kim's app card (check card: the bank is debited).
    AppcardCheck,
    /// Lee's app card (credit card: limit is held).
    AppcardCredit,
    /// Choi's check card by number (pg → card directly).
    CardNumber,
    /// Park's check card without the funds: FAILED `insufficient_funds`.
    InsufficientFunds,
    /// Kim with a wrong PIN: FAILED `wrong_pin`.
    WrongPin,
}

impl Kind {
    pub fn pick(n: u64) -> Kind {
        // Shares chosen so that the seeded balances and limits last a 30-minute chaos run at
        // about 40 orders/s (Lee's credit limit runs out first, after about 45 minutes).
        match n % 10 {
            0..=4 => Kind::AppcardCheck,
            5 => Kind::AppcardCredit,
            6 | 7 => Kind::CardNumber,
            8 => Kind::InsufficientFunds,
            _ => Kind::WrongPin,
        }
    }

    fn plan(self) -> (Value, Value) {
        let small = json!([{"menu_id": "m-tteokbokki", "qty": 1}, {"menu_id": "m-soju", "qty": 1}]);
        match self {
            Kind::AppcardCheck => (
                small,
                json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"}),
            ),
            // The cheapest dish: Lee's 50,000,000 won limit lasts 10,000 such orders.
            Kind::AppcardCredit => (
                json!([{"menu_id": "m-soju", "qty": 1}]),
                json!({"method": "appcard", "user_id": "u-lee", "card_id": "c-lee-2", "pin": "5678"}),
            ),
            Kind::CardNumber => (
                small,
                json!({"method": "card", "card_number": "9410000000000006"}),
            ),
            Kind::InsufficientFunds => (
                json!([{"menu_id": "m-bulgogi", "qty": 2}]),
                json!({"method": "appcard", "user_id": "u-park", "card_id": "c-park-3", "pin": "0000"}),
            ),
            Kind::WrongPin => (
                small,
                json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "9999"}),
            ),
        }
    }

    /// The order's final status and failure code this kind must end with.
    pub fn expected(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::AppcardCheck | Kind::AppcardCredit | Kind::CardNumber => ("PAID", None),
            Kind::InsufficientFunds => ("FAILED", Some("insufficient_funds")),
            Kind::WrongPin => ("FAILED", Some("wrong_pin")),
        }
    }
}

/// How one customer order ended, as the customer saw it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub kind: Kind,
    /// The order id (None if the order was never placed before the deadline).
    pub order_id: Option<String>,
    /// `PAID`, `FAILED`, or what was left when the deadline passed (e.g. `gave_up: 503`).
    pub status: String,
    pub failure_code: Option<String>,
    /// Requests sent again (same key) after a 5xx, a broken connection or a timeout.
    pub retries: u64,
}

/// POSTs with one idempotency key until the answer is not a 5xx or a transport failure, or the
/// deadline passes (then the last failure).
async fn post_until_final(
    entry: &str,
    path: &str,
    body: &Value,
    key: &str,
    deadline: Instant,
    retries: &mut u64,
) -> Result<(u16, Value), String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let headers = [("idempotency-key", key), ("x-merchant-key", MERCHANT_KEY)];
        let last = match call(
            entry,
            "POST",
            path,
            Some(body),
            &headers,
            Duration::from_secs(10),
        )
        .await
        {
            Ok((status, v)) if status < 500 => return Ok((status, v)),
            Ok((status, v)) => format!("{status} {v}"),
            Err(e) => e,
        };
        if Instant::now() + backoff > deadline {
            return Err(last);
        }
        *retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// One customer: places an order and pays it, each step retried with its own fixed key until it
/// ends (or `deadline`).
pub async fn customer_order(entry: &str, tag: &str, kind: Kind, deadline: Instant) -> Outcome {
    let (items, pay) = kind.plan();
    let mut out = Outcome {
        kind,
        order_id: None,
        status: String::new(),
        failure_code: None,
        retries: 0,
    };
    let order = json!({"table_no": 7, "items": items});
    let placed = post_until_final(
        entry,
        "/orders",
        &order,
        &format!("{tag}-order"),
        deadline,
        &mut out.retries,
    )
    .await;
    let id = match placed {
        Ok((201, v)) | Ok((200, v)) if v["id"].is_string() => v["id"].as_str().unwrap().to_string(),
        Ok((status, v)) => {
            out.status = format!("order refused: {status} {}", code(&v));
            return out;
        }
        Err(e) => {
            out.status = format!("gave up placing the order: {e}");
            return out;
        }
    };
    out.order_id = Some(id.clone());
    let paid = post_until_final(
        entry,
        &format!("/orders/{id}/pay"),
        &pay,
        &format!("{tag}-pay"),
        deadline,
        &mut out.retries,
    )
    .await;
    match paid {
        Ok((200, v)) => out.status = v["status"].as_str().unwrap_or("?").to_string(),
        // A decline: the order is FAILED and the body says why.
        Ok((402, v)) => {
            out.status = "FAILED".into();
            out.failure_code = v["code"].as_str().map(str::to_string);
        }
        Ok((status, v)) => out.status = format!("pay answered {status} {}", code(&v)),
        Err(e) => out.status = format!("gave up paying: {e}"),
    }
    out
}

/// The `code` of a platform error body, or the body itself when it is not one.
fn code(v: &Value) -> String {
    v["code"]
        .as_str()
        .map_or_else(|| v.to_string().chars().take(80).collect(), str::to_string)
}

async fn list(app: &str, path: &str) -> Vec<Value> {
    let (status, v) = call(
        app,
        "GET",
        path,
        None,
        &[("x-merchant-key", MERCHANT_KEY)],
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path} at {app}: {e}"));
    assert_eq!(status, 200, "GET {path} at {app}: {v}");
    v.as_array()
        .unwrap_or_else(|| panic!("GET {path} at {app} is not a list: {v}"))
        .clone()
}

fn by<'a>(items: &'a [Value], field: &str) -> HashMap<String, Vec<&'a Value>> {
    let mut map: HashMap<String, Vec<&Value>> = HashMap::new();
    for item in items {
        map.entry(item[field].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(item);
    }
    map
}

/// Counts of what the checks looked at.
#[derive(Debug, Default)]
pub struct Checked {
    pub orders: usize,
    pub paid: usize,
    pub failed: usize,
    pub bank_transactions: usize,
}

/// Checks, through the apps' APIs (behind the mesh), that no money was lost or doubled and that
/// every customer's order ended as the customer was told and as its kind requires (reported last,
/// with every order that did not):
/// exactly one order per customer, one gateway payment per order, one approval per PAID order and
/// one debit for a check card, nothing for a FAILED one, no bank posting without an approval, the
/// ledger balanced with the seeded total, the settlement account holding exactly the PAID
/// check-card amounts, and credit limits in use equal to the approved credit authorizations.
pub async fn check_invariants(up: &Up, outcomes: &[Outcome]) -> Checked {
    let apps: HashMap<String, String> = addrs(up).into_iter().map(|a| (a.key, a.app)).collect();
    let orders = list(&apps["order/order"], "/orders").await;
    let payments = list(&apps["pg/pg"], "/payments").await;
    let wallet = list(&apps["appcard/appcard"], "/payments").await;
    let auths = list(&apps["card/card"], "/authorizations").await;
    let cards = list(&apps["card/card"], "/cards").await;
    let txns = list(&apps["bank/bank"], "/transactions").await;
    let accounts = list(&apps["bank/bank"], "/accounts").await;
    let (_, ledger) = call(
        &apps["bank/bank"],
        "GET",
        "/ledger/summary",
        None,
        &[],
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    // Money is conserved and every posting balances.
    assert_eq!(
        ledger["customer_and_settlement_total"], SEEDED_TOTAL,
        "money appeared or vanished: {ledger}"
    );
    assert_eq!(ledger["total_balance"], 0, "{ledger}");
    assert_eq!(ledger["entries_sum"], 0, "{ledger}");
    for t in &txns {
        let sum: i64 = t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(sum, 0, "unbalanced transaction {t}");
    }

    // Exactly one order per customer, and the customer was told the truth.
    assert_eq!(
        orders.len(),
        outcomes.len(),
        "one order per customer (a retried create must not make a second)"
    );
    let orders_by_id: HashMap<&str, &Value> = orders
        .iter()
        .map(|o| (o["id"].as_str().unwrap(), o))
        .collect();
    let payments_by_order = by(&payments, "order_id");
    let wallet_by_ref = by(&wallet, "payment_ref");
    let auths_by_ref = by(&auths, "payment_ref");
    let txns_by_ref = by(&txns, "reference");
    let mut checked = Checked {
        orders: orders.len(),
        bank_transactions: txns.len(),
        ..Checked::default()
    };
    let mut check_outstanding = 0_i64;
    let mut wrong = Vec::new();
    for o in outcomes {
        let (want_status, want_code) = o.kind.expected();
        let id = o
            .order_id
            .as_deref()
            .unwrap_or_else(|| panic!("a customer never got an order placed: {o:?}"));
        let order = orders_by_id
            .get(id)
            .unwrap_or_else(|| panic!("order {id} is unknown at order"));
        let status = order["status"].as_str().unwrap_or_default();
        // What the customer was told, what the shop holds and what the kind requires must agree;
        // disagreements are collected (and reported after the money checks, which still run).
        if o.status != want_status
            || (want_code.is_some() && o.failure_code.as_deref() != want_code)
            || status != o.status
        {
            wrong.push(format!(
                "{:?} order {id}: customer told {:?} {:?}, shop holds {status}",
                o.kind, o.status, o.failure_code
            ));
        }
        if status != "PAID" && status != "FAILED" {
            continue;
        }
        let ps = payments_by_order.get(id).cloned().unwrap_or_default();
        assert_eq!(ps.len(), 1, "order {id} has {} gateway payments", ps.len());
        let payment = ps[0];
        let pid = payment["id"].as_str().unwrap();
        let a = auths_by_ref.get(pid).cloned().unwrap_or_default();
        let t = txns_by_ref.get(pid).cloned().unwrap_or_default();
        let w = wallet_by_ref.get(pid).cloned().unwrap_or_default();
        let kinds: Vec<&str> = t.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        if status == "PAID" {
            checked.paid += 1;
            assert_eq!(order["payment_id"], pid);
            assert_eq!(payment["status"], "APPROVED", "order {id}: {payment}");
            assert_eq!(
                a.len(),
                1,
                "order {id} must have exactly one approval: {a:?}"
            );
            assert_eq!(a[0]["status"], "APPROVED");
            assert_eq!(a[0]["amount"], order["amount"]);
            assert_eq!(a[0]["approval_no"], order["approval_no"]);
            let appcard = payment["method"] == "appcard";
            assert_eq!(
                w.len(),
                usize::from(appcard),
                "wallet payments of {id}: {w:?}"
            );
            if a[0]["kind"] == "check" {
                assert_eq!(kinds, ["debit"], "order {id}: exactly one debit");
                check_outstanding += order["amount"].as_i64().unwrap();
            } else {
                assert!(
                    kinds.is_empty(),
                    "a credit payment posts nothing: {kinds:?}"
                );
            }
        } else {
            checked.failed += 1;
            assert_eq!(payment["status"], "DECLINED", "order {id}: {payment}");
            assert_eq!(payment["decline_code"], order["failure_code"]);
            assert!(a.is_empty(), "a failed order has no approval: {a:?}");
            assert!(t.is_empty(), "a failed order has no bank posting: {t:?}");
        }
    }
    // No debit without an approval.
    for t in &txns {
        if t["kind"] == "opening" {
            continue;
        }
        let r = t["reference"].as_str().unwrap();
        let a = auths_by_ref
            .get(r)
            .unwrap_or_else(|| panic!("bank posting {r} without an approval: {t}"));
        assert_eq!(a[0]["kind"], "check");
    }
    let settlement = accounts
        .iter()
        .find(|a| a["id"] == "acc-card-settlement")
        .unwrap();
    assert_eq!(
        settlement["balance"], check_outstanding,
        "settlement holds exactly the PAID check-card debits"
    );
    for card in &cards {
        let last4 = card["last4"].as_str().unwrap();
        let held: i64 = auths
            .iter()
            .filter(|a| {
                a["card_last4"] == last4 && a["kind"] == "credit" && a["status"] == "APPROVED"
            })
            .map(|a| a["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(card["used"], held, "card ending {last4}");
    }
    assert!(
        wrong.is_empty(),
        "money is conserved, but {} of {} orders did not end as they should (first 10):\n{}",
        wrong.len(),
        outcomes.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    checked
}
