//! The platform's invariants under faults: the five services run as real processes (the
//! `onemesh-platform` binary, one SQLite file each), the traffic generator drives more than
//! 1,000 mixed payments concurrently, every service is killed (SIGKILL) and restarted on the
//! same port and database mid-run, and some pay requests are sent twice at once with the same
//! key. Afterwards each service's API is queried and every invariant is checked:
//!
//! - the bank's customer + settlement balances sum to what was seeded, entries sum to zero;
//! - every PAID order has exactly one approval and, for check cards, exactly one debit;
//! - no debit without an approval; a refund only for a cancelled approval;
//! - order, pg, appcard, card and bank agree on each payment's final state;
//! - credit-card limits in use equal the approved credit authorizations.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onemesh_platform::run::Service;
use onemesh_platform::traffic::{self, TrafficConfig};
use serde_json::Value;
use support::{Http, MERCHANT_KEY, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_onemesh-platform");
const SEEDED_TOTAL: i64 = 1_800_020_000;

/// The five services as child processes; killed when dropped.
struct Processes {
    dir: PathBuf,
    addrs: HashMap<Service, SocketAddr>,
    children: HashMap<Service, Child>,
    http: Http,
}

impl Processes {
    /// Starts bank first, then each caller with its upstreams' addresses.
    async fn start() -> Processes {
        let mut p = Processes {
            dir: temp_dir("invariants"),
            addrs: HashMap::new(),
            children: HashMap::new(),
            http: Http::new(),
        };
        for s in [
            Service::Bank,
            Service::Card,
            Service::Appcard,
            Service::Pg,
            Service::Order,
        ] {
            p.launch(s, None);
            let addr = wait_for_listening(&p.log_path(s)).await;
            p.addrs.insert(s, addr);
            p.wait_healthy(s).await;
        }
        p
    }

    fn log_path(&self, s: Service) -> PathBuf {
        self.dir.join(format!("{}.log", s.name()))
    }

    fn url(&self, s: Service) -> String {
        format!("http://{}", self.addrs[&s])
    }

    fn launch(&mut self, s: Service, addr: Option<SocketAddr>) {
        let listen = addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(s))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(s.name())
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env("RUST_LOG", "info")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (var, upstream) in [
            ("PG_URL", Service::Pg),
            ("APPCARD_URL", Service::Appcard),
            ("CARD_URL", Service::Card),
            ("BANK_URL", Service::Bank),
        ] {
            if let Some(a) = self.addrs.get(&upstream) {
                cmd.env(var, format!("http://{a}"));
            }
        }
        self.children.insert(s, cmd.spawn().unwrap());
    }

    async fn wait_healthy(&self, s: Service) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/healthz", self.url(s))).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} did not become healthy; see {}",
            s.name(),
            self.log_path(s).display()
        );
    }

    /// SIGKILL, a pause, then a restart on the same port with the same database file.
    async fn crash_and_restart(&mut self, s: Service, down_for: Duration) {
        if let Some(mut child) = self.children.remove(&s) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        tokio::time::sleep(down_for).await;
        let addr = self.addrs[&s];
        self.launch(s, Some(addr));
        self.wait_healthy(s).await;
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_for_listening(log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(log) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line)
                    && v["fields"]["message"] == "listening"
                    && let Some(addr) = v["fields"]["addr"].as_str()
                {
                    return addr.parse().unwrap();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no listening line in {}", log.display());
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

async fn list(http: &Http, url: String, headers: &[(&str, &str)]) -> Vec<Value> {
    let (status, body) = http.get_with(&url, headers).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    body.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_after_1000_payments_with_crashes_and_retries() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("invariant test took longer than 240 s");
}

async fn run() {
    let mut procs = Processes::start().await;
    let mut config =
        TrafficConfig::new(&procs.url(Service::Order), 150.0, Duration::from_secs(120));
    config.max_scenarios = Some(1_100);
    config.concurrency = 48;
    config.retry_for = Duration::from_secs(60);
    config.use_env_proxy = false;
    config.duplicate_pay_percent = 10;
    let traffic = tokio::spawn(traffic::run(config));

    // Faults: each service is killed mid-run and restarted on the same port and database.
    for s in [
        Service::Card,
        Service::Bank,
        Service::Pg,
        Service::Appcard,
        Service::Order,
    ] {
        tokio::time::sleep(Duration::from_millis(900)).await;
        procs.crash_and_restart(s, Duration::from_millis(300)).await;
    }
    let summary = traffic.await.unwrap().unwrap();
    println!("{}", traffic::render(&summary));
    assert!(
        summary.attempts >= 1_000,
        "only {} scenarios ran",
        summary.attempts
    );
    assert!(
        summary.retries > 0,
        "the crashes should have forced retries"
    );
    assert_eq!(
        summary.unexpected, 0,
        "every scenario ends as its kind expects: {summary:#?}"
    );

    let http = &procs.http;
    let merchant = [("x-merchant-key", MERCHANT_KEY)];
    let orders = list(http, format!("{}/orders", procs.url(Service::Order)), &[]).await;
    let payments = list(
        http,
        format!("{}/payments", procs.url(Service::Pg)),
        &merchant,
    )
    .await;
    let wallet = list(
        http,
        format!("{}/payments", procs.url(Service::Appcard)),
        &[],
    )
    .await;
    let auths = list(
        http,
        format!("{}/authorizations", procs.url(Service::Card)),
        &[],
    )
    .await;
    let txns = list(
        http,
        format!("{}/transactions", procs.url(Service::Bank)),
        &[],
    )
    .await;
    let cards = list(http, format!("{}/cards", procs.url(Service::Card)), &[]).await;
    let (_, ledger) = http
        .get(&format!("{}/ledger/summary", procs.url(Service::Bank)))
        .await;
    let accounts = list(http, format!("{}/accounts", procs.url(Service::Bank)), &[]).await;

    // Money is conserved.
    assert_eq!(
        ledger["customer_and_settlement_total"], SEEDED_TOTAL,
        "{ledger}"
    );
    assert_eq!(ledger["total_balance"], 0);
    assert_eq!(ledger["entries_sum"], 0);
    for t in &txns {
        let sum: i64 = t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(sum, 0, "unbalanced transaction {t}");
    }

    assert_eq!(
        orders.len() as u64,
        summary.attempts,
        "every scenario placed exactly one order"
    );
    let payments_by_order = by(&payments, "order_id");
    let wallet_by_ref = by(&wallet, "payment_ref");
    let auths_by_ref = by(&auths, "payment_ref");
    let txns_by_ref = by(&txns, "reference");
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut check_card_outstanding = 0_i64;

    for order in &orders {
        let id = order["id"].as_str().unwrap();
        let status = order["status"].as_str().unwrap();
        *counts.entry(status.to_string()).or_default() += 1;
        let ps = payments_by_order.get(id).cloned().unwrap_or_default();
        assert_eq!(ps.len(), 1, "order {id} has {} gateway payments", ps.len());
        let payment = ps[0];
        let pid = payment["id"].as_str().unwrap();
        let a = auths_by_ref.get(pid).cloned().unwrap_or_default();
        let t = txns_by_ref.get(pid).cloned().unwrap_or_default();
        let w = wallet_by_ref.get(pid).cloned().unwrap_or_default();
        let kinds: Vec<&str> = t.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        let appcard = payment["method"] == "appcard";
        match status {
            "PAID" | "CANCELLED" => {
                let (pg_status, auth_status) = if status == "PAID" {
                    ("APPROVED", "APPROVED")
                } else {
                    ("CANCELLED", "CANCELLED")
                };
                assert_eq!(order["payment_id"], pid);
                assert_eq!(
                    payment["status"], pg_status,
                    "order {id} is {status}: {payment}"
                );
                assert_eq!(
                    a.len(),
                    1,
                    "order {id} must have exactly one approval: {a:?}"
                );
                assert_eq!(a[0]["status"], auth_status);
                assert_eq!(a[0]["approval_no"], order["approval_no"]);
                assert_eq!(a[0]["approval_no"], payment["approval_no"]);
                assert_eq!(a[0]["amount"], order["amount"]);
                if appcard {
                    assert_eq!(w.len(), 1);
                    assert_eq!(w[0]["status"], auth_status);
                } else {
                    assert!(w.is_empty());
                }
                let expected: &[&str] = match (a[0]["kind"].as_str().unwrap(), status) {
                    ("check", "PAID") => &["debit"],
                    ("check", _) => &["debit", "credit"],
                    _ => &[],
                };
                assert_eq!(kinds, expected, "bank postings of order {id} ({status})");
                for x in &t {
                    let moved = x["entries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["amount"].as_i64().unwrap().abs())
                        .max();
                    assert_eq!(moved, order["amount"].as_i64());
                }
                if status == "PAID" && a[0]["kind"] == "check" {
                    check_card_outstanding += order["amount"].as_i64().unwrap();
                }
            }
            "FAILED" => {
                assert_eq!(
                    payment["status"], "DECLINED",
                    "order {id} FAILED: {payment}"
                );
                assert_eq!(payment["decline_code"], order["failure_code"]);
                assert!(a.is_empty(), "a failed order has no approval: {a:?}");
                assert!(w.is_empty());
                assert!(t.is_empty(), "a failed order has no bank posting: {t:?}");
            }
            other => panic!("order {id} ended {other}: nothing may stay PENDING"),
        }
    }

    // No debit without an approval, no approval without a payment.
    let payment_ids: HashMap<&str, &Value> = payments
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    for t in &txns {
        if t["kind"] == "opening" {
            continue;
        }
        let r = t["reference"].as_str().unwrap();
        let a = auths_by_ref
            .get(r)
            .unwrap_or_else(|| panic!("bank posting {r} without an approval"));
        assert_eq!(a[0]["kind"], "check");
    }
    for a in &auths {
        assert!(
            payment_ids.contains_key(a["payment_ref"].as_str().unwrap()),
            "approval without payment: {a}"
        );
    }
    let settlement = accounts
        .iter()
        .find(|a| a["id"] == "acc-card-settlement")
        .unwrap();
    assert_eq!(
        settlement["balance"], check_card_outstanding,
        "settlement holds exactly the outstanding check-card debits"
    );

    // Credit limits in use equal the approved credit authorizations.
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
    println!(
        "orders by status: {counts:?}; bank transactions: {}",
        txns.len()
    );
    assert!(counts.get("PAID").copied().unwrap_or(0) > 300);
    assert!(counts.get("CANCELLED").copied().unwrap_or(0) > 30);
    assert!(counts.get("FAILED").copied().unwrap_or(0) > 100);
    let _ = std::fs::remove_dir_all(&procs.dir);
}
