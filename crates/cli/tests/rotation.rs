//! Trust rotation under load, as an operator runs it: the reference platform under `onemesh up`
//! takes steady payments through its public entry (order → pg → appcard → card → bank, every hop
//! over mTLS) while `onemesh identity rotate-issuer` and then `onemesh identity rotate-anchor` run
//! to their end. No request may fail during either. Afterwards every proxy serves a leaf that
//! chains to the new anchor (a TLS handshake to each inbound verified against the new anchor
//! alone passes, against the old anchor alone fails), `Admin.Trust` (through
//! `onemesh identity -o json`) shows every proxy on the current issuer and bundle, and
//! `trust-anchors.pem` holds only the new anchor.
//!
//! The operator commands' other paths are checked on the same mesh: `onemesh identity revoke`,
//! `onemesh check`'s CA-expiry lines, and a state directory whose operator certificate was minted
//! by a CA the mesh does not trust (refused, exit 1, nothing rotated).
//!
//! The load's rate and length can be raised for a measurement (`scripts/rotation` does):
//! `ONEMESH_ROTATION_RATE` (requests per second, default 30) and `ONEMESH_ROTATION_SECONDS`
//! (the least time the load runs before and after each rotation, default 2).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onemesh_identity::{SpiffeId, TrustAnchor, TrustBundle, WorkloadKey, bootstrap_client_config};
use serde_json::{Value, json};
use support::Up;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The repo's mesh.yaml without the `customers` traffic generator (our load is counted here).
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

fn env_number(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Requests answered well and badly, and the first few failures.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut list = self
                    .failures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if list.len() < 20 {
                    list.push(why);
                }
            }
        }
    }
}

/// One JSON request to the public entry; a failure is any status but the expected one.
async fn call(
    entry: &str,
    path: &str,
    body: Value,
    key: &str,
    expect: u16,
) -> Result<Value, String> {
    use http_body_util::{BodyExt, Full};
    let attempt = async {
        let stream = TcpStream::connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header("host", entry)
            .header("x-merchant-key", "sk_test_tableshop")
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let error = resp
            .headers()
            .get("onemesh-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status != expect {
            return Err(format!(
                "{path}: {status} (onemesh-error {error:?}): {text}"
            ));
        }
        serde_json::from_str(&text).map_err(|e| format!("{path}: bad JSON {e}: {text}"))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{path}: no answer within 10 s")))
}

/// A payment through the whole chain: an order, then its payment with Kim's app card (each is
/// a request counted on its own).
async fn payment(entry: &str, n: u64, counts: &Counts) {
    let order = call(
        entry,
        "/orders",
        json!({"table_no": 7, "items": [{"menu_id": "m-soju", "qty": 1}]}),
        &format!("rot-order-{n}"),
        201,
    )
    .await;
    let id = order
        .as_ref()
        .ok()
        .and_then(|o| o["id"].as_str().map(str::to_string));
    counts.record(order.map(|_| ()));
    let Some(id) = id else { return };
    let pay = json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
    let paid = call(
        entry,
        &format!("/orders/{id}/pay"),
        pay,
        &format!("rot-pay-{n}"),
        200,
    )
    .await
    .and_then(|v| {
        if v["status"] == "PAID" {
            Ok(())
        } else {
            Err(format!("pay: not PAID: {v}"))
        }
    });
    counts.record(paid);
}

/// Open-loop load: a payment (two requests) started every `1 / (rate / 2)` s whatever the
/// previous ones are doing, until `stop` is set.
fn start_load(
    entry: String,
    rate: f64,
    counts: Arc<Counts>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs_f64(2.0 / rate);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while !*stop.borrow() {
            ticker.tick().await;
            n += 1;
            let (entry, counts) = (entry.clone(), counts.clone());
            running.spawn(async move { payment(&entry, n, &counts).await });
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    })
}

/// Runs `onemesh <args>` on the blocking pool (the load keeps going meanwhile).
async fn cli(up: &Arc<Up>, args: &[&str]) -> (bool, String, Duration) {
    let up = up.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = up.cli(&refs);
        (ok, out, started.elapsed())
    })
    .await
    .unwrap()
}

/// A TLS handshake with `id`'s proxy inbound, verifying its chain against `bundle` alone.
async fn handshake(inbound: &str, id: &SpiffeId, bundle: &TrustBundle) -> Result<(), String> {
    let config = bootstrap_client_config(bundle, id, &[]);
    let tcp = TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    TlsConnector::from(config)
        .connect(id.tls_server_name(), tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn anchors_on_disk(up: &Up) -> TrustBundle {
    let pem = std::fs::read_to_string(up.dir.join("state/trust-anchors.pem")).unwrap();
    TrustBundle::from_pem(&pem).unwrap()
}

fn trust_json(up: &Up) -> Value {
    let (ok, out) = up.cli(&["identity", "-o", "json"]);
    assert!(ok, "onemesh identity -o json failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_request_and_end_on_the_new_anchor() {
    let bins = support::bin_dir();
    assert!(
        bins.join("onemesh-platform").exists(),
        "onemesh-platform is not built: run `cargo build --workspace --bins` first (scripts/test does)"
    );
    let rate = env_number("ONEMESH_ROTATION_RATE", 30.0);
    let settle = Duration::from_secs_f64(env_number("ONEMESH_ROTATION_SECONDS", 2.0));
    let up = Arc::new(Up::start("rotation", &platform_mesh()));
    let status = up.status();
    let entry = status["entries"]["order/order"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let workloads: Vec<(String, SpiffeId, String)> = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}",
                    w["namespace"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w["identity"].as_str().unwrap().parse().unwrap(),
                w["inbound"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let old_anchors = anchors_on_disk(&up);
    assert_eq!(old_anchors.roots().len(), 1);
    let before = trust_json(&up);
    let old_issuer = before["issuer"]["sha256"].as_str().unwrap().to_string();

    // The operator commands refuse credentials minted outside the mesh (a copy of the state
    // directory whose operator.crt/.key come from a CA of our own).
    let forged = up.dir.join("forged-state");
    std::fs::create_dir_all(&forged).unwrap();
    for f in ["layout.json", "trust-anchors.pem"] {
        std::fs::copy(up.dir.join("state").join(f), forged.join(f)).unwrap();
    }
    let td = status["trust_domain"].as_str().unwrap().to_string();
    let rogue = TrustAnchor::generate(&td, Duration::from_secs(3600)).unwrap();
    let rogue_issuer = rogue.issue_issuer(Duration::from_secs(3600)).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let operator: SpiffeId = format!("spiffe://{td}/ns/onemesh/sa/operator")
        .parse()
        .unwrap();
    let minted = rogue_issuer
        .sign_csr(
            &key.csr_der(&operator).unwrap(),
            Duration::from_secs(3600),
            |_| true,
        )
        .unwrap();
    std::fs::write(forged.join("operator.crt"), minted.chain_pem()).unwrap();
    std::fs::write(forged.join("operator.key"), key.to_pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .arg("--state-dir")
        .arg(&forged)
        .args(["identity", "rotate-anchor", "--deadline", "30s"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "forged operator: {text}");
    assert!(text.contains("control plane"), "says what failed: {text}");
    assert_eq!(
        anchors_on_disk(&up).roots(),
        old_anchors.roots(),
        "a forged operator rotated the anchor"
    );

    // Steady payments through the public entry.
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = start_load(entry.clone(), rate, counts.clone(), stop_rx);
    tokio::time::sleep(settle).await;
    let warm = counts.snapshot();
    assert!(
        warm.0 > 0,
        "no request succeeded before any rotation: {:?}",
        counts.failures.lock().unwrap()
    );
    assert_eq!(
        warm.1,
        0,
        "requests failed before any rotation: {:?}",
        counts.failures.lock().unwrap()
    );

    let mut phases = Vec::new();
    for (command, name) in [("rotate-issuer", "issuer"), ("rotate-anchor", "anchor")] {
        let start = counts.snapshot();
        let (ok, out, took) = cli(&up, &["identity", command, "--deadline", "60s"]).await;
        assert!(
            ok,
            "onemesh identity {command} failed:\n{out}\n--- up.log:\n{}",
            up.log()
        );
        assert!(out.contains("rotated"), "{out}");
        // Every proxy of the layout was connected and followed each step.
        let all = format!("{0}/{0}", workloads.len());
        assert!(
            out.lines()
                .any(|l| l.contains(" done ") && l.ends_with(&all)),
            "not every proxy followed the {name} rotation:\n{out}"
        );
        // Leaves renewed at the last step are in use from now: keep the load on a while.
        tokio::time::sleep(settle).await;
        let end = counts.snapshot();
        let (ok_n, failed_n) = (end.0 - start.0, end.1 - start.1);
        println!(
            "{name} rotation: {:.1} s; requests during it and {:.0} s after: {ok_n} ok, {failed_n} failed\n{out}",
            took.as_secs_f64(),
            settle.as_secs_f64()
        );
        assert_eq!(
            failed_n,
            0,
            "requests failed during the {name} rotation: {:?}\n--- up.log:\n{}",
            counts.failures.lock().unwrap(),
            up.log()
        );
        assert!(
            ok_n > 0,
            "no request was answered during the {name} rotation"
        );
        phases.push((name, took, ok_n));
    }
    stop_tx.send(true).unwrap();
    load.await.unwrap();
    let (total_ok, total_failed) = counts.snapshot();
    println!("load: {rate} requests/s target; {total_ok} ok, {total_failed} failed in all");
    assert_eq!(total_failed, 0, "{:?}", counts.failures.lock().unwrap());

    // trust-anchors.pem holds only the new anchor.
    let new_anchors = anchors_on_disk(&up);
    assert_eq!(
        new_anchors.roots().len(),
        1,
        "the old anchor is still trusted"
    );
    assert_ne!(
        new_anchors.roots(),
        old_anchors.roots(),
        "the anchor did not change"
    );

    // Admin.Trust: one anchor (the new one), a new issuer, every proxy on both.
    let after = trust_json(&up);
    assert_eq!(after["anchors"].as_array().unwrap().len(), 1, "{after}");
    assert_ne!(
        after["issuer"]["sha256"].as_str().unwrap(),
        old_issuer,
        "{after}"
    );
    assert_eq!(after["rotation"], Value::Null, "{after}");
    let proxies = after["proxies"].as_array().unwrap();
    assert_eq!(
        proxies.len(),
        workloads.len(),
        "every proxy is connected: {after}"
    );
    for p in proxies {
        assert_eq!(p["current_issuer"], true, "{p}");
        assert_eq!(p["current_bundle"], true, "{p}");
    }

    // Every proxy's served chain verifies against the new anchor alone, and not the old.
    for (key, id, inbound) in &workloads {
        handshake(inbound, id, &new_anchors)
            .await
            .unwrap_or_else(|e| panic!("{key}'s leaf does not chain to the new anchor: {e}"));
        let refused = handshake(inbound, id, &old_anchors).await;
        assert!(
            refused.is_err(),
            "{key}'s leaf still chains to the old anchor"
        );
    }

    // The table form, and check's CA-expiry lines.
    let (ok, table) = up.cli(&["identity"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("anchor") && table.contains("rotation: none under way"),
        "{table}"
    );
    for (_, id, _) in &workloads {
        assert!(table.contains(id.as_str()), "{id} missing from:\n{table}");
    }
    let (ok, check) = up.cli(&["check"]);
    assert!(ok, "{check}");
    assert!(check.contains("√ trust anchor expiry"), "{check}");
    assert!(check.contains("√ issuer expiry"), "{check}");

    // Revoke: newly, then already; a malformed id is refused with exit 1.
    let nobody = format!("spiffe://{td}/ns/nobody/sa/nobody");
    let (ok, out) = up.cli(&["identity", "revoke", &nobody]);
    assert!(
        ok && out.contains("revoked spiffe://") && out.contains("24 h"),
        "{out}"
    );
    let (ok, out) = up.cli(&["identity", "revoke", &nobody]);
    assert!(ok && out.contains("revoked already"), "{out}");
    let (ok, out) = up.cli(&["identity", "revoke", "not-an-id"]);
    assert!(!ok && out.contains("spiffe://<trust-domain>"), "{out}");
    let after = trust_json(&up);
    assert_eq!(after["revoked"], json!([nobody]), "{after}");

    for (name, took, n) in phases {
        println!(
            "{name}: {:.1} s, {n} requests answered, 0 failed",
            took.as_secs_f64()
        );
    }
}
