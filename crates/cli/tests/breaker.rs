//! Circuit breaking end to end under `onemesh up`: a service of two replicas (two workloads behind
//! one Service, each the `echo.py` fixture answering 500 while its own "sick" file exists), with a
//! service-level `circuitBreaker` in mesh.yaml. One sick replica is ejected within a bounded
//! number of requests (then nearly every request succeeds), shows as ejected in the caller's
//! metrics and in `onemesh endpoints`, and is probed back once it heals; with both sick, callers
//! get `503 circuit_open` fast instead of waiting.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Up, fixture, metrics, request};

fn mesh_yaml(dir: &Path) -> String {
    let echo = fixture("echo.py");
    let echo = echo.display();
    let replica = |name: &str| {
        let sick = dir.join(format!("sick-{name}"));
        format!(
            r#"
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: {name}, namespace: shop}}
spec:
  serviceAccount: echo
  labels: {{app: echo}}
  command: ["python3", "{echo}"]
  env: {{ECHO_FAIL_WHILE: "{sick}"}}
  ports: [{{name: http, port: 8080, protocol: http}}]
---"#,
            sick = sick.display()
        )
    };
    format!(
        r#"
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: client, namespace: shop}}
spec:
  serviceAccount: client
  labels: {{app: client}}
  command: ["sleep", "3600"]
  ports: []
---{a}{b}
apiVersion: onemesh.dev/v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: 8080}}]
  circuitBreaker:
    consecutiveFailures: 3
    baseEjection: 1s
    maxEjection: 2s
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {{name: echo-reads, namespace: shop}}
spec:
  service: echo
  match: {{methods: [GET]}}
"#,
        a = replica("echo-a"),
        b = replica("echo-b"),
    )
}

/// Sends `n` GETs to echo through `outbound`; returns (status, onemesh-error, workload, time)
/// of each.
async fn calls(outbound: &str, n: usize) -> Vec<(u16, String, String, Duration)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let (status, headers, body) = request(outbound, "GET", "echo.shop", "/x", b"").await;
        let reason = headers
            .get("onemesh-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let workload = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["workload"].as_str().map(str::to_string))
            .unwrap_or_default();
        out.push((status, reason, workload, start.elapsed()));
    }
    out
}

/// The value of the caller's `breaker_endpoint_state` sample for `endpoint` in `state`.
fn state_of(metrics: &str, endpoint: &str, state: &str) -> Option<f64> {
    let needle = format!("endpoint=\"{endpoint}\",state=\"{state}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("breaker_endpoint_state{"))
        .find_map(|l| {
            l.split_once(&needle)
                .and_then(|(_, v)| v.trim().parse().ok())
        })
}

/// Runs `promtool check metrics` on `text` (`PROMTOOL`, else `promtool` on PATH): any problem
/// fails.
fn promtool_check(text: &str) {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{bin} is missing ({e}): run scripts/install-test-deps or set PROMTOOL")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_is_ejected_probed_back_and_all_failing_fails_fast() {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-breaker-files-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let up = Up::start("breaker", &mesh_yaml(&dir));
    let outbound = up.outbound_addr("shop/client");
    let admin = up.workload("shop/client")["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let b_inbound = up.workload("shop/echo-b")["inbound"]
        .as_str()
        .unwrap()
        .to_string();

    // Both healthy: both replicas answer.
    let warm = calls(&outbound, 40).await;
    assert!(warm.iter().all(|c| c.0 == 200), "{warm:?}\n{}", up.log());
    for w in ["echo-a", "echo-b"] {
        assert!(warm.iter().any(|c| c.2 == w), "{w} got nothing: {warm:?}");
    }

    // echo-b falls sick: 3 failures in a row eject it; at most a few more reach it (a probe
    // every 0.5-2 s), the rest go to echo-a.
    let sick_b = dir.join("sick-echo-b");
    std::fs::write(&sick_b, b"").unwrap();
    let start = Instant::now();
    let mut run = calls(&outbound, 200).await;
    // (with two endpoints the balancer sends every request to the faster one: if echo-b was the
    // slower in the warm-up, it gets requests again only once its estimate has decayed, within
    // seconds; then 50 more, after its ejection, for the checks below)
    let deadline = start + Duration::from_secs(30);
    while run.iter().filter(|c| c.0 == 500).count() < 3 && Instant::now() < deadline {
        run.extend(calls(&outbound, 50).await);
    }
    run.extend(calls(&outbound, 50).await);
    let took = start.elapsed();
    let failed = run.iter().filter(|c| c.0 == 500).count();
    // 3 to eject, then one probe per ejection (each at least 0.5 s long)
    let bound = 3 + 1 + (took.as_secs_f64() / 0.5).ceil() as usize;
    assert!(
        failed >= 3 && failed <= bound,
        "{failed} failures in {took:?} (bound {bound}): {run:?}"
    );
    let last: Vec<_> = run[run.len() - 50..].iter().collect();
    let ok = last.iter().filter(|c| c.0 == 200).count();
    assert!(ok >= 48, "only {ok} of the last 50 succeeded: {last:?}");
    assert!(
        last.iter().filter(|c| c.0 == 200).all(|c| c.2 == "echo-a"),
        "a success from the sick replica? {last:?}"
    );

    // The caller's proxy shows it ejected (or on probation, between ejections), and so does
    // `onemesh endpoints`.
    let m = metrics(&admin).await;
    let out_of_rotation = ["ejected", "probation"]
        .iter()
        .any(|s| state_of(&m, &b_inbound, s) == Some(1.0));
    assert!(out_of_rotation, "echo-b not out of rotation:\n{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("breaker_ejection_total{") && l.contains(&b_inbound)),
        "no ejection counted:\n{m}"
    );
    promtool_check(&m);
    let (ok, table) = up.cli(&["endpoints", "echo"]);
    assert!(ok, "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&b_inbound))
        .unwrap_or_else(|| panic!("echo-b not listed:\n{table}"));
    assert!(
        row.contains("EJECTED") || row.contains("PROBATION"),
        "echo-b not shown out of rotation:\n{table}"
    );
    assert!(row.contains("shop/echo-b"), "{table}");
    // `onemesh routes` names the breaker in force on the route (the service's) and counts the
    // endpoints it has ejected now (echo-b, unless it is on probation at this instant)
    let (ok, json) = up.cli(&["routes", "echo", "-o", "json"]);
    assert!(ok, "{json}");
    let routes: serde_json::Value = serde_json::from_str(&json).unwrap();
    let route = &routes[0];
    assert_eq!(route["name"], "echo-reads", "{json}");
    assert_eq!(
        route["breaker"], "service: 3 in a row, eject 1s-2s",
        "{json}"
    );
    assert!(route["ejected"].as_u64().is_some_and(|n| n <= 1), "{json}");

    // echo-b heals: a probe finds it well and it serves again within a bounded time (its ejection
    // is at most 2 s).
    std::fs::remove_file(&sick_b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let round = calls(&outbound, 20).await;
        if round.iter().any(|c| c.2 == "echo-b" && c.0 == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "echo-b was not probed back within 10 s: {round:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(&admin).await;
    assert_eq!(state_of(&m, &b_inbound, "healthy"), Some(1.0), "{m}");

    // Both sick: once both are ejected, callers get 503 circuit_open at once, not timeouts.
    std::fs::write(dir.join("sick-echo-a"), b"").unwrap();
    std::fs::write(&sick_b, b"").unwrap();
    let run = calls(&outbound, 30).await;
    let first_open = run
        .iter()
        .position(|c| c.0 == 503 && c.1 == "circuit_open")
        .unwrap_or_else(|| panic!("no circuit_open in {run:?}"));
    // 3 failures each to eject both (the second beyond the 50 % cap, then every one fails)
    assert!(
        first_open <= 8,
        "circuit_open only after {first_open}: {run:?}"
    );
    let open: Vec<_> = run.iter().filter(|c| c.1 == "circuit_open").collect();
    assert!(open.len() >= 15, "{run:?}");
    for c in &open {
        assert!(
            c.3 < Duration::from_millis(200),
            "circuit_open took {:?}",
            c.3
        );
    }
    let m = metrics(&admin).await;
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"circuit_open\"") && l.starts_with("proxy_error_total")),
        "circuit_open not counted:\n{m}"
    );

    up.stop_and_clean();
    let _ = std::fs::remove_dir_all(&dir);
}
