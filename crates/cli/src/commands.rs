//! The read-only commands (`status`, `check`, `authz`, `identity <workload>`)
//! and `down`. (The trust commands, `identity trust|rotate-*|revoke`, are in [`crate::trust`];
//! the traffic-management views, `routes` and `endpoints`, in [`crate::traffic`].)
//! Each reads the layout that `onemesh up` wrote, asks the running parts, and prints a table or
//! JSON. They return `Ok(false)` when they ran but found a problem (exit code 1).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper::StatusCode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::Output;
use crate::layout::Layout;
use crate::table::render;
use crate::trust::{CheckLine, Mark};

pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a process runs (a zombie, exited but not yet reaped by its parent, does not).
pub fn running(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `pid (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

pub async fn down(dir: &Path) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let pid = Pid::from_raw(layout.pid as i32);
    if !running(layout.pid) {
        println!("onemesh up (pid {}) is not running", layout.pid);
        // A killed `up --isolate` left its network namespaces: remove them (root only).
        if let Some(net) = &layout.isolation {
            let left = crate::isolate::remove_by_tag(&net.tag);
            if !left.is_empty() {
                anyhow::bail!(
                    "cannot remove the network namespaces it left ({left:?}): run `onemesh down` as root"
                );
            }
        }
        return Ok(true);
    }
    kill(pid, Signal::SIGTERM).context("cannot signal onemesh up")?;
    let deadline =
        std::time::Instant::now() + crate::supervise::STOP_GRACE + Duration::from_secs(5);
    while running(layout.pid) {
        if std::time::Instant::now() > deadline {
            println!("onemesh up (pid {}) is still stopping", layout.pid);
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stopped");
    Ok(true)
}

/// Is the proxy's admin `/ready` answering 200?
async fn ready(admin: &str) -> bool {
    matches!(crate::http::get(admin, "/ready", ASK_TIMEOUT).await, Ok((s, _)) if s == StatusCode::OK)
}

pub async fn status(dir: &Path, out: Output) -> anyhow::Result<bool> {
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        w: &'a crate::layout::Workload,
        ready: bool,
    }
    let layout = Layout::load(dir)?;
    let mut rows = Vec::new();
    for w in &layout.workloads {
        rows.push(Row {
            w,
            ready: ready(&w.admin).await,
        });
    }
    match out {
        Output::Json => {
            let v = serde_json::json!({
                "pid": layout.pid, "config": layout.config, "trust_domain": layout.trust_domain,
                "control": layout.control, "dashboard": layout.dashboard, "entries": layout.entries,
                "workloads": rows, "isolation": layout.isolation,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table | Output::Wide => {
            let wide = out == Output::Wide;
            let mut header = vec![
                "NAMESPACE",
                "WORKLOAD",
                "READY",
                "APP",
                "INBOUND",
                "OUTBOUND",
                "ADMIN",
            ];
            if wide {
                header.extend(["IDENTITY", "APP PID", "PROXY PID", "RESTARTS"]);
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let ports: Vec<String> =
                        r.w.app_ports
                            .iter()
                            .map(|(d, l)| format!("{d}→{l}"))
                            .collect();
                    let mut row = vec![
                        r.w.namespace.clone(),
                        r.w.name.clone(),
                        if r.ready { "yes" } else { "no" }.into(),
                        ports.join(","),
                        r.w.inbound.clone(),
                        r.w.outbound.clone(),
                        r.w.admin.clone(),
                    ];
                    if wide {
                        let pid = |p: Option<u32>| p.map_or("-".into(), |p| p.to_string());
                        row.extend([
                            r.w.identity.clone(),
                            pid(r.w.app_pid),
                            pid(r.w.proxy_pid),
                            r.w.restarts.to_string(),
                        ]);
                    }
                    row
                })
                .collect();
            print!("{}", render(&header, &table));
            for (svc, url) in &layout.entries {
                println!("entry {svc}: {url}");
            }
            println!("dashboard: http://{}/", layout.dashboard);
        }
    }
    Ok(rows.iter().all(|r| r.ready))
}

/// The certificate a proxy holds, as its admin `/identity` reports it.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertInfo {
    pub id: String,
    pub issuer: String,
    pub serial: String,
    pub not_before_unix_secs: i64,
    pub not_after_unix_secs: i64,
}

async fn cert_of(admin: &str) -> anyhow::Result<CertInfo> {
    let (status, body) = crate::http::get(admin, "/identity", ASK_TIMEOUT).await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "proxy has no certificate yet ({status}): {}",
        body.trim()
    );
    serde_json::from_str(&body).context("proxy sent bad JSON for /identity")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub async fn identity(dir: &Path, which: &str, out: Output) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let w = layout.workload(which)?;
    let cert = cert_of(&w.admin).await?;
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&cert)?);
        return Ok(true);
    }
    let left = cert.not_after_unix_secs - now_unix();
    println!("workload:   {}", w.key());
    println!("identity:   {}", cert.id);
    println!("issuer:     {}", cert.issuer);
    println!("serial:     {}", cert.serial);
    println!("not before: {} (unix)", cert.not_before_unix_secs);
    println!(
        "not after:  {} (unix), in {}h{:02}m",
        cert.not_after_unix_secs,
        left / 3600,
        (left % 3600) / 60
    );
    Ok(left > 0)
}

/// One line of `onemesh check`.
pub(crate) struct Check {
    pub ok: bool,
    pub what: String,
    pub hint: String,
}

pub async fn check(dir: &Path) -> anyhow::Result<bool> {
    let mut checks = Vec::new();
    let layout = match Layout::load(dir) {
        Ok(l) => l,
        Err(e) => {
            println!("✗ layout: {e:#}");
            return Ok(false);
        }
    };
    let up_alive = running(layout.pid);
    checks.push(Check {
        ok: up_alive,
        what: format!("onemesh up is running (pid {})", layout.pid),
        hint: "start it with `onemesh up`".into(),
    });
    for (name, addr) in [
        ("identity", &layout.control.identity),
        ("destination", &layout.control.destination),
        ("policy", &layout.control.policy),
    ] {
        let ok = tokio::time::timeout(ASK_TIMEOUT, tokio::net::TcpStream::connect(addr.as_str()))
            .await
            .is_ok_and(|r| r.is_ok());
        checks.push(Check {
            ok,
            what: format!("control plane {name} service answers on {addr}"),
            hint: "see the control plane's log lines in the output of `onemesh up`".into(),
        });
    }
    let now = now_unix();
    for w in &layout.workloads {
        checks.push(Check {
            ok: ready(&w.admin).await,
            what: format!("proxy of {} is ready", w.key()),
            hint: format!("ask it why: curl http://{}/ready", w.admin),
        });
        for (declared, local) in &w.app_ports {
            let ok = tokio::time::timeout(ASK_TIMEOUT, w.connect_app(*local))
                .await
                .is_ok_and(|r| r.is_ok());
            checks.push(Check {
                ok,
                what: format!(
                    "app of {} listens on its port {declared} (127.0.0.1:{local})",
                    w.key()
                ),
                hint: "the app is not up (yet): see its log lines in the output of `onemesh up`"
                    .into(),
            });
        }
        match cert_of(&w.admin).await {
            Ok(c) => {
                let valid = c.not_before_unix_secs <= now && now < c.not_after_unix_secs;
                checks.push(Check {
                    ok: valid && c.id == w.identity,
                    what: format!("certificate of {} is {} and valid", w.key(), w.identity),
                    hint: format!(
                        "it holds {} valid {}..{} (unix)",
                        c.id, c.not_before_unix_secs, c.not_after_unix_secs
                    ),
                });
                let life = (c.not_after_unix_secs - c.not_before_unix_secs).max(1);
                checks.push(Check {
                    ok: (c.not_after_unix_secs - now) * 10 > life,
                    what: format!("certificate of {} is not about to expire", w.key()),
                    hint: "renewal is failing: check that the identity service answers".into(),
                });
                // A clock that is off by more than the 60 s back-dating of every leaf makes fresh
                // certificates look not-yet-valid to peers.
                checks.push(Check {
                    ok: now + 60 >= c.not_before_unix_secs,
                    what: format!("clock agrees with the issuer's for {}", w.key()),
                    hint: "this machine's clock is behind the certificate's issue time: fix the clock (NTP)".into(),
                });
            }
            Err(e) => checks.push(Check {
                ok: false,
                what: format!("certificate of {}", w.key()),
                hint: format!("{e:#}"),
            }),
        }
    }
    checks.extend(crate::up::policy_checks(&layout));
    let mut lines: Vec<CheckLine> = checks
        .into_iter()
        .map(|c| CheckLine {
            mark: if c.ok { Mark::Pass } else { Mark::Fail },
            what: c.what,
            hint: c.hint,
        })
        .collect();
    // The CA's own expiry, from its files: warnings do not fail the check.
    lines.extend(crate::trust::expiry_checks(dir, SystemTime::now()));
    Ok(print_checks(&lines))
}

/// `onemesh check --kubernetes`: the mesh on a cluster (see [`crate::cluster`]).
pub async fn check_kubernetes(kubeconfig: Option<&Path>) -> anyhow::Result<bool> {
    let client = crate::cluster::client(kubeconfig).await?;
    Ok(print_checks(&crate::cluster::checks(&client).await))
}

/// Prints check lines (`√`, `!` with a hint, `×` with what to do) and whether none failed.
fn print_checks(lines: &[CheckLine]) -> bool {
    let mut all = true;
    for c in lines {
        match c.mark {
            Mark::Pass => println!("√ {}", c.what),
            Mark::Warn => println!("! {} — {}", c.what, c.hint),
            Mark::Fail => {
                all = false;
                println!("× {} — {}", c.what, c.hint);
            }
        }
    }
    println!(
        "{}",
        if all {
            "all checks passed"
        } else {
            "some checks failed"
        }
    );
    all
}

/// `onemesh authz <workload>`: the policies that apply to a workload, from mesh.yaml, with their
/// decisions over the last minute when the control plane's API answers.
pub async fn authz(dir: &Path, which: &str, out: Output) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let w = layout.workload(which)?;
    let mesh = crate::mesh::Mesh::load(&layout.config)?;
    let mut rules = mesh.authz(&w.namespace, &w.name);
    let window: Option<Vec<onemesh_window::api::AuthzStats>> =
        match crate::observe::Api::locate(dir) {
            Ok(api) => api.get("/api/v1/authz?window=60s").await.ok(),
            Err(_) => None,
        };
    if let Some(stats) = &window {
        for rule in &mut rules {
            let mut d = crate::mesh::Decisions::default();
            // A denial by several policies in force is counted under their joined names.
            for s in stats.iter().filter(|s| {
                s.namespace == w.namespace
                    && s.workload == w.name
                    && s.policy.split(',').any(|p| p == rule.name)
            }) {
                d.allowed += s.allowed;
                d.denied += s.denied;
                d.would_deny += s.would_deny;
            }
            rule.decisions = Some(d);
        }
    }
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(true);
    }
    if rules.iter().all(|r| r.is_default) {
        println!(
            "{}: no AuthorizationPolicy targets it; the default applies:",
            w.key()
        );
    }
    let count = |r: &crate::mesh::AuthzRule, f: fn(&crate::mesh::Decisions) -> u64| {
        r.decisions.map_or("-".to_string(), |d| f(&d).to_string())
    };
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.mode.to_string(),
                r.ports.clone(),
                r.routes.clone(),
                r.from.clone(),
                count(r, |d| d.allowed),
                count(r, |d| d.denied),
                count(r, |d| d.would_deny),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render(
            &[
                "POLICY",
                "MODE",
                "PORTS",
                "ROUTES",
                "ALLOWED CALLERS",
                "ALLOWED/1M",
                "DENIED/1M",
                "WOULD DENY/1M",
            ],
            &rows
        )
    );
    if window.is_none() {
        println!("(decisions: the control plane's API did not answer)");
    }
    Ok(true)
}
