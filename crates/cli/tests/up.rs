//! `onemesh up` end to end, as a user runs it: the control plane and two namespaces of workloads
//! with their proxies. Checks that a call crosses the mesh over mTLS with both identities seen (by
//! the app, in metrics and in `onemesh edges`), that policy denies with a named 403, that a policy
//! edit in mesh.yaml takes effect within a second, that traffic survives the control plane being
//! killed and watches come back after its restart, and that `onemesh down` leaves no process.

mod support;

use std::time::{Duration, Instant};

use support::{Up, alive, fixture, metrics, request};

fn mesh_yaml() -> String {
    let echo = fixture("echo.py");
    let echo = echo.display();
    format!(
        r#"
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: alpha}}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: beta}}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: client, namespace: alpha}}
spec:
  serviceAccount: client
  labels: {{app: client}}
  command: ["sleep", "3600"]
  ports: []
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: open, namespace: beta}}
spec:
  serviceAccount: open
  labels: {{app: open}}
  command: ["python3", "{echo}"]
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: locked, namespace: beta}}
spec:
  serviceAccount: locked
  labels: {{app: locked}}
  command: ["python3", "{echo}"]
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: onemesh.dev/v1
kind: Service
metadata: {{name: open, namespace: beta}}
spec:
  selector: {{app: open}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: onemesh.dev/v1
kind: Service
metadata: {{name: locked, namespace: beta}}
spec:
  selector: {{app: locked}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: open-allow-client, namespace: beta}}
spec:
  target: {{workload: open, port: 8080}}
  from:
    identities: [spiffe://cluster.local/ns/alpha/sa/client]
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: locked-allow-open, namespace: beta}}
spec:
  target: {{workload: locked, port: 8080}}
  from:
    identities: [spiffe://cluster.local/ns/beta/sa/open]
"#
    )
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/alpha/sa/client";
const OPEN_ID: &str = "spiffe://cluster.local/ns/beta/sa/open";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_meshes_calls_enforces_policy_and_survives_the_control_plane() {
    meshes_calls_enforces_policy_and_survives_the_control_plane(false).await;
}

/// The same under `onemesh up --isolate` (root): the client's calls leave from inside its
/// network namespace, where its proxy's outbound port is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_isolated_meshes_calls_enforces_policy_and_survives_the_control_plane() {
    meshes_calls_enforces_policy_and_survives_the_control_plane(true).await;
}

async fn meshes_calls_enforces_policy_and_survives_the_control_plane(isolate: bool) {
    let mut up =
        Up::start_maybe_isolated(if isolate { "up-iso" } else { "up" }, &mesh_yaml(), isolate);
    let client = up.workload("alpha/client");
    let outbound = up.outbound_addr("alpha/client");
    // Without --isolate, `up` says which isolation the mesh lacks.
    let warned = up
        .log()
        .contains("not isolated: workloads share this machine's loopback");
    assert_eq!(warned, !isolate, "{}", up.log());
    let client_admin = client["admin"].as_str().unwrap().to_string();
    // The bootstrap tokens are secrets: readable by this user only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(up.dir.join("state/tokens.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "tokens.json is readable by others: {mode:o}"
    );

    // 1. An allowed call crosses the mesh; the app sees the caller's identity.
    let (status, _, body) = request(&outbound, "GET", "open.beta", "/hello", b"").await;
    assert_eq!(status, 200, "allowed call failed: {body}\n{}", up.log());
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["workload"], "open");
    assert_eq!(seen["headers"]["onemesh-client-id"], CLIENT_ID);

    // 2. A call policy forbids gets 403, naming the caller and the policy.
    let (status, headers, body) = request(&outbound, "GET", "locked.beta", "/secret", b"").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["onemesh-error"], "forbidden");
    assert!(
        body.contains(CLIENT_ID),
        "403 body does not name the caller: {body}"
    );
    assert!(
        body.contains("locked-allow-open"),
        "403 body does not name the policy: {body}"
    );

    // 3. The caller's proxy counted the call with both identities, over TLS.
    let text = metrics(&client_admin).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("request_total{") && l.contains("dst_workload=\"open\""))
        .unwrap_or_else(|| panic!("no request_total for open in:\n{text}"));
    assert!(line.contains(&format!("server_id=\"{OPEN_ID}\"")), "{line}");
    assert!(line.contains("tls=\"true\""), "{line}");

    // 4. `onemesh edges` shows the edge with both identities (after two scrapes).
    let deadline = Instant::now() + Duration::from_secs(15);
    let edge = loop {
        let (ok, out) = up.cli(&["edges", "-o", "json"]);
        assert!(ok, "{out}");
        let edges: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if let Some(e) = edges.iter().find(|e| {
            e["src_namespace"] == "alpha"
                && e["src_workload"] == "client"
                && e["dst_namespace"] == "beta"
                && e["dst_workload"] == "open"
                && e["requests"].as_u64() > Some(0)
        }) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no edge alpha/client → beta/open in {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(edge["src_id"], CLIENT_ID);
    assert_eq!(edge["dst_id"], OPEN_ID);
    assert_eq!(edge["tls"], "mtls");
    for field in ["rps", "success_rate", "requests"] {
        assert!(edge.get(field).is_some(), "edge has no {field}: {edge}");
    }

    // 5. Allowing the client in mesh.yaml lets it through within a second.
    up.edit_config(|t| {
        t.replace(
            "identities: [spiffe://cluster.local/ns/beta/sa/open]",
            &format!("identities: [spiffe://cluster.local/ns/beta/sa/open, {CLIENT_ID}]"),
        )
    });
    let edited = Instant::now();
    loop {
        let (status, _, _) = request(&outbound, "GET", "locked.beta", "/secret", b"").await;
        if status == 200 {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(1),
            "policy edit not in force after {:?} (still {status})",
            edited.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("policy edit in force after {:?}", edited.elapsed());

    // 6. Killing the control plane interrupts nothing between running proxies.
    let control_pid = up.status()["control"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        let (status, _, body) = request(&outbound, "POST", "open.beta", "/pay", b"{}").await;
        assert_eq!(
            status, 200,
            "call failed while the control plane was down: {body}"
        );
        n += 1;
    }
    assert!(n > 10, "only {n} calls in 3 s");

    // 7. The control plane comes back (restarted by up) and watches resume: a new edit applies.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid = up.status()["control"]["pid"].as_i64();
        if pid.is_some_and(|p| p as i32 != control_pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "control plane was not restarted:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.edit_config(|t| t.replace(&format!(", {CLIENT_ID}]"), "]"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = request(&outbound, "GET", "locked.beta", "/secret", b"").await;
        if status == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watches did not resume after the restart:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 8. `onemesh down` stops everything.
    let pids = up.pids();
    assert!(
        pids.len() >= 8,
        "expected up, control, 3 proxies and 3 apps: {pids:?}"
    );
    assert!(up.down(), "onemesh up did not exit 0");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn up_refuses_an_invalid_mesh_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("onemesh-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mesh.yaml");
    std::fs::write(
        &config,
        "apiVersion: onemesh.dev/v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: onemesh.dev/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["up", "-f"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mesh.yaml:6"),
        "error does not name the line: {text}"
    );
    assert!(
        text.contains("Gateway"),
        "error does not name the kind: {text}"
    );
}
