//! `onemesh up`: the whole mesh on this machine. Reads mesh.yaml, prepares the state directory
//! (trust anchor and issuer on first run, one-time bootstrap tokens, the endpoints file the
//! control plane serves), picks free local ports, starts the control plane, then every workload's
//! proxy and app under supervision, waits until all are ready, prints the addresses a user needs,
//! serves the dashboard, and streams a compact log until Ctrl-C, SIGTERM or `onemesh down`.
//!
//! In local mode an app listens on a free loopback port (given as `PORT` and `LISTEN`) behind its
//! proxy's inbound port, and reaches other services through `HTTP_PROXY` = its proxy's outbound port.
//! A Service with `expose` is also reachable from this machine at that address (the platform's edge;
//! traffic from outside the mesh is plain, as from a load balancer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Output;
use crate::commands::Check;
use crate::layout::{self, Layout};
use crate::mesh::Mesh;
use crate::supervise::{self, Spec, log};

/// How long `up` waits for everything to become ready before it says what is not.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// The mesh to run.
    #[arg(long, short = 'f', default_value = "mesh.yaml")]
    config: PathBuf,
    /// Control plane listeners (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    identity_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8086")]
    destination_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8090")]
    policy_addr: SocketAddr,
    /// The dashboard and its JSON API.
    #[arg(long, default_value = "127.0.0.1:8084")]
    dashboard_addr: SocketAddr,
    /// Give every exposed service a free port instead of the one mesh.yaml asks for (tests).
    #[arg(long)]
    expose_any_port: bool,
    /// Directory of the onemesh binaries (default: the one this `onemesh` runs from).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Free ports for the processes `up` starts. Each picked port stays bound (by a listener held
/// here) until [`Ports::release`], just before the processes start: otherwise the kernel may hand
/// the same port out again to a later pick, and two processes would race for it.
#[derive(Default)]
struct Ports {
    held: Vec<std::net::TcpListener>,
}

impl Ports {
    /// `addr`, with a free loopback port when its port is 0.
    fn concrete(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
        let picked = l.local_addr()?;
        self.held.push(l);
        Ok(picked)
    }

    fn free_port(&mut self) -> anyhow::Result<u16> {
        Ok(self.concrete("127.0.0.1:0".parse()?)?.port())
    }

    /// Unbinds every picked port, for its process to bind.
    fn release(self) {}
}

/// A binary of ours: next to this executable first, then PATH.
fn program(bin_dir: &Path, name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let local = bin_dir.join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

pub async fn run(args: Args, state_dir: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mesh = Mesh::load(&args.config)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    let config = args.config.canonicalize()?;
    if let Ok(old) = Layout::load(&state_dir)
        && crate::commands::running(old.pid)
        && old.pid != std::process::id()
    {
        anyhow::bail!(
            "onemesh up is already running (pid {}) with state in {}: stop it with `onemesh down`",
            old.pid,
            state_dir.display()
        );
    }
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };

    // Ports: the control plane's, then per workload an inbound, outbound, admin and app ports.
    let mut ports = Ports::default();
    let identity_addr = ports.concrete(args.identity_addr)?;
    let destination_addr = ports.concrete(args.destination_addr)?;
    let policy_addr = ports.concrete(args.policy_addr)?;
    let td = mesh.trust_domain().to_string();
    let control_id = format!("spiffe://{td}/ns/onemesh/sa/control");
    let mut workloads = Vec::new();
    let mut tokens = BTreeMap::new();
    for w in mesh.workloads() {
        let mut app_ports = BTreeMap::new();
        for p in &w.ports {
            app_ports.insert(*p, ports.free_port()?);
        }
        // 128 bits from the OS's cryptographic RNG: a token is a secret that entitles an id.
        let random: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("the system's random number generator failed: check that getrandom(2) or /dev/urandom works"))?
            .expose();
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        tokens.insert(token.clone(), w.identity.clone());
        workloads.push((
            w,
            token,
            layout::Workload {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                identity: w.identity.clone(),
                app_ports,
                inbound: format!("127.0.0.1:{}", ports.free_port()?),
                outbound: format!("127.0.0.1:{}", ports.free_port()?),
                admin: format!("127.0.0.1:{}", ports.free_port()?),
                app_pid: None,
                proxy_pid: None,
                restarts: 0,
            },
        ));
    }
    write_json(&state_dir.join("tokens.json"), &tokens)?;
    let endpoints: Vec<serde_json::Value> = workloads
        .iter()
        .map(|(_, _, l)| {
            let ports: BTreeMap<String, u16> =
                l.app_ports.iter().map(|(d, p)| (d.to_string(), *p)).collect();
            serde_json::json!({ "namespace": l.namespace, "workload": l.name, "inbound": l.inbound, "ports": ports })
        })
        .collect();
    write_json(&state_dir.join("endpoints.json"), &endpoints)?;

    // Public entries: exposed services forward to one of their workloads' app ports.
    let mut entries = BTreeMap::new();
    let mut entry_listeners = Vec::new();
    for e in mesh.exposed() {
        let addr = if args.expose_any_port {
            SocketAddr::new(e.addr.ip(), 0)
        } else {
            e.addr
        };
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot expose {}/{} on {addr}: is the port in use?",
                e.namespace, e.service
            )
        })?;
        let backend = workloads
            .iter()
            .find(|(w, _, _)| w.namespace == e.namespace && e.workloads.contains(&w.name))
            .and_then(|(_, _, l)| l.app_ports.get(&e.target_port).copied())
            .with_context(|| {
                format!(
                    "service {}/{} selects no workload with port {}",
                    e.namespace, e.service, e.target_port
                )
            })?;
        entries.insert(
            format!("{}/{}", e.namespace, e.service),
            format!("http://{}/", listener.local_addr()?),
        );
        entry_listeners.push((listener, backend));
    }

    let dashboard_listener = crate::dashboard::bind(args.dashboard_addr)
        .await
        .with_context(|| format!("cannot bind the dashboard on {}", args.dashboard_addr))?;
    let layout = Layout {
        pid: std::process::id(),
        config: config.clone(),
        trust_domain: td.clone(),
        control: layout::Control {
            identity: identity_addr.to_string(),
            destination: destination_addr.to_string(),
            policy: policy_addr.to_string(),
            id: control_id.clone(),
            pid: None,
        },
        dashboard: dashboard_listener.local_addr()?.to_string(),
        entries,
        workloads: workloads.iter().map(|(_, _, l)| l.clone()).collect(),
    };
    layout.store(&state_dir)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    ports.release();

    // 1. The control plane.
    log(
        "up",
        &format!(
            "starting the control plane ({} workloads in {})",
            workloads.len(),
            config.display()
        ),
    );
    let control = supervise::start(
        Spec {
            label: "onemesh/control".into(),
            program: program(&bin_dir, "onemesh-control"),
            args: vec![
                "--config".into(),
                config.display().to_string(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--listen-identity".into(),
                identity_addr.to_string(),
                "--listen-destination".into(),
                destination_addr.to_string(),
                "--listen-policy".into(),
                policy_addr.to_string(),
            ],
            env: vec![("ONEMESH_LOG_FORMAT".into(), "json".into())],
        },
        stop_rx.clone(),
    );
    wait_for(
        &format!("control plane on {identity_addr}"),
        || async move {
            TcpStream::connect(identity_addr).await.is_ok()
                && TcpStream::connect(destination_addr).await.is_ok()
                && TcpStream::connect(policy_addr).await.is_ok()
        },
    )
    .await?;
    let anchors = state_dir.join("trust-anchors.pem");
    // Each proxy's own state directory (made 0700 by the proxy).
    let proxies = state_dir.join("proxies");
    std::fs::create_dir_all(&proxies)?;
    std::fs::set_permissions(
        &proxies,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;

    // 2. Every workload: its proxy, then its app.
    let data = state_dir.join("data");
    let mut pids = Vec::new();
    for (w, token, l) in &workloads {
        let proxy = supervise::start(
            Spec {
                label: format!("{}/{} proxy", l.namespace, l.name),
                program: program(&bin_dir, "onemesh-proxy"),
                args: vec![],
                env: vec![
                    ("ONEMESH_PROXY_IDENTITY".into(), l.identity.clone()),
                    ("ONEMESH_PROXY_WORKLOAD".into(), l.name.clone()),
                    ("ONEMESH_PROXY_INBOUND_ADDR".into(), l.inbound.clone()),
                    ("ONEMESH_PROXY_OUTBOUND_ADDR".into(), l.outbound.clone()),
                    ("ONEMESH_PROXY_ADMIN_ADDR".into(), l.admin.clone()),
                    (
                        "ONEMESH_PROXY_TRUST_ANCHORS".into(),
                        anchors.display().to_string(),
                    ),
                    (
                        "ONEMESH_PROXY_CONTROL_IDENTITY_ADDR".into(),
                        identity_addr.to_string(),
                    ),
                    (
                        "ONEMESH_PROXY_CONTROL_DESTINATION_ADDR".into(),
                        destination_addr.to_string(),
                    ),
                    (
                        "ONEMESH_PROXY_CONTROL_POLICY_ADDR".into(),
                        policy_addr.to_string(),
                    ),
                    ("ONEMESH_PROXY_CONTROL_ID".into(), control_id.clone()),
                    ("ONEMESH_PROXY_IDENTITY_TOKEN".into(), token.clone()),
                    // Key, leaf, bundle and last configuration survive a restart of the proxy.
                    (
                        "ONEMESH_PROXY_STATE_DIR".into(),
                        proxies
                            .join(format!("{}.{}", l.namespace, l.name))
                            .display()
                            .to_string(),
                    ),
                    ("ONEMESH_PROXY_LOG_FORMAT".into(), "json".into()),
                ],
            },
            stop_rx.clone(),
        );
        let dir = data.join(&l.namespace).join(&l.name);
        std::fs::create_dir_all(&dir)?;
        let first = l.app_ports.values().next().copied().unwrap_or(0);
        let mut env = vec![
            ("PORT".to_string(), first.to_string()),
            ("LISTEN".into(), format!("127.0.0.1:{first}")),
            ("DATA_DIR".into(), dir.display().to_string()),
            ("HTTP_PROXY".into(), format!("http://{}", l.outbound)),
            ("http_proxy".into(), format!("http://{}", l.outbound)),
            ("NO_PROXY".into(), String::new()),
            ("ONEMESH_NAMESPACE".into(), l.namespace.clone()),
            ("ONEMESH_WORKLOAD".into(), l.name.clone()),
        ];
        for (declared, local) in &l.app_ports {
            env.push((format!("PORT_{declared}"), local.to_string()));
        }
        env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let (prog, args) = match w.command.split_first() {
            Some((p, rest)) => (program(&bin_dir, p), rest.to_vec()),
            None => anyhow::bail!("workload {}/{} has no command", l.namespace, l.name),
        };
        let app = supervise::start(
            Spec {
                label: format!("{}/{}", l.namespace, l.name),
                program: prog,
                args,
                env,
            },
            stop_rx.clone(),
        );
        pids.push(Watched {
            key: l.key(),
            proxy: proxy.pid.clone(),
            app: app.pid.clone(),
            restarts: [proxy.restarts.clone(), app.restarts.clone()],
        });
        handles.push(proxy);
        handles.push(app);
    }

    // 3. Entries and the dashboard.
    let mut background = Vec::new();
    for (listener, backend) in entry_listeners {
        background.push(tokio::spawn(forward_entry(listener, backend)));
    }
    let (layout_tx, layout_rx) = watch::channel(layout.clone());
    let dash = crate::dashboard::Dashboard::new(layout_rx);
    background.push(tokio::spawn(dash.clone().serve(dashboard_listener)));
    background.push(tokio::spawn(dash.scrape_forever()));

    // 4. Wait until every proxy is ready and every app answers.
    let total = workloads.len();
    let mut n = 0;
    let ready_deadline = Instant::now() + READY_TIMEOUT;
    for (_, _, l) in &workloads {
        let admin = l.admin.clone();
        let apps: Vec<u16> = l.app_ports.values().copied().collect();
        let ok = poll_until(ready_deadline, || {
            let admin = admin.clone();
            let apps = apps.clone();
            async move {
                let proxy_ready = matches!(
                    crate::http::get(&admin, "/ready", Duration::from_secs(1)).await,
                    Ok((s, _)) if s == hyper::StatusCode::OK
                );
                let mut apps_up = true;
                for p in apps {
                    apps_up &= TcpStream::connect(("127.0.0.1", p)).await.is_ok();
                }
                proxy_ready && apps_up
            }
        })
        .await;
        n += 1;
        if ok {
            log("up", &format!("[{n}/{total}] {} ready", l.key()));
        } else {
            log(
                "up",
                &format!(
                    "[{n}/{total}] {} is NOT ready after {READY_TIMEOUT:?}: see its log lines above; `onemesh check` tells more",
                    l.key()
                ),
            );
        }
    }
    let mut current = layout.clone();
    refresh_pids(&mut current, &pids, control.pid());
    let _ = current.store(&state_dir);
    layout_tx.send_replace(current.clone());
    log(
        "up",
        &format!("ready in {:.1}s", started.elapsed().as_secs_f64()),
    );
    for (svc, url) in &current.entries {
        log("up", &format!("entry {svc}: {url}"));
    }
    log("up", &format!("dashboard: http://{}/", current.dashboard));
    log(
        "up",
        "`onemesh status`, `onemesh check`, `onemesh stat`, `onemesh edges`; Ctrl-C or `onemesh down` stops",
    );

    // 5. Run until told to stop; keep the layout's pids current across restarts.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                let mut next = current.clone();
                refresh_pids(&mut next, &pids, control.pid());
                if next != current {
                    current = next;
                    let _ = current.store(&state_dir);
                    layout_tx.send_replace(current.clone());
                }
            }
        }
    }
    log("up", "stopping");
    let _ = stop_tx.send(true);
    // Apps and proxies first (proxies drain), the control plane last.
    for h in handles {
        h.stopped().await;
    }
    control.stopped().await;
    for b in background {
        b.abort();
    }
    let _ = std::fs::remove_file(Layout::path(&state_dir));
    log("up", "stopped");
    Ok(true)
}

/// The live pids and restart counts of one workload's processes.
struct Watched {
    key: String,
    proxy: Arc<AtomicU32>,
    app: Arc<AtomicU32>,
    restarts: [Arc<AtomicU32>; 2],
}

fn refresh_pids(layout: &mut Layout, watched: &[Watched], control: Option<u32>) {
    layout.control.pid = control;
    let get = |a: &AtomicU32| match a.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    };
    for w in &mut layout.workloads {
        if let Some(x) = watched.iter().find(|x| x.key == w.key()) {
            w.proxy_pid = get(&x.proxy);
            w.app_pid = get(&x.app);
            w.restarts = x.restarts.iter().map(|r| r.load(Ordering::Relaxed)).sum();
        }
    }
}

/// Writes JSON atomically, readable by this user only (tokens.json holds bootstrap secrets).
fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec_pretty(v)?))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

async fn poll_until<F, Fut>(deadline: Instant, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for<F, Fut>(what: &str, f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if poll_until(Instant::now() + READY_TIMEOUT, f).await {
        Ok(())
    } else {
        anyhow::bail!("{what} did not come up within {READY_TIMEOUT:?}: see its log lines above")
    }
}

/// The platform's edge: plain TCP from this machine to an exposed service's app.
async fn forward_entry(listener: TcpListener, backend: u16) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(("127.0.0.1", backend)).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// The policy part of `onemesh check`: mesh.yaml still loads, and every policy names things that exist.
pub fn policy_checks(layout: &Layout) -> Vec<Check> {
    match Mesh::load(&layout.config) {
        Ok(mesh) => {
            let mut out = vec![Check {
                ok: true,
                what: format!("{} is valid", layout.config.display()),
                hint: String::new(),
            }];
            let running: Vec<String> = layout.workloads.iter().map(|w| w.key()).collect();
            let declared: Vec<String> = mesh
                .workloads()
                .iter()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            let missing: Vec<&String> = declared.iter().filter(|d| !running.contains(d)).collect();
            out.push(Check {
                ok: missing.is_empty(),
                what: "every declared workload is running".into(),
                hint: format!(
                    "not running: {missing:?} (added after `onemesh up` started? restart it)"
                ),
            });
            out
        }
        Err(e) => vec![Check {
            ok: false,
            what: format!("{} is valid", layout.config.display()),
            hint: format!("{e:#}"),
        }],
    }
}

/// `onemesh authz`: the policies that apply to a workload, from mesh.yaml.
pub fn print_authz(layout: &Layout, w: &layout::Workload, out: Output) -> anyhow::Result<bool> {
    let mesh = Mesh::load(&layout.config)?;
    let rules = mesh.authz(&w.namespace, &w.name);
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
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.ports.clone(),
                r.routes.clone(),
                r.from.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render(&["POLICY", "PORTS", "ROUTES", "ALLOWED CALLERS"], &rows)
    );
    Ok(true)
}
