//! The commands that read the control plane's metrics window and tap (`stat`, `edges`, `top`,
//! `tap`, `dashboard`; `routes` in [`crate::traffic`]), the same in both modes.
//!
//! Where the API is: `$ONEMESH_API` (e.g. `http://127.0.0.1:8084`, what `onemesh dashboard
//! --kubernetes` forwards to) with `$ONEMESH_TOKEN`; else the local mesh of `onemesh up`: the
//! layout's dashboard address and `<state-dir>/dashboard-token`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use onemesh_window::api::{EdgeStats, Overview, TlsState, WorkloadStats};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::Output;
use crate::layout::Layout;
use crate::table::{ms, pct, render};

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane's API: its `host:port` and the operator's token.
pub struct Api {
    pub addr: String,
    token: String,
}

impl Api {
    /// `$ONEMESH_API` + `$ONEMESH_TOKEN`, else the local mesh's.
    pub fn locate(state_dir: &Path) -> anyhow::Result<Api> {
        if let Ok(url) = std::env::var("ONEMESH_API") {
            let addr = url
                .strip_prefix("http://")
                .unwrap_or(&url)
                .trim_end_matches('/')
                .to_string();
            let token = std::env::var("ONEMESH_TOKEN").context(
                "ONEMESH_API is set but ONEMESH_TOKEN is not: `onemesh dashboard --kubernetes` prints both",
            )?;
            return Ok(Api { addr, token });
        }
        let layout = Layout::load(state_dir)?;
        let path = state_dir.join(onemesh_control::observe::TOKEN_FILE);
        let token = onemesh_control::observe::Token::load(&path)
            .context("the dashboard token of `onemesh up` is unreadable")?;
        Ok(Api {
            addr: layout.dashboard,
            token: token.reveal().to_string(),
        })
    }

    /// GETs `path` and decodes its JSON.
    pub async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> anyhow::Result<T> {
        self.call(hyper::Method::GET, path, Bytes::new()).await
    }

    /// POSTs `body` to `path` and decodes the JSON answer.
    pub async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<T> {
        self.call(hyper::Method::POST, path, body).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<T> {
        let resp = tokio::time::timeout(ASK_TIMEOUT, self.send(method, path, body))
            .await
            .with_context(|| {
                format!(
                    "the control plane's API at {} did not answer within {ASK_TIMEOUT:?}",
                    self.addr
                )
            })??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            anyhow::bail!(
                "the control plane's API answered {status} for {path}: {}",
                error_of(&body)
            );
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("the control plane's API sent bad JSON for {path}"))
    }

    /// GETs `path` and hands each line of the streamed answer to `line` until it returns false
    /// or the stream ends.
    pub async fn stream(
        &self,
        path: &str,
        mut line: impl FnMut(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        let resp = tokio::time::timeout(
            ASK_TIMEOUT,
            self.send(hyper::Method::GET, path, Bytes::new()),
        )
        .await
        .context("the control plane's API did not answer")??;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let text = body.collect().await?.to_bytes();
            anyhow::bail!("the control plane refused: {status}: {}", error_of(&text));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let rest = pending.split_off(end + 1);
                let done = !line(&pending[..end]);
                pending = rest;
                if done {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = TcpStream::connect(&self.addr).await.with_context(|| {
            format!(
                "cannot reach the control plane's API at {}: is `onemesh up` running (or `onemesh dashboard --kubernetes`)?",
                self.addr
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(body))?;
        Ok(sender.send_request(req).await?)
    }
}

/// The `error` of a JSON error answer, else the text.
fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// `onemesh stat [namespace | namespace/workload]`.
pub async fn stat(
    dir: &Path,
    target: Option<String>,
    window: &str,
    out: Output,
) -> anyhow::Result<bool> {
    let api = Api::locate(dir)?;
    let overview: Overview = api
        .get(&format!("/api/v1/overview?window={window}"))
        .await?;
    let mut rows: Vec<WorkloadStats> = overview.workloads;
    if let Some(t) = &target {
        rows.retain(|r| &r.namespace == t || &format!("{}/{}", r.namespace, r.workload) == t);
        anyhow::ensure!(!rows.is_empty(), "no workload matches {t:?}");
    }
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    let wide = out == Output::Wide;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.namespace.clone(),
                r.workload.clone(),
                format!("{}/{}", r.meshed, r.instances),
                pct(r.success_rate),
                format!("{:.1}", r.rps),
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
            ];
            if wide {
                row.extend([
                    r.denied.to_string(),
                    r.tcp_open_connections.to_string(),
                    bytes_per_s(r.tcp_read_bytes_per_s),
                    bytes_per_s(r.tcp_write_bytes_per_s),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAMESPACE",
        "WORKLOAD",
        "MESHED",
        "SUCCESS",
        "RPS",
        "P50",
        "P95",
        "P99",
    ];
    if wide {
        header.extend(["DENIED", "TCP_CONNS", "READ", "WRITE"]);
    }
    print!("{}", render(&header, &table));
    println!("(last {:.0}s)", overview.window_s);
    Ok(true)
}

/// `onemesh edges [namespace]`.
pub async fn edges(
    dir: &Path,
    ns: Option<String>,
    window: &str,
    out: Output,
) -> anyhow::Result<bool> {
    let api = Api::locate(dir)?;
    let overview: Overview = api
        .get(&format!("/api/v1/overview?window={window}"))
        .await?;
    let rows: Vec<EdgeStats> = overview
        .edges
        .into_iter()
        .filter(|e| {
            ns.as_deref()
                .is_none_or(|n| e.src_namespace.as_deref() == Some(n) || e.dst_namespace == n)
        })
        .collect();
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    let wide = out == Output::Wide;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            let mut row = vec![
                match (&e.src_namespace, &e.src_workload, &e.src_id) {
                    (Some(ns), Some(w), _) => format!("{ns}/{w}"),
                    (_, _, Some(id)) => id.clone(),
                    _ => "-".to_string(),
                },
                format!("{}/{}", e.dst_namespace, e.dst_workload),
                match e.tls {
                    TlsState::Mtls => "√ mTLS",
                    TlsState::Plaintext => "plaintext",
                    TlsState::Mixed => "mixed",
                }
                .to_string(),
                format!("{:.1}", e.rps),
                pct(e.success_rate),
                ms(e.p99_ms),
                if e.denied > 0 {
                    format!("{} DENIED", e.denied)
                } else {
                    "-".into()
                },
            ];
            if wide {
                row.extend([
                    e.src_id.clone().unwrap_or_else(|| "-".into()),
                    e.dst_id.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec!["SRC", "DST", "SECURED", "RPS", "SUCCESS", "P99", "DENIED"];
    if wide {
        header.extend(["SRC_ID", "DST_ID"]);
    }
    print!("{}", render(&header, &table));
    Ok(true)
}

fn bytes_per_s(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}MB/s", v / 1e6),
        v if v >= 1e3 => format!("{:.1}kB/s", v / 1e3),
        v => format!("{v:.0}B/s"),
    }
}

/// What to tap: the workload and the filters, as the API takes them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TapArgs {
    /// The workload: `namespace/name`.
    pub workload: String,
    /// Only requests to this destination (`namespace/workload` or a service name; outbound).
    #[arg(long)]
    pub to: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only `inbound` (served) or `outbound` (sent) requests.
    #[arg(long)]
    pub direction: Option<String>,
    /// The most events per second each proxy sends (1-1000; default the proxy's, 100).
    #[arg(long)]
    pub max_rps: Option<u32>,
    /// Stop after this many requests.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    onemesh_control::config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration: write e.g. 10s or 2m"))
}

impl TapArgs {
    fn path(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("workload", &self.workload);
        for (k, v) in [
            ("to", &self.to),
            ("path", &self.path),
            ("method", &self.method),
            ("direction", &self.direction),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(n) = self.max_rps {
            q.append_pair("max_rps", &n.to_string());
        }
        format!("/api/v1/tap?{}", q.finish())
    }
}

/// One tap event as the proxies send it (fields the CLI shows; the rest is kept for `-o json`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TapEvent {
    #[serde(default)]
    pub time_unix: f64,
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub source: Option<Peer>,
    #[serde(default)]
    pub destination: Option<Peer>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub authority: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Peer {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
}

impl Peer {
    fn shown(p: &Option<Peer>) -> String {
        match p {
            Some(Peer {
                namespace: Some(ns),
                workload: Some(w),
                ..
            }) => format!("{ns}/{w}"),
            Some(Peer { id: Some(id), .. }) => id.clone(),
            _ => "-".to_string(),
        }
    }
}

/// `onemesh tap <workload>`: live requests, one line each (`-o json`: the events as sent).
pub async fn tap(dir: &Path, args: &TapArgs, out: Output) -> anyhow::Result<bool> {
    let api = Api::locate(dir)?;
    let started = Instant::now();
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    let path = args.path();
    let stream = api.stream(&path, |line| {
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => return true,
        };
        if let Some(n) = value.get("dropped") {
            let _ = writeln!(stdout, "(dropped {n} events: the tap's rate limit)");
        } else if value.get("method").is_none() {
            // Not an event: the relay's `{"error": …}` about one proxy.
            let error = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or_default();
            let _ = writeln!(stdout, "(error: {error})");
        } else {
            seen += 1;
            if out == Output::Json {
                let _ = writeln!(stdout, "{value}");
            } else if let Ok(e) = serde_json::from_value::<TapEvent>(value) {
                let _ = writeln!(stdout, "{}", tap_line(&e));
            }
        }
        let _ = stdout.flush();
        args.count.is_none_or(|c| seen < c)
    });
    match args.duration {
        Some(d) => {
            let _ = tokio::time::timeout(d.saturating_sub(started.elapsed()), stream).await;
        }
        None => stream.await?,
    }
    Ok(true)
}

fn tap_line(e: &TapEvent) -> String {
    format!(
        "{:.3} {:<8} {} -> {} {} {}{} {} {} {}",
        e.time_unix,
        e.direction,
        Peer::shown(&e.source),
        Peer::shown(&e.destination),
        e.method,
        e.authority,
        e.path,
        e.status.map_or("-".into(), |s| s.to_string()),
        ms(e.latency_ms),
        if e.tls { "mTLS" } else { "plain" },
    )
}

/// One row of `onemesh top`: a path's requests over the time watched.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TopRow {
    pub source: String,
    pub destination: String,
    pub method: String,
    pub path: String,
    pub count: u64,
    pub successes: u64,
    pub best_ms: Option<f64>,
    pub worst_ms: Option<f64>,
    pub last_ms: Option<f64>,
}

/// Distinct rows `onemesh top` keeps; a path beyond them counts in one [`OTHER_PATHS`] row per
/// source, destination and method (paths that carry ids would otherwise grow without end).
const MAX_TOP_ROWS: usize = 10_000;
/// The path of the row that gathers paths beyond [`MAX_TOP_ROWS`].
pub const OTHER_PATHS: &str = "(other paths)";

/// The busiest paths of a tap, aggregated as its events arrive (a path is counted without its
/// query): memory bounded by [`MAX_TOP_ROWS`], however long `onemesh top` watches.
#[derive(Debug, Default)]
pub struct Top {
    rows: HashMap<(String, String, String, String), TopRow>,
}

impl Top {
    /// Counts one tap event.
    pub fn add(&mut self, e: &TapEvent) {
        let source = Peer::shown(&e.source);
        let destination = Peer::shown(&e.destination);
        let path = e.path.split('?').next().unwrap_or("");
        let mut key = (source, destination, e.method.clone(), path.to_string());
        if self.rows.len() >= MAX_TOP_ROWS && !self.rows.contains_key(&key) {
            key.3 = OTHER_PATHS.to_string();
        }
        let row = self.rows.entry(key).or_insert_with_key(|k| TopRow {
            source: k.0.clone(),
            destination: k.1.clone(),
            method: k.2.clone(),
            path: k.3.clone(),
            ..TopRow::default()
        });
        row.count += 1;
        if e.status.is_some_and(|s| s < 500) {
            row.successes += 1;
        }
        if let Some(l) = e.latency_ms {
            row.best_ms = Some(row.best_ms.map_or(l, |b| b.min(l)));
            row.worst_ms = Some(row.worst_ms.map_or(l, |w| w.max(l)));
            row.last_ms = Some(l);
        }
    }

    /// The rows, busiest first (then by path, source, destination and method).
    pub fn rows(&self) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = self.rows.values().cloned().collect();
        rows.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.path, &a.source, &a.destination, &a.method).cmp(&(
                    &b.path,
                    &b.source,
                    &b.destination,
                    &b.method,
                ))
            })
        });
        rows
    }
}

/// `onemesh top <workload>`: the busiest paths, live from tap, redrawn every second (`-o json`:
/// one JSON array at the end, after `--duration`).
pub async fn top(dir: &Path, args: &TapArgs, out: Output) -> anyhow::Result<bool> {
    let api = Api::locate(dir)?;
    let started = Instant::now();
    let mut top = Top::default();
    let mut seen = 0u64;
    let mut drawn = Instant::now();
    let path = args.path();
    let stream = api.stream(&path, |line| {
        if let Ok(e) = serde_json::from_slice::<TapEvent>(line)
            && !e.method.is_empty()
        {
            top.add(&e);
            seen += 1;
        }
        if out != Output::Json && drawn.elapsed() >= Duration::from_secs(1) {
            drawn = Instant::now();
            print!("\x1b[2J\x1b[H{}", top_table(&top.rows()));
            let _ = std::io::stdout().flush();
        }
        args.count.is_none_or(|c| seen < c)
    });
    match args.duration {
        Some(d) => {
            let _ = tokio::time::timeout(d.saturating_sub(started.elapsed()), stream).await;
        }
        None => stream.await?,
    }
    let rows = top.rows();
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", top_table(&rows));
    }
    Ok(true)
}

fn top_table(rows: &[TopRow]) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.source.clone(),
                r.destination.clone(),
                r.method.clone(),
                r.path.clone(),
                r.count.to_string(),
                pct(Some(r.successes as f64 / r.count.max(1) as f64)),
                ms(r.best_ms),
                ms(r.worst_ms),
                ms(r.last_ms),
            ]
        })
        .collect();
    render(
        &[
            "SOURCE",
            "DESTINATION",
            "METHOD",
            "PATH",
            "COUNT",
            "SUCCESS",
            "BEST",
            "WORST",
            "LAST",
        ],
        &table,
    )
}

/// `onemesh dashboard`: the login link of the local mesh's dashboard; with `--kubernetes`, a
/// `kubectl port-forward` to the control plane's dashboard port, the token read from the Secret
/// `onemesh-dashboard-token` with the user's own Kubernetes credentials (RBAC decides who may),
/// and the `ONEMESH_API`/`ONEMESH_TOKEN` lines for the other commands; it runs until Ctrl-C.
pub async fn dashboard(
    dir: &Path,
    kubernetes: bool,
    namespace: &str,
    port: u16,
) -> anyhow::Result<bool> {
    if !kubernetes {
        let api = Api::locate(dir)?;
        println!("http://{}/login?token={}", api.addr, api.token);
        return Ok(true);
    }
    let kubectl = std::env::var("ONEMESH_KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let mut words = kubectl.split_whitespace();
    let program = words.next().unwrap_or("kubectl");
    let base: Vec<&str> = words.collect();
    let secret = tokio::process::Command::new(program)
        .args(&base)
        .args([
            "-n",
            namespace,
            "get",
            "secret",
            "onemesh-dashboard-token",
            "-o",
            "jsonpath={.data.token}",
        ])
        .output()
        .await
        .with_context(|| format!("cannot run {kubectl}"))?;
    anyhow::ensure!(
        secret.status.success(),
        "cannot read the Secret {namespace}/onemesh-dashboard-token ({}): the dashboard is for operators allowed to read it (RBAC)",
        String::from_utf8_lossy(&secret.stderr).trim()
    );
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&secret.stdout).trim())
        .context("the Secret's token is not base64")?;
    let token = String::from_utf8(token).context("the Secret's token is not text")?;
    let mut forward = tokio::process::Command::new(program)
        .args(&base)
        .args([
            "-n",
            namespace,
            "port-forward",
            "service/onemesh-control",
            &format!("{port}:8084"),
        ])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {kubectl} port-forward"))?;
    println!(
        "dashboard: http://127.0.0.1:{port}/login?token={}",
        token.trim()
    );
    println!(
        "for the other commands: export ONEMESH_API=http://127.0.0.1:{port} ONEMESH_TOKEN={}",
        token.trim()
    );
    tokio::select! {
        status = forward.wait() => {
            anyhow::bail!("kubectl port-forward ended: {}", status?);
        }
        _ = tokio::signal::ctrl_c() => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str, status: Option<u16>, latency_ms: Option<f64>) -> TapEvent {
        let peer = |ns: &str| Peer {
            id: Some(format!("spiffe://cluster.local/ns/{ns}/sa/{ns}")),
            namespace: Some(ns.to_string()),
            workload: Some(ns.to_string()),
        };
        TapEvent {
            time_unix: 0.0,
            direction: "inbound".into(),
            source: Some(peer("order")),
            destination: Some(peer("pg")),
            tls: true,
            method: "POST".into(),
            authority: "pg.pg".into(),
            path: path.into(),
            status,
            latency_ms,
        }
    }

    #[test]
    fn top_counts_paths_without_their_query_busiest_first() {
        let mut top = Top::default();
        top.add(&event("/payments?card=4111", Some(201), Some(12.0)));
        top.add(&event("/payments", Some(503), Some(3.0)));
        top.add(&event("/payments", Some(201), Some(7.0)));
        top.add(&event("/healthz", None, None));
        let rows = top.rows();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let p = &rows[0];
        assert_eq!(
            (p.source.as_str(), p.destination.as_str(), p.path.as_str()),
            ("order/order", "pg/pg", "/payments")
        );
        assert_eq!((p.count, p.successes), (3, 2));
        assert_eq!(
            (p.best_ms, p.worst_ms, p.last_ms),
            (Some(3.0), Some(12.0), Some(7.0))
        );
        // No answer (a reset) is not a success, and without a latency nothing is made up.
        let h = &rows[1];
        assert_eq!((h.path.as_str(), h.count, h.successes), ("/healthz", 1, 0));
        assert_eq!(h.worst_ms, None);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 4);
    }

    #[test]
    fn top_keeps_a_bounded_number_of_rows_however_many_paths_it_sees() {
        let mut top = Top::default();
        let n = MAX_TOP_ROWS + 5_000;
        for i in 0..n {
            top.add(&event(&format!("/payments/{i}"), Some(200), Some(1.0)));
        }
        // A path seen before the cap keeps its own row after it.
        top.add(&event("/payments/0", Some(200), Some(1.0)));
        let rows = top.rows();
        assert_eq!(rows.len(), MAX_TOP_ROWS + 1);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), n as u64 + 1);
        let other = rows.iter().find(|r| r.path == OTHER_PATHS).unwrap();
        assert_eq!(other.count, 5_000);
        assert_eq!(rows[0].path, OTHER_PATHS);
        let first = rows.iter().find(|r| r.path == "/payments/0").unwrap();
        assert_eq!(first.count, 2);
    }
}
