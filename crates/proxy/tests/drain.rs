//! SIGTERM to the `onemesh-proxy` binary (static mode) while requests stream through it: every
//! request it had accepted completes with 200, new connections are refused, and it exits 0
//! within the grace period.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "bank")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let vars = ProxyBuilder::new(&pki, "pg")
        .static_config(json!({ "services": [ { "name": "web", "namespace": "bank",
            "endpoints": [ endpoint(&server, app, "bank", "http") ] } ] }))
        .env(onemesh_proxy::config::ENV_SHUTDOWN_GRACE, "10s")
        .variables();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onemesh-proxy"))
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The one start-up line tells the bound addresses.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("proxy: {line}");
            let _ = tx.send(line);
        }
    });
    let addr = |line: &str, key: &str| -> std::net::SocketAddr {
        let rest = line.split(key).nth(1).unwrap();
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (outbound, admin) = loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("the proxy printed no listening line");
        if line.contains("outbound=") {
            break (addr(&line, "outbound="), addr(&line, "admin="));
        }
    };
    wait_ready(admin).await;

    // A steady stream of requests before the signal: all succeed.
    let mut conn = http1_client(outbound).await;
    for _ in 0..20 {
        let (status, _, _) = get(&mut conn, "web.bank", "/before").await;
        assert_eq!(status, 200);
    }
    // Slow requests in flight when the signal arrives.
    let mut in_flight = Vec::new();
    for _ in 0..10 {
        let mut c = http1_client(outbound).await;
        in_flight.push(tokio::spawn(async move {
            get(&mut c, "web.bank", "/slow/1500").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted.
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "the outbound listener still accepts after SIGTERM"
    );
    for task in in_flight {
        let (status, _, body) = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"slept 1500");
    }
    // Nothing is left in flight, so it exits well before the 10 s grace.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not exit soon after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
