//! The reference platform on the test cluster, meshed: the control plane runs as the installed
//! Deployment's pods (its ServiceAccount and RBAC, no admin credentials), the five organizations
//! run from `deploy/platform/platform.yaml` with their proxies bootstrapped by ServiceAccount token,
//! and then, as the operator would see it:
//!
//! - customers' payments flow `order → pg → appcard → card → bank` over mTLS;
//! - a forbidden call gets 403 naming the policy, and `kubectl apply` of a changed policy takes
//!   effect (the time is printed);
//! - a three-replica workload gets traffic on all three, and deleting one pod fails no read;
//! - deleting a control-plane pod interrupts nothing.
//!
//! Commands inside a pod run in its network namespace (`onemesh-pod-<uid>`, the node agent's) and
//! go through that pod's proxy, as its app would.

mod kube;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::{eventually, kubectl, kubectl_in, onemesh};
use serde_json::Value;

const READY: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn apply(manifests: &str) {
    let (ok, out) = kubectl_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        manifests,
    );
    assert!(ok, "kubectl apply failed: {out}");
}

/// Waits until the Deployment has all its replicas ready and up to date.
fn deployment_ready(ns: &str, name: &str) -> Duration {
    let start = Instant::now();
    eventually(&format!("Deployment {ns}/{name} ready"), READY, || {
        let out = kubectl(&["-n", ns, "get", "deployment", name, "-o", "json"]);
        let d: Value = serde_json::from_str(&out).ok()?;
        let want = d["spec"]["replicas"].as_u64()?;
        let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
        let updated = d["status"]["updatedReplicas"].as_u64().unwrap_or(0);
        (ready == want && updated == want).then_some(())
    });
    start.elapsed()
}

/// The uids of the running, not terminating pods matching `selector`.
fn pods(ns: &str, selector: &str) -> Vec<(String, String)> {
    let out = kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("pod list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
        })
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Runs a program in a pod's network namespace; (success, stdout, stderr).
fn in_pod(uid: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("onemesh-pod-{uid}"), program])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP call through the pod's proxy: (status, body).
fn call(uid: &str, method: &str, url: &str) -> (u16, String) {
    let (_, out, err) = in_pod(
        uid,
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-x",
            "http://127.0.0.1:4140",
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

fn platform_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_onemesh"));
    dir.parent().expect("bin dir").join("onemesh-platform")
}

/// Drives `n` customer scenarios from a pod of the `customers` workload; the traffic summary.
fn pay(customers: &str, n: u32) -> Value {
    let platform = platform_binary();
    let (ok, out, err) = in_pod(
        customers,
        platform.to_str().expect("utf-8 path"),
        &[
            "traffic",
            "--target",
            "http://order.order",
            "--rate",
            "20",
            "--max",
            &n.to_string(),
            "--duration",
            "60s",
            "--json",
        ],
        &[("HTTP_PROXY", "http://127.0.0.1:4140")],
    );
    assert!(ok, "traffic failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("traffic summary {out:?}: {e}"))
}

fn assert_payments(summary: &Value, n: u64) {
    assert_eq!(summary["attempts"].as_u64(), Some(n), "{summary}");
    assert_eq!(summary["unexpected"].as_u64(), Some(0), "{summary}");
    let paid: u64 = summary["outcomes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, o)| o["paid"].as_u64())
        .sum();
    assert!(paid > 0, "no payment went through: {summary}");
}

/// `inbound` metrics of a pod's proxy, read from the node (the admin port listens on the pod IP).
fn proxy_metrics(ns: &str, pod: &str) -> String {
    let ip = kubectl(&[
        "-n",
        ns,
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            "onemesh-k8s",
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{ip}:4191/metrics"))
        .output()
        .expect("curl metrics");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes what an earlier run left (the platform's namespaces, the mesh), and waits.
fn clean() {
    let platform = repo().join("deploy/platform/platform.yaml");
    let _ = kubectl_in(
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=90s",
            "-f",
            platform.to_str().expect("utf-8 path"),
        ],
        "",
    );
    let (ok, heads) = onemesh(&["uninstall"]);
    assert!(ok, "{heads}");
    let _ = kubectl_in(
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=90s",
            "-f",
            "-",
        ],
        &heads,
    );
}

/// Reads from the `echo` workload through `customers`' proxy; the pod names that answered, and
/// the calls that failed.
fn echo_reads(
    customers: &str,
    n: usize,
) -> (std::collections::BTreeSet<String>, Vec<(u16, String)>) {
    let mut names = std::collections::BTreeSet::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match call(customers, "GET", "http://echo.order/") {
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
    // The control plane, as installed.
    let (ok, manifests) = onemesh(&["install"]);
    assert!(ok, "{manifests}");
    apply(&manifests);
    let took = deployment_ready("onemesh", "onemesh-control");
    println!("control plane ready in {took:?}");

    // The platform, as committed.
    let platform = std::fs::read_to_string(repo().join("deploy/platform/platform.yaml"))
        .expect("platform.yaml");
    apply(&platform);
    let start = Instant::now();
    for (ns, name) in [
        ("bank", "bank"),
        ("card", "card"),
        ("appcard", "appcard"),
        ("pg", "pg"),
        ("order", "order"),
        ("order", "customers"),
    ] {
        deployment_ready(ns, name);
    }
    println!("platform ready in {:?}", start.elapsed());
    let (ok, out) = onemesh(&["check", "--kubernetes"]);
    assert!(ok, "onemesh check --kubernetes: {out}");

    // Payments through the whole chain, over mTLS.
    let customers = pods("order", "app=customers");
    let (_, customers) = customers.first().expect("a customers pod").clone();
    assert_payments(&pay(&customers, 20), 20);
    let (bank_pod, _) = pods("bank", "app=bank")
        .first()
        .expect("a bank pod")
        .clone();
    let metrics = proxy_metrics("bank", &bank_pod);
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

    // A forbidden call: customers may not call the bank.
    let (status, body) = call(&customers, "GET", "http://bank.bank/accounts");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("bank-allow-card") || body.contains("forbidden"),
        "{body}"
    );

    // A policy change, applied with kubectl, takes effect.
    let allow = "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: bank-allow-customers, namespace: bank}\nspec:\n  target: {workload: bank, port: 8080}\n  from:\n    identities: [spiffe://cluster.local/ns/order/sa/customers]\n";
    let start = Instant::now();
    apply(allow);
    eventually(
        "the new policy lets customers in",
        Duration::from_secs(10),
        || (call(&customers, "GET", "http://bank.bank/accounts").0 != 403).then_some(()),
    );
    println!("policy applied → enforced in {:?}", start.elapsed());
    let start = Instant::now();
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
        || (call(&customers, "GET", "http://bank.bank/accounts").0 == 403).then_some(()),
    );
    println!("policy deleted → denied in {:?}", start.elapsed());

    // A stateless workload of three replicas gets traffic on all three; deleting one pod fails
    // no read (its endpoint goes, reads are retried elsewhere).
    let echo = std::fs::read_to_string(repo().join("crates/cli/tests/fixtures/kube-echo.yaml"))
        .expect("kube-echo.yaml");
    apply(&echo);
    deployment_ready("order", "echo");
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
    let start = Instant::now();
    kubectl(&["-n", "order", "delete", "pod", &victim, "--wait=false"]);
    let (during, failed) = reader.join().expect("reader thread");
    assert!(
        failed.is_empty(),
        "reads failed while {victim} went away: {failed:?}"
    );
    let gone = eventually(
        "the deleted pod's endpoint is gone",
        Duration::from_secs(15),
        || {
            let (names, _) = echo_reads(&customers, 10);
            (!names.contains(&victim)).then_some(start.elapsed())
        },
    );
    println!(
        "echo: {} pods answered during the deletion; {victim} out of rotation within {gone:?}",
        during.len()
    );

    // Deleting a control-plane pod interrupts nothing.
    let (control_pod, _) = pods("onemesh", "app.kubernetes.io/name=onemesh-control")
        .first()
        .expect("a control pod")
        .clone();
    kubectl(&[
        "-n",
        "onemesh",
        "delete",
        "pod",
        &control_pod,
        "--wait=false",
    ]);
    assert_payments(&pay(&customers, 20), 20);
    deployment_ready("onemesh", "onemesh-control");
    clean();
}
