//! Runs the processes of `onemesh up` (control plane, proxies, apps): starts each one, streams its
//! output as one compact log, restarts it with a short exponential backoff when it dies, and stops
//! it (SIGTERM, then SIGKILL after a grace period) when the mesh goes down. Children get
//! `PR_SET_PDEATHSIG` so that none outlives a killed `onemesh up`.
//!
//! The backoff ([`Backoff`]) is kept low on purpose: a proxy or app killed again and again must
//! never stay down for long (at most [`MAX_BACKOFF`] between a death and the next start), and one
//! that ran for [`STABLE_RUN`] counts as healthy, so its next death restarts it at once
//! ([`MIN_BACKOFF`]). The cost is a process that cannot start at all is retried every
//! [`MAX_BACKOFF`], with one log line each time, which is what an operator wants to see anyway.

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
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest a dead process waits before it is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A process that ran this long before dying counts as healthy: it restarts after
/// [`MIN_BACKOFF`] again.
pub const STABLE_RUN: Duration = Duration::from_secs(3);
/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The restart policy of one supervised process, as a pure state machine (no clock of its own:
/// the caller says how long the process ran), so that it is tested without waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The delay before restarting a process that died (or could not start) after running for
    /// `ran_for`: [`MIN_BACKOFF`] after a stable run, otherwise twice the previous delay, never more
    /// than [`MAX_BACKOFF`].
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= STABLE_RUN {
            self.next = MIN_BACKOFF;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        delay
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short label for the log, e.g. `bank/bank proxy`.
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Start it inside this network namespace (a `/run/netns/<name>` path; `up --isolate`). The
    /// child joins it with `setns(2)` before `exec`, so its pid is the program's.
    pub netns: Option<PathBuf>,
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
    let mut backoff = Backoff::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.after_exit(Duration::ZERO);
                log(
                    &spec.label,
                    &format!(
                        "cannot start {}: {e}; retrying in {} ms",
                        spec.program.display(),
                        delay.as_millis()
                    ),
                );
                if wait_or_shutdown(&mut shutdown, delay).await {
                    return;
                }
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
        let delay = backoff.after_exit(started.elapsed());
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        log(
            &spec.label,
            &format!("exited ({how}); restarting in {} ms", delay.as_millis()),
        );
        restarts.fetch_add(1, Ordering::Relaxed);
        if wait_or_shutdown(&mut shutdown, delay).await {
            return;
        }
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
    // Opened here, joined in the child: the file stays open until `spawn` returns.
    let netns = spec.netns.as_ref().map(std::fs::File::open).transpose()?;
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: prctl and setns are async-signal-safe system calls and touch no memory of the
    // parent; the fd is open for as long as `spawn` runs.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if let Some(fd) = netns_fd {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(netns);
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

/// Shortens a JSON log line (tracing's JSON format) to `LEVEL message key=value…`; other lines
/// (an access log's JSON lines among them: they have no `level`) pass as they are.
pub fn compact(line: &str) -> String {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    if !obj.contains_key("level") {
        return line.to_string();
    }
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
mod tests;
