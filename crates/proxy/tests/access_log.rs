//! `ONEMESH_PROXY_ACCESS_LOG=json`: the `onemesh-proxy` binary writes one JSON line per request
//! on stdout, the tap event with the same masking (no card number, no `x-merchant-key` value);
//! with the default (`off`) it writes none.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::json;
use support::*;

/// Starts the binary with `vars`; returns it, its outbound and admin addresses, and its stdout
/// lines.
fn spawn(
    vars: &std::collections::HashMap<&'static str, String>,
) -> (
    Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
    mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_onemesh-proxy"))
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
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
    (child, outbound, admin, out_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_logs_are_masked_and_off_by_default() {
    let pki = Pki::new();
    let app = http1_app().await;
    let server = ProxyBuilder::new(&pki, "card")
        .static_config(json!({ "inbound": allow(&["pg"], &[app]) }))
        .start()
        .await;
    let config = json!({ "services": [ { "name": "card", "namespace": "card",
        "endpoints": [ endpoint(&server, app, "card", "http") ] } ] });

    for (log, expected) in [("json", 1), ("off", 0)] {
        let vars = ProxyBuilder::new(&pki, "pg")
            .static_config(config.clone())
            .env(onemesh_proxy::config::ENV_ACCESS_LOG, log)
            .variables();
        let (mut child, outbound, admin, stdout) = spawn(&vars);
        wait_ready(admin).await;
        let mut conn = http1_client(outbound).await;
        let (status, _, _) = get_with(
            &mut conn,
            "card.card",
            "/v1/pay/4111111111111111?pan=4111-1111-1111-1111",
            &[("x-merchant-key", "mk_live_SECRET")],
        )
        .await;
        assert_eq!(status, 200);
        let lines: Vec<String> = (0..expected)
            .map(|_| stdout.recv_timeout(TIMEOUT).expect("an access log line"))
            .collect();
        // nothing more (or nothing at all when off)
        assert!(
            stdout
                .recv_timeout(std::time::Duration::from_millis(500))
                .is_err()
        );
        let _ = child.kill();
        let _ = child.wait();
        for line in lines {
            assert!(!line.contains("41111111"), "{line}");
            assert!(!line.contains("4111-1111"), "{line}");
            assert!(!line.contains("SECRET"), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["direction"], "outbound");
            assert_eq!(v["status"], 200);
            assert_eq!(
                v["path"],
                "/v1/pay/************1111?pan=****-****-****-1111"
            );
            assert_eq!(v["headers"]["x-merchant-key"], "[masked]");
            assert_eq!(v["destination"]["workload"], "card");
        }
    }
}
