//! The reference platform on the test cluster as a user deploys it, in one scenario: the control
//! plane as `onemesh install` prints it, then `kubectl apply -k deploy/overlays/test-cluster`,
//! whose manifests name no proxy and no `HTTP_PROXY`: the injector adds the proxy to every pod,
//! its init step's iptables rules send the apps' plain calls through it. Then, as the operator
//! would see it:
//!
//! - every pod runs the injected proxy (stored spec and running processes), and each app started
//!   only after its proxy was ready (the node agent's log records the order);
//! - customers' payments, cancellations and each decline flow `order → pg → appcard → card → bank`
//!   over mTLS, and the money invariants hold;
//! - a forbidden call gets 403 naming the policy; a policy applied with kubectl takes effect;
//! - a three-replica workload gets traffic on all three, and deleting one pod fails no read;
//! - deleting a control-plane pod interrupts nothing;
//! - PostgreSQL through the mesh as opaque TCP: a pgbench Job with zero failures, which completes
//!   and whose pod ends;
//! - the monitoring namespace's Prometheus scrapes every proxy (`up == 1`), and its recorded
//!   request rate per edge agrees with the proxies' own counters within 10 %;
//! - so does the control plane's own metrics window (no Prometheus), read with `onemesh edges`
//!   through the control plane's API with the token of the Secret `onemesh-dashboard-token`; and
//!   `onemesh tap pg/pg` streams pg's requests from its proxy through the control plane.
//!
//! Commands inside a pod run in its network namespace (`onemesh-pod-<uid>`, the node agent's), as
//! root: their connections are captured like the app's.

mod kube;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::{apply, eventually, in_pod, kubectl, kubectl_in, onemesh};
use serde_json::Value;

const READY: Duration = Duration::from_secs(180);
/// The five organizations: namespace = StatefulSet = Service name.
const ORGS: [&str; 5] = ["order", "pg", "appcard", "card", "bank"];
/// What the bank holds in customer and settlement accounts after seeding (platform/README.md).
const SEEDED_TOTAL: i64 = 1_800_020_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path(rel: &str) -> String {
    repo().join(rel).to_str().expect("utf-8 path").to_string()
}

fn apply_k(dir: &str) {
    let (ok, out) = kubectl_in(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &path(dir),
        ],
        "",
    );
    assert!(ok, "kubectl apply -k {dir} failed: {out}");
}

/// Waits until the Deployment or StatefulSet has all its replicas ready and up to date.
fn rollout_ready(kind: &str, ns: &str, name: &str) -> Duration {
    let start = Instant::now();
    eventually(&format!("{kind} {ns}/{name} ready"), READY, || {
        let out = kubectl(&["-n", ns, "get", kind, name, "-o", "json"]);
        let d: Value = serde_json::from_str(&out).ok()?;
        let want = d["spec"]["replicas"].as_u64()?;
        let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
        let updated = d["status"]["updatedReplicas"].as_u64().unwrap_or(0);
        (ready == want && updated == want).then_some(())
    });
    start.elapsed()
}

/// The running, not terminating pods matching `selector`, as stored.
fn pod_objects(ns: &str, selector: &str) -> Vec<Value> {
    let out = kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("pod list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
        })
        .cloned()
        .collect()
}

/// (name, uid) of the running pods matching `selector`.
fn pods(ns: &str, selector: &str) -> Vec<(String, String)> {
    pod_objects(ns, selector)
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&p["metadata"]["name"]), s(&p["metadata"]["uid"]))
        })
        .collect()
}

fn the_pod(ns: &str, selector: &str) -> (String, String) {
    pods(ns, selector)
        .first()
        .unwrap_or_else(|| panic!("no running pod {ns}/{selector}"))
        .clone()
}

/// One plain HTTP call from inside a pod, as its app makes it (no proxy setting: captured):
/// (status, body).
fn call(uid: &str, method: &str, url: &str) -> (u16, String) {
    let (_, out, err) = in_pod(
        uid,
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ],
        &[],
    );
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return (0, err);
    }
    (code, body.to_string())
}

/// A GET of an app's own API from inside its pod (loopback, as `kubectl exec` would): JSON.
/// pg's lists need the shop's merchant key (platform/README.md).
fn app_get(ns: &str, path: &str) -> Value {
    let (_, uid) = the_pod(ns, &format!("app.kubernetes.io/name={ns}"));
    let url = format!("http://127.0.0.1:8080{path}");
    let (ok, body, err) = in_pod(
        &uid,
        "curl",
        &[
            "-sS",
            "--fail-with-body",
            "--max-time",
            "10",
            "-H",
            "x-merchant-key: sk_test_tableshop",
            &url,
        ],
        &[],
    );
    assert!(ok, "{ns} GET {path}: {body}{err}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{ns} GET {path}: {e}: {body}"))
}

fn platform_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_onemesh"));
    dir.parent().expect("bin dir").join("onemesh-platform")
}

/// Drives `n` customer scenarios from a pod of the `customers` workload, with no proxy setting
/// (the calls are captured); the traffic summary.
fn pay(customers: &str, n: u32) -> Value {
    let platform = platform_binary();
    let (ok, out, err) = in_pod(
        customers,
        platform.to_str().expect("utf-8 path"),
        &[
            "traffic",
            "--target",
            "http://order.order.svc.cluster.local",
            "--rate",
            "25",
            "--max",
            &n.to_string(),
            "--duration",
            "60s",
            "--json",
        ],
        &[],
    );
    assert!(ok, "traffic failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("traffic summary {out:?}: {e}"))
}

/// Every scenario ended as its kind requires, and every kind happened (payment, card-number
/// payment, cancellation and each decline).
fn assert_payments(summary: &Value, n: u64) {
    assert_eq!(summary["attempts"].as_u64(), Some(n), "{summary}");
    assert_eq!(summary["unexpected"].as_u64(), Some(0), "{summary}");
    let outcomes = summary["outcomes"].as_object().expect("outcomes");
    let paid: u64 = outcomes.values().filter_map(|o| o["paid"].as_u64()).sum();
    assert!(paid > 0, "no payment went through: {summary}");
    for kind in [
        "success",
        "card_number",
        "cancellation",
        "insufficient_funds",
        "wrong_pin",
        "over_limit",
    ] {
        assert!(
            outcomes
                .iter()
                .any(|(k, o)| k.replace('-', "_").eq_ignore_ascii_case(kind)
                    && o.as_object()
                        .is_some_and(|m| m.values().any(|v| v.as_u64() > Some(0)))),
            "no {kind} scenario ran: {summary}"
        );
    }
}

/// The money invariants, read from each organization's own API once traffic stopped: money is
/// conserved, every posting balances, every PAID order has exactly one approved gateway payment
/// and one approval, a FAILED one none, and no bank posting is doubled or lacks an approval.
fn check_money() -> usize {
    let ledger = app_get("bank", "/ledger/summary");
    assert_eq!(
        ledger["customer_and_settlement_total"], SEEDED_TOTAL,
        "money appeared or vanished: {ledger}"
    );
    assert_eq!(ledger["total_balance"], 0, "{ledger}");
    assert_eq!(ledger["entries_sum"], 0, "{ledger}");
    let list = |v: Value| v.as_array().cloned().unwrap_or_default();
    let txns = list(app_get("bank", "/transactions"));
    let auths = list(app_get("card", "/authorizations"));
    let payments = list(app_get("pg", "/payments"));
    let orders = list(app_get("order", "/orders"));
    let mut postings: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &txns {
        let sum: i64 = t["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["amount"].as_i64())
            .sum();
        assert_eq!(sum, 0, "unbalanced transaction {t}");
        if t["kind"] == "opening" {
            continue;
        }
        let reference = t["reference"].as_str().unwrap_or_default().to_string();
        assert!(
            auths.iter().any(|a| a["payment_ref"] == t["reference"]),
            "bank posting without an approval: {t}"
        );
        *postings
            .entry((reference, t["kind"].as_str().unwrap_or_default().into()))
            .or_default() += 1;
    }
    for ((reference, kind), n) in &postings {
        assert_eq!(*n, 1, "payment {reference} was posted {n} times as {kind}");
    }
    let mut by_order: HashMap<&str, Vec<&Value>> = HashMap::new();
    for p in &payments {
        by_order
            .entry(p["order_id"].as_str().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let mut ended = 0;
    for o in &orders {
        let id = o["id"].as_str().unwrap_or_default();
        let status = o["status"].as_str().unwrap_or_default();
        if status != "PAID" && status != "FAILED" {
            continue;
        }
        ended += 1;
        let ps = by_order.get(id).cloned().unwrap_or_default();
        assert_eq!(ps.len(), 1, "order {id} has {} gateway payments", ps.len());
        let approvals = auths
            .iter()
            .filter(|a| a["payment_ref"] == ps[0]["id"] && a["status"] == "APPROVED")
            .count();
        let want = usize::from(status == "PAID");
        assert_eq!(
            approvals, want,
            "order {id} ({status}) has {approvals} approvals"
        );
    }
    assert!(ended > 0, "no order ended: {orders:?}");
    ended
}

/// `curl -sS --max-time 5 ARGS` from the node's network namespace (pod IPs route there; the
/// admin port is not captured): its stdout.
fn node_curl(args: &[&str]) -> Vec<u8> {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            "onemesh-k8s",
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .expect("curl from the node")
        .stdout
}

/// A proxy's metrics, read from the node.
fn proxy_metrics(pod_ip: &str) -> String {
    String::from_utf8_lossy(&node_curl(&[&format!("http://{pod_ip}:4191/metrics")])).into_owned()
}

/// The sum of a proxy's `request_total` samples of outbound requests to namespace `dst_ns`.
fn outbound_requests(metrics: &str, dst_ns: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("request_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains(&format!("dst_namespace=\"{dst_ns}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// An instant query of Prometheus' API, from the node: the JSON answer.
fn prom_query(api: &str, query: &str) -> Value {
    let url = format!("{api}/query");
    let query = format!("query={query}");
    serde_json::from_slice(&node_curl(&["-G", &url, "--data-urlencode", &query]))
        .unwrap_or(Value::Null)
}

/// The CLI run in the node's network namespace (where pod IPs route), pointed at the first
/// control-plane pod's API with the dashboard token read from its Secret (as an operator's
/// `onemesh dashboard --kubernetes` would, through a port-forward).
fn onemesh_on_node(args: &[&str]) -> (bool, String) {
    let (api, token) = control_plane_api();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            "onemesh-k8s",
            env!("CARGO_BIN_EXE_onemesh"),
        ])
        .args(args)
        .env("ONEMESH_API", api)
        .env("ONEMESH_TOKEN", token)
        .output()
        .expect("run onemesh on the node");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A control-plane replica's dashboard/API address (reached from the node) and the operators'
/// token, from the Secret `onemesh install` created.
fn control_plane_api() -> (String, String) {
    let control = &pod_objects("onemesh", "app.kubernetes.io/name=onemesh-control")[0];
    let token = kubectl(&[
        "-n",
        "onemesh",
        "get",
        "secret",
        "onemesh-dashboard-token",
        "-o",
        "jsonpath={.data.token}",
    ]);
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .expect("the Secret's token is base64");
    (
        format!("http://{}:8084", pod_ip(control)),
        String::from_utf8_lossy(&token).trim().to_string(),
    )
}

/// Runs `onemesh audit verify` on each control-plane replica's decision log, where its volume
/// lives on the test node (the claim's PersistentVolume's host path), against the cluster's
/// published trust anchors.
fn decision_logs_verify() {
    let anchors = kubectl(&[
        "-n",
        "onemesh",
        "get",
        "configmap",
        "onemesh-trust-anchors",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    let anchors_file =
        std::env::temp_dir().join(format!("onemesh-kube-anchors-{}", std::process::id()));
    std::fs::write(&anchors_file, anchors).unwrap();
    let claims: Value = serde_json::from_str(&kubectl(&[
        "-n",
        "onemesh",
        "get",
        "pvc",
        "-l",
        "app.kubernetes.io/part-of=onemesh",
        "-o",
        "json",
    ]))
    .unwrap();
    let claims = claims["items"].as_array().cloned().unwrap_or_default();
    assert!(
        !claims.is_empty(),
        "the control plane has no audit volume claims"
    );
    let mut verified = 0;
    for claim in claims {
        let name = claim["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let volume = claim["spec"]["volumeName"].as_str().unwrap_or_default();
        let pv: Value =
            serde_json::from_str(&kubectl(&["get", "pv", volume, "-o", "json"])).unwrap();
        let dir = pv["spec"]["hostPath"]["path"]
            .as_str()
            .or(pv["spec"]["local"]["path"].as_str())
            .unwrap_or_else(|| panic!("{name}: no host path in {pv}"))
            .to_string();
        // A replica no proxy shipped to has written nothing yet.
        let has_log = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        });
        if !has_log {
            println!("decision log {name}: empty (no proxy shipped to this replica)");
            continue;
        }
        verified += 1;
        let out = Command::new(env!("CARGO_BIN_EXE_onemesh"))
            .args(["audit", "verify", "--dir", &dir, "--trust-anchors"])
            .arg(&anchors_file)
            .output()
            .expect("run onemesh audit verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} ({dir}): {text}");
        println!("decision log {name}: {}", text.lines().last().unwrap_or(""));
    }
    assert!(
        verified > 0,
        "no control-plane replica holds a decision log"
    );
    let _ = std::fs::remove_file(anchors_file);
}

/// The control plane's window over the last minute, once every organization shows traffic:
/// `{"workloads": [...], "edges": [...]}` from `onemesh stat` and `onemesh edges`. On a timeout
/// the panic names the organizations without traffic, with the last answers and the scrape
/// targets' state.
fn control_plane_window(orgs: &[&str]) -> Value {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        // Every organization served something in the last 5 minutes; the rates are the last
        // minute's (the proxies' own were counted over that minute). Served means requests, or
        // bytes: a known proxy defect carries an HTTP client's connection as opaque TCP when the
        // client connected and stayed silent past the 200 ms first-byte window (a pooled
        // connection opened ahead of use): its requests then show only as the edge's bytes (a
        // CI run saw bank so; the fix, relaying as opaque only once the server speaks first, is
        // the follow-up named in issue 16's note).
        let (ok, stat) = onemesh_on_node(&["stat", "-o", "json", "--window", "5m"]);
        let (ok2, edges) = onemesh_on_node(&["edges", "-o", "json", "--window", "60s"]);
        let workloads: Value = serde_json::from_str(&stat).unwrap_or(Value::Null);
        let served = |ns: &str| {
            workloads.as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["namespace"] == ns
                        && (r["requests"].as_u64() > Some(0)
                            || r["tcp_read_bytes_per_s"].as_f64() > Some(0.0))
                })
            })
        };
        let missing: Vec<&str> = orgs.iter().copied().filter(|ns| !served(ns)).collect();
        if ok && ok2 && missing.is_empty() {
            let rows: Vec<String> = workloads
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{}/{}: {}", r["namespace"], r["workload"], r["requests"]))
                .collect();
            println!(
                "the control plane's window shows every organization after {:?}: {}",
                start.elapsed(),
                rows.join(", ")
            );
            return serde_json::json!({
                "workloads": workloads,
                "edges": serde_json::from_str::<Value>(&edges).unwrap_or(Value::Null),
            });
        }
        let now = format!("missing {missing:?}; stat: {stat}; edges: {edges}");
        if now != last {
            println!("the control plane's window, not yet: {now}");
            last = now;
        }
        if start.elapsed() > READY {
            let (api, token) = control_plane_api();
            let targets = node_curl(&[
                "-H",
                &format!("Authorization: Bearer {token}"),
                &format!("{api}/api/v1/targets"),
            ]);
            let targets = String::from_utf8_lossy(&targets);
            panic!(
                "the control plane's window shows no traffic of {missing:?} within {READY:?}; \
                 last answers: {last}; scrape targets: {targets}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `onemesh tap` through the control plane on the cluster: pg's live requests, from its proxy's
/// control-only admin port, with identities.
fn control_plane_tap(workload: &str) {
    let (ok, out) = onemesh_on_node(&[
        "tap",
        workload,
        "-o",
        "json",
        "--count",
        "3",
        "--duration",
        "30s",
    ]);
    assert!(ok, "{out}");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("method").is_some())
        .collect();
    assert!(!events.is_empty(), "no tap event of {workload}: {out}");
    assert!(
        events.iter().any(|e| e["source"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("spiffe://"))),
        "no caller identity in {out}"
    );
    println!(
        "tap {workload} on the cluster: {} events, e.g. {}",
        events.len(),
        events[0]
    );
}

fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The node agent's log: what it did to each pod, with microsecond times.
fn agent_log() -> String {
    let dir = std::env::var("ONEMESH_K8S_WORKDIR")
        .expect("ONEMESH_K8S_WORKDIR: eval \"$(scripts/k8s-testenv env)\" first");
    std::fs::read_to_string(PathBuf::from(dir).join("node-agent.log")).expect("node-agent.log")
}

/// The time of the first agent log line about `pod` (`ns/name`) with `uid` that contains `what`
/// (a StatefulSet's pod has the same name in every run: the lines from its start with this uid on).
fn agent_time(log: &str, pod: &str, uid: &str, what: &str) -> Option<chrono_free::Micros> {
    let prefix = format!("pod {pod}: ");
    log.lines()
        .skip_while(|l| !(l.contains(&prefix) && l.contains(&format!("starting (uid {uid})"))))
        .filter(|l| l.contains(&prefix) && l.contains(what))
        .find_map(chrono_free::parse)
}

/// Log times (`2026/12/03 12:00:00.123456`) as microseconds, without a date library: ordered
/// correctly across days (a day counts as 31 × 12 per year; only differences within a day are
/// durations).
mod chrono_free {
    pub type Micros = u64;
    pub fn parse(line: &str) -> Option<Micros> {
        let mut words = line.split_whitespace();
        let mut date = words.next()?.split('/').map(|p| p.parse::<u64>().ok());
        let (y, mo, d) = (date.next()??, date.next()??, date.next()??);
        let (hms, micros) = words.next()?.split_once('.')?;
        let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
        let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
        let day = (y * 12 + mo) * 31 + d;
        Some((((day * 24 + h) * 60 + m) * 60 + s) * 1_000_000 + micros.parse::<u64>().ok()?)
    }
}

/// The injection, checked in the stored spec and in the processes running in the pod's network
/// namespace; and the start order the node agent recorded: init step, proxy ready, then the app.
/// Returns the pod's start overhead (pod start → proxy ready).
fn assert_injected(pod: &Value, app: &str, log: &str) -> Duration {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    let inits: Vec<&str> = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        inits.get(..2),
        Some(&["onemesh-init", "onemesh-proxy"][..]),
        "{ns}/{name}: {inits:?}"
    );
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    assert!(
        pod["metadata"]["annotations"]["onemesh.dev/injected"].is_string(),
        "{ns}/{name} has no injection marker"
    );
    let text = pod.to_string();
    assert!(
        !text.contains("HTTP_PROXY"),
        "{ns}/{name} has a proxy setting"
    );
    // Running: the proxy and the app are processes in the pod's network namespace.
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let pids = Command::new("ip")
        .args(["netns", "pids", &format!("onemesh-pod-{uid}")])
        .output()
        .expect("ip netns pids");
    let cmdlines: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect();
    assert!(
        cmdlines.iter().any(|c| c.contains("onemesh-proxy")),
        "{ns}/{name}: no proxy process: {cmdlines:?}"
    );
    // Order: the init step ended, then the proxy was ready, then the app started.
    let key = format!("{ns}/{name}");
    let started = agent_time(log, &key, uid, "starting (uid").expect("pod start in the agent log");
    let init_done = agent_time(log, &key, uid, "container onemesh-init exited with 0")
        .unwrap_or_else(|| panic!("{key}: the init step did not end with 0"));
    let proxy_ready = agent_time(log, &key, uid, "container onemesh-proxy is started")
        .unwrap_or_else(|| panic!("{key}: the proxy never became ready"));
    let app_started = agent_time(log, &key, uid, &format!("container {app} started"))
        .unwrap_or_else(|| panic!("{key}: the app {app} never started"));
    assert!(
        started <= init_done && init_done <= proxy_ready && proxy_ready <= app_started,
        "{key}: start order wrong: pod {started}, init done {init_done}, proxy ready {proxy_ready}, app {app_started}"
    );
    Duration::from_micros(proxy_ready.saturating_sub(started))
}

/// Removes what an earlier run left (the platform, its tests' namespaces, the mesh, the pods'
/// resolv.conf for `ip netns exec`), and waits.
fn clean() {
    for dir in std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if dir
            .file_name()
            .to_string_lossy()
            .starts_with("onemesh-pod-")
        {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
    for dir in [
        "deploy/overlays/test-cluster",
        "deploy/testing/postgres",
        "deploy/monitoring",
    ] {
        let _ = kubectl_in(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=true",
                "--timeout=90s",
                "-k",
                &path(dir),
            ],
            "",
        );
    }
    kube::uninstall();
}

/// Reads from the `echo` workload from `customers`' pod; the pod names that answered, and the
/// calls that failed.
fn echo_reads(customers: &str, n: usize) -> (BTreeSet<String>, Vec<(u16, String)>) {
    let mut names = BTreeSet::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match call(customers, "GET", "http://echo.order.svc.cluster.local/") {
            (200, name) => {
                names.insert(name);
            }
            other => failed.push(other),
        }
    }
    (names, failed)
}

#[test]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\""]
fn kube_platform_meshed_on_the_cluster() {
    let _ = kube::kubeconfig();
    clean();
    let _clean_on_panic = kube::CleanOnPanic(clean);
    // The control plane, as installed.
    let (ok, manifests) = onemesh(&["install"]);
    assert!(ok, "{manifests}");
    apply(&manifests);
    let took = rollout_ready("statefulset", "onemesh", "onemesh-control");
    println!("control plane ready in {took:?}");

    // The platform, as a user deploys it: no proxy in its manifests.
    let start = Instant::now();
    apply_k("deploy/overlays/test-cluster");
    for org in ORGS {
        rollout_ready("statefulset", org, org);
    }
    rollout_ready("deployment", "order", "customers");
    println!("platform ready in {:?}", start.elapsed());
    let first_paid = eventually("the first paid order", READY, || {
        let orders = app_get("order", "/orders");
        orders
            .as_array()?
            .iter()
            .any(|o| o["status"] == "PAID")
            .then(|| start.elapsed())
    });
    println!("kubectl apply -k → first paid order in {first_paid:?}");
    let (ok, out) = onemesh(&["check", "--kubernetes"]);
    assert!(ok, "onemesh check --kubernetes: {out}");

    // Injected everywhere, and each app started after its proxy was ready.
    let log = agent_log();
    let mut overheads = Vec::new();
    for org in ORGS {
        for pod in pod_objects(org, &format!("app.kubernetes.io/name={org}")) {
            overheads.push(assert_injected(&pod, org, &log));
        }
    }
    overheads.sort();
    println!("injection start overhead (pod start → proxy ready): {overheads:?}");

    // Payments through the whole chain, over mTLS, with no proxy setting anywhere.
    let (_, customers) = the_pod("order", "app.kubernetes.io/name=customers");
    assert_payments(&pay(&customers, 100), 100);
    let bank = &pod_objects("bank", "app.kubernetes.io/name=bank")[0];
    let metrics = proxy_metrics(&pod_ip(bank));
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("spiffe://cluster.local/ns/card/sa/card")
                && l.contains("tls=\"true\"")),
        "bank's proxy saw no mTLS request from card:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("request_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A forbidden call, captured: customers may not call the bank.
    let (status, body) = call(
        &customers,
        "GET",
        "http://bank.bank.svc.cluster.local/accounts",
    );
    assert_eq!(status, 403, "{body}");
    // And by ClusterIP: the same Service, the same decision.
    let bank_ip = kubectl(&[
        "-n",
        "bank",
        "get",
        "service",
        "bank",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let (status, body) = call(&customers, "GET", &format!("http://{bank_ip}/accounts"));
    assert_eq!(status, 403, "by ClusterIP {bank_ip}: {body}");
    // Explained by the bank's own proxy, relayed by the control plane.
    let (ok, out) = onemesh_on_node(&[
        "authz",
        "explain",
        "--from",
        "order/customers",
        "--to",
        "bank/bank:8080",
        "--method",
        "GET",
        "--path",
        "/accounts",
        "-o",
        "json",
    ]);
    assert!(ok, "authz explain on the cluster: {out}");
    let explained: Value = serde_json::from_str(&out).expect("explain -o json");
    assert_eq!(
        (explained["decision"].as_str(), explained["policy"].as_str()),
        (Some("deny"), Some("bank-allow-card")),
        "{explained}"
    );
    assert!(explained["suggestion"]["yaml"].is_string(), "{explained}");

    // A policy change, applied with kubectl, takes effect.
    let allow = "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: bank-allow-customers, namespace: bank}\nspec:\n  target: {workload: bank, port: 8080}\n  from:\n    identities: [spiffe://cluster.local/ns/order/sa/customers]\n";
    let bank_url = "http://bank.bank.svc.cluster.local/accounts";
    let start = Instant::now();
    apply(allow);
    eventually(
        "the new policy lets customers in",
        Duration::from_secs(10),
        || (call(&customers, "GET", bank_url).0 == 200).then_some(()),
    );
    println!("policy applied → enforced in {:?}", start.elapsed());
    kubectl(&[
        "-n",
        "bank",
        "delete",
        "authorizationpolicy",
        "bank-allow-customers",
    ]);
    eventually(
        "the deleted policy denies again",
        Duration::from_secs(10),
        || (call(&customers, "GET", bank_url).0 == 403).then_some(()),
    );

    // A stateless workload of three replicas gets traffic on all three; deleting one pod fails
    // no read.
    let echo = std::fs::read_to_string(repo().join("crates/cli/tests/fixtures/kube-echo.yaml"))
        .expect("kube-echo.yaml");
    apply(&echo);
    rollout_ready("deployment", "order", "echo");
    let (names, failed) = eventually(
        "all three echo replicas answer",
        Duration::from_secs(20),
        || {
            let (names, failed) = echo_reads(&customers, 30);
            (names.len() == 3).then_some((names, failed))
        },
    );
    assert!(failed.is_empty(), "failed reads: {failed:?}");
    let victim = names.iter().next().expect("an echo pod").clone();
    let reader = {
        let customers = customers.clone();
        std::thread::spawn(move || echo_reads(&customers, 150))
    };
    std::thread::sleep(Duration::from_millis(300));
    kubectl(&["-n", "order", "delete", "pod", &victim, "--wait=false"]);
    let (_, failed) = reader.join().expect("reader thread");
    assert!(
        failed.is_empty(),
        "reads failed while {victim} went away: {failed:?}"
    );

    // A server-speaks-first protocol on a port the proxies detect: the client sends nothing until
    // it is greeted, and is greeted well before the 1 s detection timeout (the proxy takes a
    // silent client for server-speaks-first after its first-byte window).
    let greeter =
        std::fs::read_to_string(repo().join("crates/cli/tests/fixtures/kube-greeter.yaml"))
            .expect("kube-greeter.yaml");
    apply(&greeter);
    rollout_ready("deployment", "order", "greeter");
    let client = "import socket, time\n\
        t = time.monotonic()\n\
        s = socket.create_connection(('greeter.order.svc.cluster.local', 2525), timeout=5)\n\
        greeting = s.recv(64)\n\
        took = time.monotonic() - t\n\
        s.sendall(b'HELO mesh\\r\\n')\n\
        print(f'{took:.3f} {greeting!r} {s.recv(64)!r}')\n";
    let (ok, out, err) = in_pod(&customers, "python3", &["-c", client], &[]);
    assert!(ok, "server-speaks-first client: {out}{err}");
    let (took, rest) = out.trim().split_once(' ').expect("took and answers");
    assert!(
        rest.contains("220 greeter ready") && rest.contains("250 HELO mesh"),
        "{out}"
    );
    let took: f64 = took.parse().expect("seconds");
    println!("server-speaks-first through a detecting port: greeted after {took:.3} s");
    assert!(
        took < 0.9,
        "the greeting was held back {took} s: detection stalled"
    );

    // Deleting a control-plane pod interrupts nothing.
    let (control_pod, _) = the_pod("onemesh", "app.kubernetes.io/name=onemesh-control");
    kubectl(&[
        "-n",
        "onemesh",
        "delete",
        "pod",
        &control_pod,
        "--wait=false",
    ]);
    assert_payments(&pay(&customers, 100), 100);
    rollout_ready("statefulset", "onemesh", "onemesh-control");
    // Each replica's decision log, on its volume, kept its chain across the pod's deletion.
    decision_logs_verify();

    // PostgreSQL through the mesh as opaque TCP; the pgbench Job completes and its pod ends.
    let start = Instant::now();
    apply_k("deploy/testing/postgres");
    eventually("the pgbench Job completes", READY, || {
        let job: Value = serde_json::from_str(&kubectl(&[
            "-n", "dbtest", "get", "job", "pgbench", "-o", "json",
        ]))
        .ok()?;
        let failed = job["status"]["failed"].as_u64().unwrap_or(0);
        assert_eq!(failed, 0, "pgbench failed: {job}");
        (job["status"]["succeeded"].as_u64() == Some(1)).then_some(())
    });
    println!("postgres + pgbench done in {:?}", start.elapsed());
    let jobs: Value = serde_json::from_str(&kubectl(&[
        "-n",
        "dbtest",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=pgbench",
        "-o",
        "json",
    ]))
    .expect("pgbench pods");
    let job_pod = &jobs["items"][0];
    assert_eq!(job_pod["status"]["phase"], "Succeeded", "{job_pod}");
    let pgbench_log = std::fs::read_to_string(
        PathBuf::from(std::env::var("ONEMESH_K8S_WORKDIR").expect("workdir"))
            .join("pods")
            .join(format!(
                "dbtest_{}_{}",
                job_pod["metadata"]["name"].as_str().unwrap_or_default(),
                job_pod["metadata"]["uid"].as_str().unwrap_or_default()
            ))
            .join("logs/pgbench.log"),
    )
    .expect("pgbench log");
    assert!(
        pgbench_log.contains("number of failed transactions: 0"),
        "{pgbench_log}"
    );
    println!(
        "pgbench through the mesh: {}",
        pgbench_log
            .lines()
            .filter(|l| l.starts_with("tps") || l.contains("latency average"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    // One Prometheus for the mesh: every proxy a target with up == 1, and its recorded edge rate
    // agrees with the proxies' own counters.
    apply_k("deploy/monitoring");
    rollout_ready("deployment", "monitoring", "prometheus");
    let prometheus = &pod_objects("monitoring", "app.kubernetes.io/name=prometheus")[0];
    let api = format!("http://{}:9090/api/v1", pod_ip(prometheus));
    let meshed: BTreeSet<String> = ORGS
        .iter()
        .flat_map(|ns| pod_objects(ns, "onemesh.dev/injected!=x"))
        .chain(pod_objects("order", "app.kubernetes.io/name=customers"))
        .map(|p| pod_ip(&p))
        .collect();
    eventually("Prometheus scrapes every platform proxy", READY, || {
        let up = prom_query(&api, "up");
        let healthy: BTreeSet<String> = up["data"]["result"]
            .as_array()?
            .iter()
            .filter(|r| r["value"][1] == "1")
            .filter_map(|r| {
                let instance = r["metric"]["instance"].as_str()?;
                Some(instance.split(':').next()?.to_string())
            })
            .collect();
        meshed.is_subset(&healthy).then_some(())
    });
    // The customers Deployment keeps ordering; pg → card is an edge of every card payment.
    let pg = &pod_objects("pg", "app.kubernetes.io/name=pg")[0];
    let t0 = Instant::now();
    let pg_out = || {
        let metrics = proxy_metrics(&pod_ip(pg));
        outbound_requests(&metrics, "appcard") + outbound_requests(&metrics, "card")
    };
    let c0 = pg_out();
    std::thread::sleep(Duration::from_secs(60));
    let c1 = pg_out();
    let own = (c1 - c0) / t0.elapsed().as_secs_f64();
    let recorded = prom_query(&api, "sum(onemesh:edge:request_rate:1m{namespace=\"pg\"})");
    let recorded: f64 = recorded["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no recorded edge rate: {recorded}"));
    println!("pg's outbound rate: proxies {own:.3}/s, Prometheus recorded {recorded:.3}/s");
    let window = control_plane_window(&["order", "pg", "appcard", "card", "bank"]);
    assert!(own > 0.0, "no traffic from pg during the minute");
    assert!(
        (recorded - own).abs() <= 0.1 * own,
        "Prometheus' recorded rate {recorded} is not within 10 % of the proxies' {own}"
    );
    let from_pg: f64 = window["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["src_namespace"] == "pg")
        .filter_map(|e| e["rps"].as_f64())
        .sum();
    println!("pg's outbound rate: the control plane's window {from_pg:.3}/s");
    assert!(
        (from_pg - own).abs() <= 0.1 * own,
        "the control plane's window says {from_pg}/s from pg, not within 10 % of the proxies' {own}"
    );
    control_plane_tap("pg/pg");

    // Stop the traffic, then the money invariants.
    kubectl(&[
        "-n",
        "order",
        "scale",
        "deployment",
        "customers",
        "--replicas=0",
    ]);
    eventually("the customers pod is gone", READY, || {
        pods("order", "app.kubernetes.io/name=customers")
            .is_empty()
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let ended = check_money();
    println!("money invariants hold over {ended} ended orders");
    clean();
}
