//! Observability without Prometheus, on the real platform under `onemesh up`:
//!
//! 1. after a known number of payments, the control plane's metrics window agrees exactly with
//!    the proxies' own `/metrics` (counts and percentiles), and with a real Prometheus scraping
//!    the same proxies (rates and percentiles within 10 %);
//! 2. `onemesh stat` / `edges` read that window; a forbidden call shows as a denied edge;
//! 3. tap (and `onemesh top`) streams a payment's requests live, masked in the proxy: a card
//!    number in the path and query and the `x-merchant-key` header never appear in tap output, top
//!    or the access log; a caller without the token is refused, and so is a workload's
//!    certificate at the proxy;
//! 4. the dashboard in headless Chromium (Playwright) shows the five organizations and the chain's
//!    edges with the API's numbers, the denied edge, and the tap view (screenshots kept).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::platform::{self, Kind};
use support::{Up, metrics, request};

/// The metrics window's resolution under the tests' `up` (the default is 10 s).
const RESOLUTION: Duration = Duration::from_secs(1);
/// The card number sent in paths and queries (passes the Luhn check).
const CARD: &str = "4111111111111111";
/// The workloads the payments reach through the mesh (order is reached by the public entry,
/// straight to its app, as from a load balancer).
const MESHED: [&str; 4] = ["pg/pg", "appcard/appcard", "card/card", "bank/bank"];
/// Its last four digits: what masking keeps.
const LAST4: &str = "1111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_sees_the_platform_like_its_proxies_and_prometheus_do() {
    platform::assert_platform_built();
    let mesh = platform::platform_mesh().replace(
        "spec:\n  serviceAccount: pg\n",
        "spec:\n  serviceAccount: pg\n  accessLog: json\n",
    );
    assert!(
        mesh.contains("accessLog: json"),
        "pg's Workload moved in mesh.yaml"
    );
    let up = Up::start("observe", &mesh);
    let api = Api::of(&up);
    let prometheus = Prometheus::start(&up);

    // Everything scraped once, and quiet: the window's counts now are its baseline.
    wait_targets_up(&api, 5).await;
    tokio::time::sleep(RESOLUTION * 3).await;
    let before_window = inbound_requests(&api.get("/api/v1/overview?window=10m").await);
    let before_metrics = proxies_inbound(&up).await;

    // A known number of payments, spread over ~10 s.
    let entry = platform::entry(&up);
    let started = Instant::now();
    payments(&up, &entry, "observe", 40).await;
    println!("40 payments in {:?}", started.elapsed());
    let after_metrics = proxies_inbound(&up).await;
    tokio::time::sleep(RESOLUTION * 4).await;

    // 1a. Counts: the window's increase equals the proxies' own, workload by workload.
    let overview = api.get("/api/v1/overview?window=10m").await;
    let after_window = inbound_requests(&overview);
    for w in MESHED {
        let proxy = after_metrics[w].requests - before_metrics[w].requests;
        let window = after_window.get(w).copied().unwrap_or(0.0)
            - before_window.get(w).copied().unwrap_or(0.0);
        assert!(proxy > 0.0, "{w} served nothing");
        assert_eq!(
            window, proxy,
            "{w}: window {window} vs the proxy's /metrics {proxy}"
        );
    }
    // 1b. Percentiles: the window's over the traffic equal histogram_quantile over the proxies'
    // bucket increases (same buckets, same interpolation).
    let traffic_window = format!("{}s", started.elapsed().as_secs() + 6);
    let overview = api
        .get(&format!("/api/v1/overview?window={traffic_window}"))
        .await;
    for w in MESHED {
        let row = workload_row(&overview, w);
        let buckets = after_metrics[w].bucket_increase(&before_metrics[w]);
        for (q, field) in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
            let expected = quantile(&buckets, q).map(|s| s * 1000.0);
            let got = row[field].as_f64();
            match (expected, got) {
                (Some(e), Some(g)) => assert!(
                    (e - g).abs() <= e * 1e-6 + 1e-9,
                    "{w} {field}: window {g} vs /metrics {e}"
                ),
                other => panic!("{w} {field}: {other:?}"),
            }
        }
    }
    // 1c. A real Prometheus over the same proxies: rates and p99 within 10 %. Prometheus counts a
    // series only from its first sample (the window counts a new series from zero), so the
    // comparison is over a second batch, once every series of the first exists in both.
    let second = Instant::now();
    payments(&up, &entry, "observe-again", 40).await;
    tokio::time::sleep(RESOLUTION * 3).await;
    let secs = second.elapsed().as_secs() + 2;
    let overview = api.get(&format!("/api/v1/overview?window={secs}s")).await;
    for w in MESHED {
        let (ns, name) = w.split_once('/').unwrap();
        let row = workload_row(&overview, w);
        let sel = format!("direction=\"inbound\",namespace=\"{ns}\",workload=\"{name}\"");
        let prom_rps = prometheus
            .scalar(&format!("sum(rate(response_total{{{sel}}}[{secs}s]))"))
            .await;
        let prom_p99 = prometheus
            .scalar(&format!(
                "histogram_quantile(0.99, sum by (le) (rate(response_latency_seconds_bucket{{{sel}}}[{secs}s])))"
            ))
            .await
            * 1000.0;
        let rps = row["rps"].as_f64().unwrap();
        let p99 = row["p99_ms"].as_f64().unwrap();
        println!(
            "{w}: rps window {rps:.3} prometheus {prom_rps:.3}; p99 window {p99:.2} ms prometheus {prom_p99:.2} ms"
        );
        assert!(
            (rps - prom_rps).abs() <= prom_rps * 0.10,
            "{w} rps: {rps} vs Prometheus {prom_rps}"
        );
        assert!(
            (p99 - prom_p99).abs() <= prom_p99 * 0.10,
            "{w} p99: {p99} vs Prometheus {prom_p99}"
        );
    }

    // 2. The CLI reads the window; the payment chain's edges are there, over mTLS.
    let (ok, out) = up.cli(&["edges", "-o", "json", "--window", "10m"]);
    assert!(ok, "{out}");
    let edges: Vec<Value> = serde_json::from_str(&out).unwrap();
    for (src, dst) in [
        ("order", "pg"),
        ("pg", "appcard"),
        ("appcard", "card"),
        ("card", "bank"),
        ("pg", "card"),
    ] {
        let e = edges
            .iter()
            .find(|e| e["src_namespace"] == src && e["dst_namespace"] == dst)
            .unwrap_or_else(|| panic!("no edge {src} -> {dst} in {out}"));
        assert_eq!(e["tls"], "mtls", "{e}");
        assert!(e["requests"].as_u64() > Some(0), "{e}");
        // Its bytes both ways, as the callee's proxy counted them on the caller's connections.
        for bytes in ["tcp_read_bytes_per_s", "tcp_write_bytes_per_s"] {
            assert!(e[bytes].as_f64() > Some(0.0), "{bytes}: {e}");
        }
    }
    let (ok, out) = up.cli(&["stat", "pg"]);
    assert!(ok && out.contains("pg"), "{out}");
    // A forbidden call (order → bank: not on the chain) shows as a denied edge.
    let order_out = up.outbound_addr("order/order");
    let (status, _, _) = request(&order_out, "GET", "bank.bank", "/accounts", b"").await;
    assert_eq!(status, 403);
    let denied = wait_for(Duration::from_secs(10), || async {
        let o = api.get("/api/v1/overview?window=1m").await;
        o["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["src_namespace"] == "order"
                    && e["dst_namespace"] == "bank"
                    && e["denied"].as_u64() > Some(0)
            })
            .cloned()
    })
    .await
    .expect("the denied edge order -> bank never showed");
    println!("denied edge: {denied}");

    // 3. Tap: refused without the token; a card number and the merchant key never leave pg's proxy.
    let (status, body) = api.get_raw("/api/v1/tap?workload=pg/pg", None).await;
    assert_eq!(status, 401, "{body}");
    let mut tap = cli_streaming(&up, &["tap", "pg/pg", "-o", "json", "--duration", "30s"]);
    // `onemesh top` over the same requests, from its own tap.
    let top = cli_streaming(&up, &["top", "pg/pg", "-o", "json", "--duration", "8s"]);
    let tap_out = tap.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(tap_out)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("observe-tap-done"))
            .collect::<Vec<String>>()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret_path = format!(
        "/v1/payments/{}?card_number={}&n=4111-1111-1111-1111",
        CARD, "4111%201111%201111%201111"
    );
    let headers = [
        ("x-merchant-key", platform::MERCHANT_KEY),
        ("host", "pg.pg"),
    ];
    let (status, _) = platform::call(
        &order_out,
        "GET",
        &secret_path,
        None,
        &headers,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    println!("the card-number request got {status}");
    let o = platform::customer_order(
        &entry,
        "observe-tap",
        Kind::CardNumber,
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    assert_eq!(o.status, "PAID", "{o:?}");
    let _ = platform::call(
        &order_out,
        "GET",
        "/observe-tap-done",
        None,
        &[("host", "pg.pg")],
        Duration::from_secs(5),
    )
    .await;
    let seen = lines.join().unwrap();
    let _ = tap.kill();
    let _ = tap.wait();
    let text = seen.join("\n");
    assert!(
        seen.iter().filter(|l| l.contains("\"method\"")).count() >= 3,
        "too few tap events: {text}"
    );
    assert!(
        text.contains("/v1/payments/"),
        "the card-number request is not in tap: {text}"
    );
    assert!(
        text.contains(LAST4),
        "masking keeps the last 4 digits: {text}"
    );
    for secret in [
        CARD,
        "4111-1111-1111-1111",
        "4111%201111%201111",
        platform::MERCHANT_KEY,
    ] {
        assert!(!text.contains(secret), "tap shows {secret:?}: {text}");
    }
    assert!(
        text.contains("[masked]"),
        "the merchant key header is not shown masked: {text}"
    );
    // top: the payments' path as pg served it, and the card-number request's path, masked.
    let top = top.wait_with_output().unwrap();
    let top_text = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(top.status.success(), "{top_text}");
    let rows: Vec<Value> = serde_json::from_str(&top_text).unwrap();
    let payments = rows
        .iter()
        .find(|r| r["path"] == "/payments" && r["source"] == "order/order")
        .unwrap_or_else(|| panic!("no /payments row from order in top: {top_text}"));
    assert!(payments["count"].as_u64() >= Some(1), "{payments}");
    assert_eq!(payments["successes"], payments["count"], "{payments}");
    assert!(
        rows.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/payments/"))),
        "the card-number request is not in top: {top_text}"
    );
    for secret in [CARD, platform::MERCHANT_KEY] {
        assert!(!top_text.contains(secret), "top shows {secret:?}");
    }
    // pg's access log (mesh.yaml `accessLog: json`) carries the same, masked.
    // (Only the proxies' lines: what the app itself logs is the app's business.)
    let log: String = std::fs::read_to_string(up.dir.join("up.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" proxy "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        log.lines().any(|l| l.contains("pg/pg proxy")
            && l.contains("\"path\"")
            && l.contains("/v1/payments/")),
        "no access log line of pg's proxy for the card-number request"
    );
    for secret in [CARD, "4111-1111-1111-1111", platform::MERCHANT_KEY] {
        assert!(!log.contains(secret), "a log shows {secret:?}");
    }

    // 4. The dashboard, in headless Chromium.
    dashboard_in_chromium(&up, &api).await;
    drop(prometheus);
    up.stop_and_clean();
}

/// `onemesh <args>` on this `up`'s mesh, running beside the test, its output piped.
fn cli_streaming(up: &Up, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .arg("--state-dir")
        .arg(up.dir.join("state"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` customer orders of every kind, one every 250 ms, each ending as its kind must.
async fn payments(up: &Up, entry: &str, tag: &str, n: u64) {
    for i in 0..n {
        let kind = Kind::pick(i);
        let o = platform::customer_order(
            entry,
            &format!("{tag}-{i}"),
            kind,
            Instant::now() + Duration::from_secs(30),
        )
        .await;
        assert_eq!(o.status, kind.expected().0, "{o:?}\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The control plane's API of this `up`, with its token.
struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn of(up: &Up) -> Api {
        let addr = up.status()["dashboard"].as_str().unwrap().to_string();
        let token = std::fs::read_to_string(up.dir.join("state/dashboard-token"))
            .unwrap()
            .trim()
            .to_string();
        Api { addr, token }
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_raw(path, Some(&self.token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    async fn get_raw(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        platform::call(
            &self.addr,
            "GET",
            path,
            None,
            &headers,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    }
}

async fn wait_targets_up(api: &Api, n: usize) {
    let targets = wait_for(Duration::from_secs(20), || async {
        let t = api.get("/api/v1/targets").await;
        let up = t
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["up"] == true)
            .count();
        (up >= n).then_some(t)
    })
    .await;
    assert!(
        targets.is_some(),
        "the control plane never scraped {n} proxies"
    );
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn workload_row<'a>(overview: &'a Value, w: &str) -> &'a Value {
    let (ns, name) = w.split_once('/').unwrap();
    overview["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == ns && r["workload"] == name)
        .unwrap_or_else(|| panic!("no {w} in {overview}"))
}

fn inbound_requests(overview: &Value) -> BTreeMap<String, f64> {
    overview["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap(),
                    r["workload"].as_str().unwrap()
                ),
                r["requests"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// One proxy's inbound answers and latency buckets, from its `/metrics`.
struct Inbound {
    requests: f64,
    /// `le` → cumulative count.
    buckets: BTreeMap<String, f64>,
}

impl Inbound {
    fn bucket_increase(&self, before: &Inbound) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, v)| {
                let le_f = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le_f, v - before.buckets.get(le).copied().unwrap_or(0.0))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

async fn proxies_inbound(up: &Up) -> BTreeMap<String, Inbound> {
    let mut out = BTreeMap::new();
    for a in platform::addrs(up) {
        let text = metrics(&a.admin).await;
        let mut ib = Inbound {
            requests: 0.0,
            buckets: BTreeMap::new(),
        };
        for line in text.lines().filter(|l| l.contains("direction=\"inbound\"")) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if series.starts_with("response_total{") {
                ib.requests += value;
            } else if series.starts_with("response_latency_seconds_bucket{") {
                let le = series
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                *ib.buckets.entry(le.to_string()).or_default() += value;
            }
        }
        out.insert(a.key.clone(), ib);
    }
    out
}

/// `histogram_quantile` as Prometheus computes it, over (upper bound, cumulative count) buckets.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    if buckets[i].0.is_infinite() {
        return Some(buckets[buckets.len() - 2].0);
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (upper, count) = buckets[i];
    if count - below <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// A real Prometheus scraping every proxy of the platform every second.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Prometheus {
    fn start(up: &Up) -> Prometheus {
        let dir = up.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: onemesh-proxy\n    static_configs:\n",
        );
        for a in platform::addrs(up) {
            config.push_str(&format!("      - targets: ['{}']\n", a.admin));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("prometheus is not installed: scripts/install-test-deps installs it (Debian package prometheus)");
        Prometheus { child, addr }
    }

    async fn scalar(&self, query: &str) -> f64 {
        let path = format!(
            "/api/v1/query?query={}",
            query
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        );
        let (status, body) =
            platform::call(&self.addr, "GET", &path, None, &[], Duration::from_secs(10))
                .await
                .unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        let v = &body["data"]["result"][0]["value"][1];
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{query}: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dashboard's browser test (dashboard/tests/browser.mjs, Playwright driving Debian's
/// Chromium): topology, edges with the API's numbers, the denied edge, tap. Screenshots in
/// target/dashboard-screenshots.
async fn dashboard_in_chromium(up: &Up, api: &Api) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = repo.join("target/dashboard-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let mut child = Command::new("node")
        .arg(repo.join("dashboard/tests/browser.mjs"))
        .args(["--url", &format!("http://{}", api.addr)])
        .args(["--token", &api.token])
        .arg("--out")
        .arg(&out)
        .args([
            "--tap-workload",
            "pg/pg",
            "--expect-denied",
            "order/order->bank/bank",
        ])
        .current_dir(&repo)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is missing");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let entry = platform::entry(up);
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some(line)) => {
                if line.contains("TAP_READY") {
                    // Payments while the page taps pg.
                    for i in 0..3 {
                        let _ = platform::customer_order(
                            &entry,
                            &format!("observe-dash-{n}-{i}"),
                            Kind::AppcardCheck,
                            Instant::now() + Duration::from_secs(20),
                        )
                        .await;
                    }
                    n += 1;
                }
                last = line;
            }
            Ok(None) => break,
            Err(_) => assert!(
                Instant::now() < deadline,
                "the browser test did not end within 2 minutes"
            ),
        }
    }
    let status = child.wait().unwrap();
    let result: Value = serde_json::from_str(&last).unwrap_or(Value::String(last.clone()));
    println!("browser: {result}");
    assert!(
        status.success() && result["ok"] == true,
        "the dashboard's browser test failed: {result}"
    );
    for org in ["order", "pg", "appcard", "card", "bank"] {
        assert!(
            result["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == org),
            "{org} not on the topology: {result}"
        );
    }
    assert!(
        !result["tap_rows"].as_array().unwrap().is_empty(),
        "no tap rows: {result}"
    );
    let shown = result.to_string();
    for secret in [CARD, platform::MERCHANT_KEY] {
        assert!(!shown.contains(secret), "the dashboard shows {secret:?}");
    }
}
