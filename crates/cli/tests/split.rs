//! A canary under `onemesh up`: a Route with `backends` sends 10 % of a service's requests to
//! `web-v2` (10 % ± 3 % of 2,000 requests), and after a live edit of mesh.yaml 100 %; the
//! caller's metrics count the requests under the backend's workload and the route's name.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Up, fixture, metrics};

fn mesh_yaml() -> String {
    let echo = fixture("echo.py");
    let echo = echo.display();
    let workload = |name: &str, command: &str| {
        let ports = if command.contains("sleep") {
            "[]"
        } else {
            "[{name: http, port: 8080, protocol: http}]"
        };
        format!(
            "apiVersion: onemesh.dev/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  serviceAccount: {name}\n  labels: {{app: {name}}}\n  command: {command}\n  ports: {ports}\n---\n"
        )
    };
    let service = |name: &str| {
        format!(
            "apiVersion: onemesh.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n"
        )
    };
    let app = format!(r#"["python3", "{echo}"]"#);
    format!(
        "apiVersion: onemesh.dev/v1\nkind: Namespace\nmetadata: {{name: demo}}\n---\n{}{}{}{}{}\
apiVersion: onemesh.dev/v1
kind: Route
metadata: {{name: web-canary, namespace: demo}}
spec:
  service: web
  backends:
    - {{service: web, weight: 90}}
    - {{service: web-v2, weight: 10}}
",
        workload("client", r#"["sleep", "3600"]"#),
        workload("web", &app),
        workload("web-v2", &app),
        service("web"),
        service("web-v2"),
    )
}

/// Sends `n` GETs for `host` over one kept-alive connection to `addr`; returns how many each
/// workload answered (the echo app names itself), keyed by workload.
async fn spread(addr: &str, host: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let req = hyper::Request::get("/hello")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let workload = v["workload"].as_str().unwrap_or("?").to_string();
        *seen.entry(workload).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gets_its_share_then_everything_after_a_live_edit() {
    let up = Up::start("split", &mesh_yaml());
    let outbound = up.outbound_addr("demo/client");
    let admin = up.workload("demo/client")["admin"]
        .as_str()
        .unwrap()
        .to_string();

    // The dashboard has scraped the caller once before any request (so that `routes` counts
    // every one of them: counters are differenced from the first scrape).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = up.cli(&["stat", "demo/client", "-o", "json"]);
        if ok && out.contains("\"client\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never scraped demo/client: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 1. 90/10: web-v2 gets 10 % ± 3 % of 2,000 requests, web the rest.
    let n = 2000;
    let seen = spread(&outbound, "web.demo", n).await;
    let v2 = seen.get("web-v2").copied().unwrap_or(0);
    let v1 = seen.get("web").copied().unwrap_or(0);
    println!("90/10 split over {n} requests: {seen:?}");
    assert_eq!(v1 + v2, n, "{seen:?}");
    assert!(
        (140..=260).contains(&v2),
        "web-v2 got {v2} of {n}: {seen:?}"
    );

    // The caller counted them under the backend's workload and the route's name.
    let text = metrics(&admin).await;
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("request_total{")
                && l.contains("dst_workload=\"web-v2\"")
                && l.contains("route=\"web-canary\"")
        })
        .unwrap_or_else(|| panic!("no request_total for web-v2 on web-canary in:\n{text}"));
    let value: usize = counted.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, v2, "{counted}");

    // `onemesh routes` shows the route, its declared weights and the shares really sent (once
    // the dashboard has scraped the caller after the requests).
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let (ok, out) = up.cli(&["routes", "web.demo", "-o", "json", "--window", "600"]);
        assert!(ok, "{out}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(rows.len(), 1, "{out}");
        if rows[0]["requests"].as_u64() == Some(n as u64) {
            break rows[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "routes never counted {n} requests: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row["name"], "web-canary");
    assert_eq!(
        row["backends"],
        serde_json::json!([["web", 90], ["web-v2", 10]])
    );
    assert_eq!(
        row["by_backend"]["demo/web-v2"].as_u64(),
        Some(v2 as u64),
        "{row}"
    );
    assert_eq!(
        row["by_backend"]["demo/web"].as_u64(),
        Some(v1 as u64),
        "{row}"
    );
    assert_eq!(row["success_rate"].as_f64(), Some(1.0), "{row}");
    let (ok, table) = up.cli(&["routes"]);
    assert!(
        ok && table.contains("demo/web-canary") && table.contains("web-v2 10%"),
        "{table}"
    );

    // 2. A live edit sends everything to web-v2: in force within a few seconds, then 100 %.
    up.edit_config(|t| {
        t.replace("{service: web, weight: 90}", "{service: web, weight: 0}")
            .replace(
                "{service: web-v2, weight: 10}",
                "{service: web-v2, weight: 100}",
            )
    });
    let edited = Instant::now();
    loop {
        let seen = spread(&outbound, "web.demo", 20).await;
        if seen.get("web-v2") == Some(&20) {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(10),
            "the weight edit was not in force after {:?}: {seen:?}",
            edited.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("weight edit in force after {:?}", edited.elapsed());
    let seen = spread(&outbound, "web.demo", 500).await;
    assert_eq!(seen.get("web-v2"), Some(&500), "{seen:?}");

    // 3. Requests straight to web-v2 are not split (the route belongs to web).
    let seen = spread(&outbound, "web-v2.demo", 50).await;
    assert_eq!(seen.get("web-v2"), Some(&50), "{seen:?}");
    up.stop_and_clean();
}
