//! Runs the processes of `onemesh up` (control plane, proxies, apps): starts each one, streams its
//! output as one compact log, restarts it with exponential backoff when it dies, and stops it
//! (SIGTERM, then SIGKILL after a grace period) when the mesh goes down. Children get
//! `PR_SET_PDEATHSIG` so that none outlives a killed `onemesh up`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// First restart delay; doubled after each quick death up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before dying restarts after [`MIN_BACKOFF`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short label for the log, e.g. `bank/bank proxy`.
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A running supervised process: its current pid (0 while restarting) and its task.
pub struct Handle {
    pub pid: Arc<AtomicU32>,
    pub restarts: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    /// Waits until the process has been stopped (after the shutdown signal).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Starts `spec` under supervision until `shutdown` turns true.
pub fn start(spec: Spec, shutdown: watch::Receiver<bool>) -> Handle {
    let pid = Arc::new(AtomicU32::new(0));
    let restarts = Arc::new(AtomicU32::new(0));
    let task = tokio::spawn(run(spec, pid.clone(), restarts.clone(), shutdown));
    Handle {
        pid,
        restarts,
        task,
    }
}

async fn run(
    spec: Spec,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                log(
                    &spec.label,
                    &format!("cannot start {}: {e}", spec.program.display()),
                );
                if wait_or_shutdown(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stopping(&mut shutdown) => {
                stop(&spec.label, &mut child).await;
                pid.store(0, Ordering::Relaxed);
                return;
            }
        };
        pid.store(0, Ordering::Relaxed);
        if *shutdown.borrow() {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
        }
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        log(
            &spec.label,
            &format!("exited ({how}); restarting in {} ms", backoff.as_millis()),
        );
        restarts.fetch_add(1, Ordering::Relaxed);
        if wait_or_shutdown(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps `d`; true if shutdown came first.
async fn wait_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopping(shutdown) => true,
    }
}

/// Resolves once shutdown is asked for (holding no borrow of the channel across awaits).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn spawn(spec: &Spec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C reaches `onemesh up` only, which stops children in order.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn()?;
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let label = spec.label.clone();
        tokio::spawn(async move {
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the reading (the
            // child would then block on a full pipe).
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                log(&label, &compact(text.trim_end_matches(['\n', '\r'])));
                line.clear();
            }
        });
    }
    Ok(child)
}

async fn stop(label: &str, child: &mut Child) {
    if let Some(id) = child.id() {
        let _ = kill(Pid::from_raw(id as i32), Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        log(label, "did not stop after SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

/// Prints one log line: `hh:mm:ss label │ text`.
pub fn log(label: &str, text: &str) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // A closed stdout (`onemesh up | head`) must not bring the mesh down: ignore write errors.
    let _ = writeln!(
        std::io::stdout().lock(),
        "{h:02}:{m:02}:{s:02} {label:<22} │ {text}"
    );
}

/// Shortens a JSON log line (tracing's JSON format) to `LEVEL message key=value…`; other lines pass.
pub fn compact(line: &str) -> String {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let level = obj.get("level").and_then(|v| v.as_str()).unwrap_or("");
    let mut out = level.to_string();
    if let Some(serde_json::Value::Object(fields)) = obj.get("fields") {
        if let Some(msg) = fields.get("message").and_then(|v| v.as_str()) {
            out.push(' ');
            out.push_str(msg);
        }
        for (k, v) in fields.iter().filter(|(k, _)| *k != "message") {
            out.push_str(&format!(
                " {k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            ));
        }
    } else if let Some(msg) = obj.get("message").and_then(|v| v.as_str()) {
        out.push(' ');
        out.push_str(msg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_shortens_tracing_json() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"paid","order":7},"target":"t"}"#;
        assert_eq!(compact(line), "INFO paid order=7");
        assert_eq!(compact("plain text"), "plain text");
    }

    #[tokio::test]
    async fn a_dead_process_is_restarted_and_stopped_on_shutdown() {
        let (tx, rx) = watch::channel(false);
        let h = start(
            Spec {
                label: "t".into(),
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 3".into()],
                env: vec![],
            },
            rx,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.restarts.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "process was not restarted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.stopped())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_a_running_process() {
        let (tx, rx) = watch::channel(false);
        let h = start(
            Spec {
                label: "t".into(),
                program: "/bin/sleep".into(),
                args: vec!["60".into()],
                env: vec![],
            },
            rx,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.pid().is_none() {
            assert!(Instant::now() < deadline, "process did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = h.pid().unwrap();
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.stopped())
            .await
            .unwrap();
        // The process is gone (kill(pid, 0) fails once it has been reaped).
        assert!(kill(Pid::from_raw(pid as i32), None).is_err());
    }
}
