//! The inbound's traffic rules under `onemesh up` (issue 15, items 4 and 5), with stateless echo
//! workloads: a caller above its rate limit gets 429s while another caller at the same time gets
//! none (even when the first forges the second's identity header), and none outside the limit's
//! path; an abort of 30 % declared on a
//! route shows as ≈30 % 500s at the caller and in the serving proxy's `fault_injected_total`; a
//! header-gated delay shows in latency only with its header; removing the abort by a live edit of
//! mesh.yaml stops it.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Up, connect, fixture, metrics};

const NOISY_ID: &str = "spiffe://cluster.local/ns/alpha/sa/noisy";
const CALM_ID: &str = "spiffe://cluster.local/ns/alpha/sa/calm";

fn mesh_yaml() -> String {
    let echo = fixture("echo.py");
    let echo = echo.display();
    let caller = |name: &str| {
        format!(
            "apiVersion: onemesh.dev/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: alpha}}\nspec:\n  serviceAccount: {name}\n  labels: {{app: {name}}}\n  command: [\"sleep\", \"3600\"]\n  ports: []\n"
        )
    };
    let server = |name: &str| {
        format!(
            "apiVersion: onemesh.dev/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: beta}}\nspec:\n  serviceAccount: {name}\n  labels: {{app: {name}}}\n  command: [\"python3\", \"{echo}\"]\n  ports: [{{name: http, port: 8080, protocol: http}}]\n---\napiVersion: onemesh.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: beta}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}-callers, namespace: beta}}\nspec:\n  target: {{workload: {name}}}\n  from: {{namespaces: [alpha]}}\n"
        )
    };
    format!(
        r#"apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: alpha}}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: beta}}
---
{noisy}---
{calm}---
{limited}---
{flaky}---
apiVersion: onemesh.dev/v1
kind: RateLimitPolicy
metadata: {{name: per-caller, namespace: beta}}
spec:
  target: {{workload: limited, port: 8080}}
  match: {{pathPrefix: /work}}
  identity: {{requestsPerSecond: 5, burst: 10}}
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {{name: limited-work, namespace: beta}}
spec:
  service: limited
  match: {{pathPrefix: /work}}
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {{name: flaky-abort, namespace: beta}}
spec:
  service: flaky
  match: {{pathPrefix: /abort}}
  fault:
    abort: {{httpStatus: 500, percent: 30}}
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {{name: flaky-delay, namespace: beta}}
spec:
  service: flaky
  match: {{methods: [GET], pathPrefix: /slow}}
  fault:
    delay: {{duration: 400ms}}
    header: {{name: x-fault, value: "on"}}
"#,
        noisy = caller("noisy"),
        calm = caller("calm"),
        limited = server("limited"),
        flaky = server("flaky"),
    )
}

/// One HTTP/1.1 request through a proxy's outbound port, with extra headers: (status, headers,
/// time to the response head).
async fn send(
    outbound: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Duration) {
    let stream = connect(outbound)
        .await
        .unwrap_or_else(|e| panic!("connect {outbound}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let start = Instant::now();
    let rsp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let took = start.elapsed();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let _ = rsp.into_body().collect().await;
    (status, headers, took)
}

/// The value of the first sample of `name` whose line holds every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rate_limits_and_faults_under_up() {
    let up = Up::start("traffic-inbound", &mesh_yaml());
    let noisy = up.outbound_addr("alpha/noisy");
    let calm = up.outbound_addr("alpha/calm");
    let limited_admin = up.workload("beta/limited")["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let flaky_admin = up.workload("beta/flaky")["admin"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. Rate limits: noisy sends 60 requests as fast as it can, each forging calm's identity
    // (and a forwarded-for) in headers; calm sends one every 300 ms meanwhile (under 5/s).
    let forged = [
        ("onemesh-client-id", CALM_ID),
        ("x-forwarded-for", "10.0.0.7"),
    ];
    let noisy_run = async {
        let mut out = Vec::new();
        for _ in 0..60 {
            out.push(send(&noisy, "limited.beta", "/work", &forged).await);
        }
        out
    };
    let calm_run = async {
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(send(&calm, "limited.beta", "/work", &[]).await.0);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        out
    };
    let (noisy_out, calm_out) = tokio::join!(noisy_run, calm_run);
    let limited: Vec<_> = noisy_out.iter().filter(|(s, _, _)| *s == 429).collect();
    let passed = noisy_out.iter().filter(|(s, _, _)| *s == 200).count();
    assert!(
        limited.len() >= 20 && passed >= 10,
        "noisy: {} limited, {passed} passed (burst 10, 5/s): {:?}\n{}",
        limited.len(),
        noisy_out.iter().map(|o| o.0).collect::<Vec<_>>(),
        up.log()
    );
    assert_eq!(passed + limited.len(), 60, "only 200s and 429s");
    // the limit covers /work only: noisy's other requests, with its bucket empty, pass
    for _ in 0..10 {
        let (status, _, _) = send(&noisy, "limited.beta", "/other", &[]).await;
        assert_eq!(
            status, 200,
            "a request outside the limit's match was limited"
        );
    }
    let (_, h, _) = limited[0];
    assert_eq!(h["onemesh-error"], "rate_limited");
    assert_eq!(
        h["retry-after"], "1",
        "the next token within a second, rounded up"
    );
    assert!(
        calm_out.iter().all(|s| *s == 200),
        "calm was limited by noisy's traffic: {calm_out:?}"
    );
    let text = metrics(&limited_admin).await;
    let counted = sample(
        &text,
        "rate_limited_total",
        &[
            &format!("client_id=\"{NOISY_ID}\""),
            "policy=\"per-caller\"",
            "limit=\"identity\"",
        ],
    );
    assert_eq!(counted, Some(limited.len() as f64), "{text}");
    assert!(
        sample(
            &text,
            "rate_limited_total",
            &[&format!("client_id=\"{CALM_ID}\"")]
        )
        .is_none(),
        "calm counted as limited:\n{text}"
    );

    // 2. An abort of 30 % on /abort: ≈30 % 500s over 400 requests (σ ≈ 2.3 points), each
    // marked fault_injected and counted by flaky's inbound; other paths untouched.
    let mut aborted = 0;
    for i in 0..400 {
        let (status, h, _) = send(&calm, "flaky.beta", &format!("/abort/{i}"), &[]).await;
        match status {
            200 => {}
            500 => {
                assert_eq!(h["onemesh-error"], "fault_injected");
                aborted += 1;
            }
            other => panic!("unexpected {other} on /abort"),
        }
    }
    assert!(
        (90..=150).contains(&aborted),
        "{aborted} of 400 aborted, expected ≈120"
    );
    let text = metrics(&flaky_admin).await;
    let counted = sample(
        &text,
        "fault_injected_total",
        &["route=\"flaky-abort\"", "kind=\"abort\""],
    );
    assert_eq!(counted, Some(f64::from(aborted)), "{text}");
    for _ in 0..20 {
        // a fault header on a path without a fault does nothing
        let (status, _, took) = send(&calm, "flaky.beta", "/other", &[("x-fault", "on")]).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(400), "delayed: {took:?}");
    }

    // 3. The delay on /slow applies only to requests carrying `x-fault: on`.
    let (status, _, took) = send(&calm, "flaky.beta", "/slow", &[]).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(400),
        "delayed without the header: {took:?}"
    );
    let (status, _, took) = send(&calm, "flaky.beta", "/slow", &[("x-fault", "off")]).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(400),
        "delayed with another value: {took:?}"
    );
    let (status, _, took) = send(&calm, "flaky.beta", "/slow", &[("x-fault", "on")]).await;
    assert_eq!(status, 200, "a delay forwards the request");
    assert!(took >= Duration::from_millis(400), "not delayed: {took:?}");
    let text = metrics(&flaky_admin).await;
    let delays = sample(
        &text,
        "fault_injected_total",
        &["route=\"flaky-delay\"", "kind=\"delay\""],
    );
    assert_eq!(delays, Some(1.0), "{text}");

    // `onemesh routes` shows the faults and the limits in force on each route
    let (ok, json) = up.cli(&["routes", "-o", "json"]);
    assert!(ok, "{json}");
    let routes: serde_json::Value = serde_json::from_str(&json).unwrap();
    let route = |name: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {json}"))
            .clone()
    };
    assert_eq!(route("flaky-abort")["fault"], "abort 500 30%", "{json}");
    assert_eq!(
        route("flaky-delay")["fault"],
        "delay 400ms 100%, if x-fault=on",
        "{json}"
    );
    assert_eq!(
        route("limited-work")["limits"],
        serde_json::json!(["per-caller: per caller 5/s burst 10"]),
        "{json}"
    );
    assert_eq!(route("flaky-abort")["limits"], serde_json::json!([]));
    assert!(route("limited-work")["fault"].is_null(), "{json}");

    // 4. Removing the abort by a live edit of mesh.yaml stops it.
    up.edit_config(|t| t.replace("  fault:\n    abort: {httpStatus: 500, percent: 30}\n", ""));
    let edited = Instant::now();
    let mut clean_run = 0;
    while clean_run < 60 {
        let (status, _, _) = send(&calm, "flaky.beta", "/abort/x", &[]).await;
        clean_run = if status == 200 { clean_run + 1 } else { 0 };
        assert!(
            edited.elapsed() < Duration::from_secs(10),
            "the abort is still injected {:?} after the edit\n{}",
            edited.elapsed(),
            up.log()
        );
    }
    println!(
        "noisy: {} limited; abort: {aborted}/400; edit in force within {:?}",
        limited.len(),
        edited.elapsed()
    );
    up.stop_and_clean();
}
