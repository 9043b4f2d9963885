//! Quick numbers, not a test: the latency a proxy pair adds over a direct call, and the proxies'
//! memory. Starts an app answering 1 KB, two `onemesh-proxy` processes (static mode, a test PKI
//! made here), then sends a fixed rate of HTTP/1.1 requests (open loop: latency is measured from
//! the scheduled send time) directly to the app and through the pair, and prints p50/p99 and the
//! proxies' RSS idle and under load.
//!
//! Run (release): `cargo build --release -p onemesh-proxy --bin onemesh-proxy --example pair_latency`
//! then `target/release/examples/pair_latency [rps] [seconds]` (defaults 200 and 10).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use onemesh_identity::TrustAnchor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

fn spawn_proxy(vars: &[(&str, String)]) -> (Child, SocketAddr, SocketAddr) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("onemesh-proxy");
    let mut child = Command::new(bin)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("ONEMESH_PROXY_LOG", "warn,onemesh_proxy=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = |line: &str, key: &str| -> SocketAddr {
        let rest = line.split(key).nth(1).unwrap();
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("outbound=") => {
                std::thread::spawn(move || for _ in lines {});
                return (child, addr(&line, "outbound="), addr(&line, "inbound="));
            }
            Some(Ok(_)) => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("onemesh-proxy exited before listening");
            }
        }
    }
}

fn rss_kib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Open-loop load: one request every 1/rps seconds on a pool of connections.
async fn run(addr: SocketAddr, host: &str, rps: u64, secs: u64) -> (Vec<f64>, usize) {
    let pool: Vec<Arc<Mutex<Sender>>> = {
        let mut v = Vec::new();
        for _ in 0..16 {
            v.push(Arc::new(Mutex::new(connect(addr).await)));
        }
        v
    };
    let interval = Duration::from_nanos(1_000_000_000 / rps);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..rps * secs {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let sender = pool[i as usize % pool.len()].clone();
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = sender.lock().await;
            s.ready().await.ok()?;
            let req = Request::get("/")
                .header("host", host)
                .body(Empty::new())
                .unwrap();
            let rsp = s.send_request(req).await.ok()?;
            let ok = rsp.status() == 200;
            let body = rsp.into_body().collect().await.ok()?.to_bytes();
            (ok && body.len() == 1024).then(|| scheduled.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(ms) => lat.push(ms),
            None => failed += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, failed)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rps, secs) = (
        args.first().copied().unwrap_or(200),
        args.get(1).copied().unwrap_or(10),
    );
    let dir = std::env::temp_dir().join(format!("onemesh-pair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(86400)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(86400)).unwrap();
    std::fs::write(dir.join("anchors.pem"), anchor.bundle().to_pem()).unwrap();
    std::fs::write(dir.join("issuer.pem"), issuer.chain_pem()).unwrap();
    std::fs::write(dir.join("issuer.key"), issuer.key_pem()).unwrap();
    let app_port = app().await;
    let common = |name: &str, cfg: &str| {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, cfg).unwrap();
        vec![
            ("ONEMESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("ONEMESH_PROXY_INBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("ONEMESH_PROXY_ADMIN_ADDR", "127.0.0.1:0".to_string()),
            (
                "ONEMESH_PROXY_IDENTITY",
                format!("spiffe://cluster.local/ns/{name}/sa/{name}"),
            ),
            (
                "ONEMESH_PROXY_TRUST_ANCHORS",
                dir.join("anchors.pem").display().to_string(),
            ),
            (
                "ONEMESH_PROXY_IDENTITY_ISSUER_CERT",
                dir.join("issuer.pem").display().to_string(),
            ),
            (
                "ONEMESH_PROXY_IDENTITY_ISSUER_KEY",
                dir.join("issuer.key").display().to_string(),
            ),
            ("ONEMESH_PROXY_STATIC_CONFIG", path.display().to_string()),
        ]
    };
    let server_cfg = format!(
        r#"{{"inbound": {{"ports": [{app_port}], "authorizations": [{{"name": "all", "namespaces": ["pg"]}}]}}}}"#
    );
    let (mut server, _, inbound) = spawn_proxy(&common("bank", &server_cfg));
    let client_cfg = format!(
        r#"{{"services": [{{"name": "web", "namespace": "bank", "endpoints": [{{"addr": "{inbound}",
            "target_port": {app_port}, "identity": "spiffe://cluster.local/ns/bank/sa/bank",
            "workload": "bank", "namespace": "bank"}}]}}]}}"#
    );
    let (mut client, outbound, _) = spawn_proxy(&common("pg", &client_cfg));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = (rss_kib(&client), rss_kib(&server));

    // warm up both paths
    let _ = run(SocketAddr::from(([127, 0, 0, 1], app_port)), "app", 100, 1).await;
    let _ = run(outbound, "web.bank", 100, 1).await;

    let (direct, direct_failed) = run(
        SocketAddr::from(([127, 0, 0, 1], app_port)),
        "app",
        rps,
        secs,
    )
    .await;
    let sampler = tokio::spawn({
        let (c, s) = (client.id(), server.id());
        async move {
            let mut peak = (0, 0);
            for _ in 0..(secs * 4) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let read = |pid: u32| {
                    std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .unwrap_or_default()
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:").map(str::to_string))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                peak = (peak.0.max(read(c)), peak.1.max(read(s)));
            }
            peak
        }
    });
    let (meshed, meshed_failed) = run(outbound, "web.bank", rps, secs).await;
    let loaded = sampler.await.unwrap();

    println!("rate {rps} rps for {secs} s, 1 KiB responses, HTTP/1.1 keep-alive, 16 connections");
    println!(
        "direct:     p50 {:.3} ms  p99 {:.3} ms  ({} ok, {} failed)",
        pct(&direct, 0.5),
        pct(&direct, 0.99),
        direct.len(),
        direct_failed
    );
    println!(
        "proxy pair: p50 {:.3} ms  p99 {:.3} ms  ({} ok, {} failed)",
        pct(&meshed, 0.5),
        pct(&meshed, 0.99),
        meshed.len(),
        meshed_failed
    );
    println!(
        "added:      p50 {:.3} ms  p99 {:.3} ms",
        pct(&meshed, 0.5) - pct(&direct, 0.5),
        pct(&meshed, 0.99) - pct(&direct, 0.99)
    );
    println!(
        "rss idle: client {} KiB, server {} KiB; peak under load: client {} KiB, server {} KiB",
        idle.0, idle.1, loaded.0, loaded.1
    );
    for child in [&mut client, &mut server] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
