//! `onemesh up --isolate` (root): the reference platform with each workload in a network
//! namespace of its own. Payments flow through the public entry; a direct connection to an app's
//! port, from this machine's namespace or from another workload's namespace, reaches the app's
//! proxy instead (plain, so unauthenticated: refused by default deny) and never the app; `down`,
//! and the next `up` after a SIGKILLed one, leave no namespace or veth behind. Without root,
//! `up --isolate` refuses at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::platform::{self, Kind};
use support::{Up, alive, leftovers, request};

/// The `isolation` record of the running layout.
fn isolation(up: &Up) -> Value {
    let text = std::fs::read_to_string(up.dir.join("state/layout.json")).unwrap();
    let layout: Value = serde_json::from_str(&text).unwrap();
    layout["isolation"].clone()
}

/// Raw bytes to `addr` (`host:port[@netns]`) and everything that comes back until the peer
/// closes, or an error.
async fn raw(addr: &str, send: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = support::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(send).await.map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) if got.is_empty() => Err(format!("read: {e}")),
        Ok(Err(_)) => Ok(got),
        Err(_) => Err(format!(
            "no close within 5 s; got {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_platform_pays_through_the_entry_and_apps_answer_only_through_their_proxies() {
    platform::assert_platform_built();
    let t0 = Instant::now();
    let mut up = Up::start_isolated("isolate", &platform::platform_mesh());
    println!(
        "up --isolate: check passes {:.2}s after start",
        t0.elapsed().as_secs_f64()
    );
    let net = isolation(&up);
    let tag = net["tag"].as_str().unwrap().to_string();
    let subnet = net["subnet"].as_str().unwrap().to_string();
    assert!(subnet.starts_with("10.253."), "{net}");

    // Every workload in a namespace of its own, its proxy's inbound and admin on its address.
    let bank = up.workload("bank/bank");
    let bank_ip = bank["address"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for key in platform::WORKLOADS {
        let w = up.workload(key);
        let ns = w["netns"].as_str().unwrap().to_string();
        let ip = w["address"].as_str().unwrap().to_string();
        assert!(ns.starts_with(&format!("onemesh-up-{tag}-")), "{w}");
        assert_eq!(w["inbound"], format!("{ip}:4143"), "{w}");
        assert_eq!(w["admin"], format!("{ip}:4191"), "{w}");
        assert_eq!(w["outbound"], "127.0.0.1:4140", "{w}");
        assert!(!seen.contains(&ns) && !seen.contains(&ip), "{w} shares");
        seen.extend([ns, ip]);
    }
    // The control plane listens where the namespaces reach it, not on loopback.
    let gateway = net["gateway"].as_str().unwrap();
    assert!(
        up.status()["control"]["identity"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{gateway}:")),
        "{}",
        up.status()["control"]
    );

    // 1. Payments flow through the public entry (order → pg → appcard/card → bank).
    let entry = platform::entry(&up);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut outcomes = Vec::new();
    for (n, kind) in [Kind::AppcardCheck, Kind::CardNumber, Kind::WrongPin]
        .into_iter()
        .enumerate()
    {
        let o = platform::customer_order(&entry, &format!("iso-{n}"), kind, deadline).await;
        let (want, code) = kind.expected();
        assert_eq!(o.status, want, "{o:?}\n{}", platform::log_tail(&up, "", 40));
        assert_eq!(o.failure_code.as_deref(), code, "{o:?}");
        outcomes.push(o);
    }

    // 2. The bank's app serves on its namespace's loopback (so what follows is not an app down)…
    let bank_app = up.app_addr("bank/bank", 8080);
    let (status, accounts) = platform::call(
        &bank_app,
        "GET",
        "/accounts",
        None,
        &[],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{accounts}");
    assert!(accounts.to_string().contains("balance"), "{accounts}");

    // …but from this machine's namespace its port lands on its proxy: plain means
    // unauthenticated, and bank allows only card.
    let direct = format!("{bank_ip}:8080");
    let (status, headers, body) = request(&direct, "GET", "bank.bank", "/accounts", b"").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["onemesh-error"], "forbidden");
    assert!(body.contains("unauthenticated"), "{body}");
    assert!(!body.contains("balance"), "the app answered: {body}");
    // A port the app does not declare is not forwarded at all: the connection is closed.
    let got = raw(
        &format!("{bank_ip}:9"),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(
        got.as_ref()
            .map_or(true, |b| !b.starts_with(b"HTTP/1.1 200")),
        "{got:?}"
    );

    // 3. From another workload's namespace (pg's), bypassing pg's proxy: the same refusal.
    let from_pg = up.in_netns("pg/pg", &direct);
    let (status, headers, body) = request(&from_pg, "GET", "bank.bank", "/accounts", b"").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["onemesh-error"], "forbidden");
    assert!(!body.contains("balance"), "the app answered: {body}");
    // And through pg's proxy, pg is who it is: still not allowed at the bank.
    let (status, _, body) = request(
        &up.outbound_addr("pg/pg"),
        "GET",
        "bank.bank",
        "/accounts",
        b"",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/pg/sa/pg"),
        "{body}"
    );

    // 4. The money invariants hold, read inside the namespaces.
    let checked = platform::check_invariants(&up, &outcomes).await;
    println!("invariants hold: {checked:?}");

    // 5. `down` stops everything and leaves no namespace, veth or bridge behind.
    assert!(!leftovers(&tag).is_empty(), "nothing found for tag {tag}");
    let pids = up.pids();
    assert!(up.down(), "onemesh up did not exit 0");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "processes left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leftovers(&tag), Vec::<String>::new(), "left behind by down");
    up.stop_and_clean();
}

/// Two workloads: the echo fixture, and `wide`, an app that listens on every address of its
/// namespace (Python's http.server on 0.0.0.0:8080, serving the fixtures directory).
fn two_apps_mesh() -> String {
    let echo = support::fixture("echo.py");
    let fixtures = support::fixture("");
    format!(
        r#"
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {{name: beta}}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: open, namespace: beta}}
spec:
  serviceAccount: open
  labels: {{app: open}}
  command: ["python3", "{}"]
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {{name: wide, namespace: beta}}
spec:
  serviceAccount: wide
  labels: {{app: wide}}
  command: ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", "{}"]
  ports: [{{name: http, port: 8080, protocol: http}}]
"#,
        echo.display(),
        fixtures.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_guards_an_app_listening_on_every_address_and_a_killed_up_is_cleaned_up_by_the_next_up_or_down()
 {
    let mut up = Up::start_isolated("isolate-kill", &two_apps_mesh());
    let tag = isolation(&up)["tag"].as_str().unwrap().to_string();
    let before = leftovers(&tag);
    // A bridge, two namespaces and two veths.
    assert_eq!(before.len(), 5, "{before:?}");

    // `wide` listens on its namespace's address too: from inside, that address reaches the app
    // itself (the kernel routes it over loopback, which capture leaves alone)…
    let wide_ip = up.workload("beta/wide")["address"]
        .as_str()
        .unwrap()
        .to_string();
    let inside = up.in_netns("beta/wide", &format!("{wide_ip}:8080"));
    let (status, _, body) = request(&inside, "GET", "wide", "/", b"").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("echo.py"),
        "not the directory listing: {body}"
    );
    // …but from outside the namespace the same address and port land on the proxy: refused,
    // and nothing of the app's comes back.
    for from in [
        format!("{wide_ip}:8080"),
        up.in_netns("beta/open", &format!("{wide_ip}:8080")),
    ] {
        let (status, headers, body) = request(&from, "GET", "wide", "/", b"").await;
        assert_eq!(status, 403, "{from}: {body}");
        assert_eq!(headers["onemesh-error"], "forbidden", "{from}");
        assert!(
            !body.contains("echo.py"),
            "{from}: the app answered: {body}"
        );
    }

    // SIGKILL: no cleanup runs; the children die with it (PR_SET_PDEATHSIG).
    let pid = up.up_pid().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Its children go with it; the zombie is reaped by `restart` below.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stale = leftovers(&tag);
    stale.sort();
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(
        stale, expected,
        "a killed up's network should still be there"
    );

    // The next `up` on the same state directory removes them and makes its own (same names).
    up.restart(&["--isolate"]);
    assert!(
        up.log().contains("isolated: 2 network namespaces"),
        "{}",
        up.log()
    );
    let mut now = leftovers(&tag);
    now.sort();
    assert_eq!(now, expected);
    let outbound = up.outbound_addr("beta/open");
    assert!(outbound.contains('@'), "{outbound}");

    // Killed again: this time `onemesh down` finds the dead `up` and removes its network.
    let pid = up.up_pid().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leftovers(&tag).len(), 5);
    // (`down` itself must succeed; the killed `up` did not exit 0.)
    assert!(!up.down());
    assert_eq!(
        leftovers(&tag),
        Vec::<String>::new(),
        "left behind after down"
    );
    up.stop_and_clean();
}

#[test]
fn up_isolate_without_root_fails_at_once_saying_so() {
    use std::os::unix::process::CommandExt;
    support::assert_root();
    let t0 = Instant::now();
    // As nobody: the check comes before anything is read or created.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .args([
            "--state-dir",
            "/nonexistent/state",
            "up",
            "--isolate",
            "-f",
            "/nonexistent/mesh.yaml",
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("--isolate needs root"), "{text}");
    assert!(text.contains("without it"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}
