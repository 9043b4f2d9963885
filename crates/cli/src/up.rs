//! `onemesh up`: the whole mesh on this machine. Reads mesh.yaml, prepares the state directory
//! (trust anchor and issuer on first run, one-time bootstrap tokens, the endpoints file the
//! control plane serves), picks free local ports, starts the control plane, then every workload's
//! proxy and app under supervision, waits until all are ready, prints the addresses a user needs
//! (and the dashboard's login link: the control plane serves the dashboard and the metrics API),
//! and streams a compact log until Ctrl-C, SIGTERM or `onemesh down`.
//!
//! In local mode an app listens on a free loopback port (given as `PORT` and `LISTEN`) behind its
//! proxy's inbound port, and reaches other services through `HTTP_PROXY` = its proxy's outbound port.
//! A Service with `expose` is also reachable from this machine at that address (the platform's edge;
//! traffic from outside the mesh is plain, as from a load balancer).
//!
//! With `--isolate` (root) each workload runs in a network namespace of its own instead
//! ([`crate::isolate`]): its proxy on the namespace's address, its app on the namespace's
//! loopback at its declared ports, and the pod's inbound capture rules in front, so that the app is
//! reachable only through its proxy. The control plane listens on the namespaces' gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::commands::Check;
use crate::layout::{self, Layout};
use crate::mesh::{Mesh, MeshWorkload};
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
    /// The dashboard and its JSON API (served by the control plane).
    #[arg(long, default_value = "127.0.0.1:8084")]
    dashboard_addr: SocketAddr,
    /// How often the control plane scrapes every proxy: the metrics window's resolution.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    metrics_resolution: String,
    /// Another name the dashboard answers to (NAME: on any port, or NAME:PORT), e.g. the one a
    /// `kubectl port-forward` or a proxy in front uses; repeatable. Requests naming any other
    /// host are refused (DNS-rebinding guard).
    #[arg(long = "dashboard-host", value_name = "NAME")]
    dashboard_hosts: Vec<String>,
    /// Give every exposed service a free port instead of the one mesh.yaml asks for (tests).
    #[arg(long)]
    expose_any_port: bool,
    /// Directory of the onemesh binaries (default: the one this `onemesh` runs from).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run each workload in a network namespace of its own, reachable only through its proxy
    /// (needs root). See docs/cli.md.
    #[arg(long)]
    isolate: bool,
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
    if args.isolate {
        crate::isolate::require_root()?;
    }
    let mesh = Mesh::load(&args.config)?;
    // The state directory holds the CA keys, bootstrap tokens, the proxies' keys and the apps'
    // databases: this user only.
    private_dir(state_dir)?;
    let state_dir = state_dir.canonicalize()?;
    let config = args.config.canonicalize()?;
    refuse_if_running(&state_dir)?;
    // Removed (namespaces, veths, bridge) when dropped: at the end, or on an error below.
    let network = if args.isolate {
        let t0 = Instant::now();
        let network = crate::isolate::Network::create(&state_dir, mesh.workloads().len())?;
        log(
            "up",
            &format!(
                "isolated: {} network namespaces on {} (bridge {}) in {:.2}s",
                network.slots.len(),
                network.net.subnet,
                network.net.bridge,
                t0.elapsed().as_secs_f64()
            ),
        );
        Some(network)
    } else {
        log(
            "up",
            "not isolated: workloads share this machine's loopback, so any local process can reach an app's port or act through its proxy's outbound port; run as root with --isolate to close that",
        );
        None
    };
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };

    let mut ports = Ports::default();
    let plan = plan(&mesh, &args, network.as_ref(), &mut ports)?;
    write_json(&state_dir.join("tokens.json"), &plan.tokens())?;
    write_json(&state_dir.join("endpoints.json"), &plan.endpoints())?;
    let (entries, entry_listeners) = bind_entries(&mesh, &args, &plan).await?;
    let layout = Layout {
        pid: std::process::id(),
        config: config.clone(),
        trust_domain: mesh.trust_domain().to_string(),
        control: layout::Control {
            identity: plan.control.identity.to_string(),
            destination: plan.control.destination.to_string(),
            policy: plan.control.policy.to_string(),
            id: plan.control.id.clone(),
            pid: None,
        },
        dashboard: plan.control.dashboard.to_string(),
        entries,
        workloads: plan.workloads.iter().map(|w| w.layout.clone()).collect(),
        isolation: network.as_ref().map(|n| n.net.clone()),
    };
    layout.store(&state_dir)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    ports.release();

    // 1. The control plane.
    log(
        "up",
        &format!(
            "starting the control plane ({} workloads in {})",
            plan.workloads.len(),
            config.display()
        ),
    );
    let control = start_control(&plan.control, &bin_dir, &config, &state_dir, &stop_rx).await?;
    let token = onemesh_control::observe::Token::load(
        &state_dir.join(onemesh_control::observe::TOKEN_FILE),
    )?;

    // 2. Every workload: its proxy, then its app.
    let started_workloads = start_workloads(&plan, &bin_dir, &state_dir, &stop_rx)?;

    // 3. Entries.
    let mut background = Vec::new();
    for (listener, netns, backend) in entry_listeners {
        background.push(tokio::spawn(forward_entry(listener, netns, backend)));
    }

    // 4. Wait until every proxy is ready and every app answers.
    wait_ready(&plan).await;
    let mut current = layout.clone();
    refresh_pids(&mut current, &started_workloads.watched, control.pid());
    let _ = current.store(&state_dir);
    log(
        "up",
        &format!("ready in {:.1}s", started.elapsed().as_secs_f64()),
    );
    for (svc, url) in &current.entries {
        log("up", &format!("entry {svc}: {url}"));
    }
    log(
        "up",
        &format!(
            "dashboard: http://{}/login?token={} (the token is in {})",
            current.dashboard,
            token.reveal(),
            state_dir
                .join(onemesh_control::observe::TOKEN_FILE)
                .display()
        ),
    );
    log(
        "up",
        "`onemesh status`, `onemesh check`, `onemesh stat`, `onemesh edges`; Ctrl-C or `onemesh down` stops",
    );

    // 5. Run until told to stop; keep the layout's pids current across restarts.
    serve_until_stopped(current, &state_dir, &started_workloads.watched, &control).await?;
    log("up", "stopping");
    let _ = stop_tx.send(true);
    // Apps and proxies first (proxies drain), the control plane last.
    for h in started_workloads.handles {
        h.stopped().await;
    }
    control.stopped().await;
    for b in background {
        b.abort();
    }
    if let Some(network) = network {
        drop(network);
        log("up", "removed the network namespaces");
    }
    let _ = std::fs::remove_file(Layout::path(&state_dir));
    log("up", "stopped");
    Ok(true)
}

/// Refuses to start a second `up` on the same state directory.
fn refuse_if_running(state_dir: &Path) -> anyhow::Result<()> {
    if let Ok(old) = Layout::load(state_dir)
        && crate::commands::running(old.pid)
        && old.pid != std::process::id()
    {
        anyhow::bail!(
            "onemesh up is already running (pid {}) with state in {}: stop it with `onemesh down`",
            old.pid,
            state_dir.display()
        );
    }
    Ok(())
}

/// Where the control plane listens, and the id its proxies expect of it.
struct ControlPlan {
    identity: SocketAddr,
    destination: SocketAddr,
    policy: SocketAddr,
    id: String,
    /// The dashboard and metrics API.
    dashboard: SocketAddr,
    dashboard_hosts: Vec<String>,
    metrics_resolution: String,
}

/// One workload to start: its declaration, its bootstrap token and its entry of the layout.
struct Planned<'a> {
    decl: &'a MeshWorkload,
    token: String,
    layout: layout::Workload,
}

/// Everything `up` decides before it starts a process.
struct Plan<'a> {
    control: ControlPlan,
    workloads: Vec<Planned<'a>>,
}

impl Plan<'_> {
    /// tokens.json: each bootstrap token and the one id it entitles.
    fn tokens(&self) -> BTreeMap<String, String> {
        self.workloads
            .iter()
            .map(|w| (w.token.clone(), w.decl.identity.clone()))
            .collect()
    }

    /// endpoints.json: each workload's inbound proxy and its apps' real ports.
    fn endpoints(&self) -> Vec<serde_json::Value> {
        self.workloads
            .iter()
            .map(|w| {
                let l = &w.layout;
                let ports: BTreeMap<String, u16> = l
                    .app_ports
                    .iter()
                    .map(|(d, p)| (d.to_string(), *p))
                    .collect();
                serde_json::json!({
                    "namespace": l.namespace,
                    "workload": l.name,
                    "inbound": l.inbound,
                    "admin": l.admin,
                    "control_admin": l.control_admin,
                    "ports": ports,
                })
            })
            .collect()
    }
}

/// Ports and tokens: the control plane's ports, then per workload a bootstrap token and its
/// inbound, outbound, admin and app ports.
///
/// Shared loopback: every port is a free one of 127.0.0.1. Isolated: the control plane listens
/// on the network's gateway (the port asked for, or a free one), and each workload's namespace
/// has the proxy's fixed ports (inbound and admin on its address, outbound on its loopback) and
/// the app on its declared ports.
fn plan<'a>(
    mesh: &'a Mesh,
    args: &Args,
    network: Option<&crate::isolate::Network>,
    ports: &mut Ports,
) -> anyhow::Result<Plan<'a>> {
    let control_addr = |a: SocketAddr| match network {
        Some(n) => SocketAddr::new(n.net.gateway.into(), a.port()),
        None => a,
    };
    let control = ControlPlan {
        identity: ports.concrete(control_addr(args.identity_addr))?,
        destination: ports.concrete(control_addr(args.destination_addr))?,
        policy: ports.concrete(control_addr(args.policy_addr))?,
        id: format!("spiffe://{}/ns/onemesh/sa/control", mesh.trust_domain()),
        dashboard: ports.concrete(args.dashboard_addr)?,
        dashboard_hosts: args.dashboard_hosts.clone(),
        metrics_resolution: args.metrics_resolution.clone(),
    };
    let mut workloads = Vec::new();
    for (n, w) in mesh.workloads().iter().enumerate() {
        let slot = network.and_then(|net| net.slots.get(n));
        let layout = match slot {
            Some(slot) => isolated_workload(w, slot)?,
            None => {
                let mut app_ports = BTreeMap::new();
                for p in &w.ports {
                    app_ports.insert(*p, ports.free_port()?);
                }
                layout::Workload {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    identity: w.identity.clone(),
                    app_ports,
                    inbound: format!("127.0.0.1:{}", ports.free_port()?),
                    outbound: format!("127.0.0.1:{}", ports.free_port()?),
                    admin: format!("127.0.0.1:{}", ports.free_port()?),
                    control_admin: format!("127.0.0.1:{}", ports.free_port()?),
                    app_pid: None,
                    proxy_pid: None,
                    restarts: 0,
                    netns: None,
                    address: None,
                }
            }
        };
        workloads.push(Planned {
            decl: w,
            token: new_token()?,
            layout,
        });
    }
    Ok(Plan { control, workloads })
}

/// A workload in its own namespace: the proxy's fixed ports, the app on its declared ports.
fn isolated_workload(
    w: &MeshWorkload,
    slot: &crate::isolate::Slot,
) -> anyhow::Result<layout::Workload> {
    use crate::isolate::{ADMIN_PORT, CONTROL_ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
    if let Some(p) = w
        .ports
        .iter()
        .find(|p| [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT, CONTROL_ADMIN_PORT].contains(p))
    {
        anyhow::bail!(
            "workload {}/{} declares port {p}, which its proxy uses under --isolate (4140, 4143, 4190, 4191): give the app another port",
            w.namespace,
            w.name
        );
    }
    Ok(layout::Workload {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        identity: w.identity.clone(),
        app_ports: w.ports.iter().map(|p| (*p, *p)).collect(),
        inbound: SocketAddr::new(slot.address.into(), INBOUND_PORT).to_string(),
        outbound: SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)).to_string(),
        admin: SocketAddr::new(slot.address.into(), ADMIN_PORT).to_string(),
        control_admin: SocketAddr::new(slot.address.into(), CONTROL_ADMIN_PORT).to_string(),
        app_pid: None,
        proxy_pid: None,
        restarts: 0,
        netns: Some(slot.netns.clone()),
        address: Some(slot.address),
    })
}

/// A bootstrap token: 128 bits from the OS's cryptographic RNG (a token is a secret that
/// entitles an id), in hex.
fn new_token() -> anyhow::Result<String> {
    let random: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed: check that getrandom(2) or /dev/urandom works"))?
        .expose();
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// A public entry's listener, and the app it forwards to: the namespace it is in (isolated) and
/// its port on that namespace's loopback.
type EntryListener = (TcpListener, Option<String>, u16);

/// Public entries: each exposed service gets a listener that forwards to one of its workloads'
/// app ports. Returns the entries for the layout (`namespace/service` → URL) and the listeners.
async fn bind_entries(
    mesh: &Mesh,
    args: &Args,
    plan: &Plan<'_>,
) -> anyhow::Result<(BTreeMap<String, String>, Vec<EntryListener>)> {
    let mut entries = BTreeMap::new();
    let mut listeners = Vec::new();
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
        let backend = plan
            .workloads
            .iter()
            .find(|w| w.decl.namespace == e.namespace && e.workloads.contains(&w.decl.name))
            .and_then(|w| {
                let port = w.layout.app_ports.get(&e.target_port).copied()?;
                Some((w.layout.netns.clone(), port))
            })
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
        listeners.push((listener, backend.0, backend.1));
    }
    Ok((entries, listeners))
}

/// Starts the control plane under supervision and waits until it listens on its three ports
/// and has written the trust anchors (on a first run the CA is made after listening starts,
/// and proxies need the anchors file).
async fn start_control(
    control: &ControlPlan,
    bin_dir: &Path,
    config: &Path,
    state_dir: &Path,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<supervise::Handle> {
    let handle = supervise::start(
        Spec {
            label: "onemesh/control".into(),
            program: program(bin_dir, "onemesh-control"),
            args: vec![
                "--config".into(),
                config.display().to_string(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--listen-identity".into(),
                control.identity.to_string(),
                "--listen-destination".into(),
                control.destination.to_string(),
                "--listen-policy".into(),
                control.policy.to_string(),
                "--listen-dashboard".into(),
                control.dashboard.to_string(),
                "--metrics-resolution".into(),
                control.metrics_resolution.clone(),
            ]
            .into_iter()
            .chain(
                control
                    .dashboard_hosts
                    .iter()
                    .flat_map(|h| ["--dashboard-host".to_string(), h.clone()]),
            )
            .collect(),
            env: vec![("ONEMESH_LOG_FORMAT".into(), "json".into())],
            netns: None,
        },
        stop_rx.clone(),
    );
    let anchors = state_dir.join("trust-anchors.pem");
    let addrs = [
        control.identity,
        control.destination,
        control.policy,
        control.dashboard,
    ];
    wait_for(&format!("control plane on {}", control.identity), || {
        let anchors = anchors.clone();
        async move {
            if !anchors.exists() {
                return false;
            }
            for a in addrs {
                if TcpStream::connect(a).await.is_err() {
                    return false;
                }
            }
            true
        }
    })
    .await?;
    Ok(handle)
}

/// The supervised processes of every workload.
struct StartedWorkloads {
    handles: Vec<supervise::Handle>,
    watched: Vec<Watched>,
}

/// Starts every workload's proxy, then its app, under supervision.
fn start_workloads(
    plan: &Plan<'_>,
    bin_dir: &Path,
    state_dir: &Path,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<StartedWorkloads> {
    let data = state_dir.join("data");
    private_dir(&data)?;
    let anchors = state_dir.join("trust-anchors.pem");
    // Each proxy's own state directory.
    let proxies = state_dir.join("proxies");
    let mut started = StartedWorkloads {
        handles: Vec::new(),
        watched: Vec::new(),
    };
    for w in &plan.workloads {
        let l = &w.layout;
        // The proxy keeps its key, leaf and last configuration here across restarts (0700 before
        // it starts; the proxy makes its files 0600).
        let proxy_state = proxies.join(format!("{}.{}", l.namespace, l.name));
        private_dir(&proxy_state)?;
        let proxy = supervise::start(
            proxy_spec(w, &plan.control, bin_dir, &anchors, &proxy_state),
            stop_rx.clone(),
        );
        let dir = data.join(&l.namespace).join(&l.name);
        private_dir(&dir)?;
        let app = supervise::start(app_spec(w, bin_dir, &dir)?, stop_rx.clone());
        started.watched.push(Watched {
            key: l.key(),
            proxy: proxy.pid.clone(),
            app: app.pid.clone(),
            restarts: [proxy.restarts.clone(), app.restarts.clone()],
        });
        started.handles.push(proxy);
        started.handles.push(app);
    }
    Ok(started)
}

/// A workload's proxy: its listeners, the control plane, its bootstrap token and state directory.
fn proxy_spec(
    w: &Planned<'_>,
    control: &ControlPlan,
    bin_dir: &Path,
    anchors: &Path,
    proxy_state: &Path,
) -> Spec {
    let l = &w.layout;
    let access_log = if w.decl.access_log { "json" } else { "off" };
    Spec {
        label: format!("{}/{} proxy", l.namespace, l.name),
        program: program(bin_dir, "onemesh-proxy"),
        args: vec![],
        env: vec![
            ("ONEMESH_PROXY_ACCESS_LOG".into(), access_log.into()),
            ("ONEMESH_PROXY_IDENTITY".into(), l.identity.clone()),
            ("ONEMESH_PROXY_WORKLOAD".into(), l.name.clone()),
            ("ONEMESH_PROXY_INBOUND_ADDR".into(), l.inbound.clone()),
            ("ONEMESH_PROXY_OUTBOUND_ADDR".into(), l.outbound.clone()),
            ("ONEMESH_PROXY_ADMIN_ADDR".into(), l.admin.clone()),
            (
                "ONEMESH_PROXY_CONTROL_ADMIN_ADDR".into(),
                l.control_admin.clone(),
            ),
            (
                "ONEMESH_PROXY_TRUST_ANCHORS".into(),
                anchors.display().to_string(),
            ),
            (
                "ONEMESH_PROXY_CONTROL_IDENTITY_ADDR".into(),
                control.identity.to_string(),
            ),
            (
                "ONEMESH_PROXY_CONTROL_DESTINATION_ADDR".into(),
                control.destination.to_string(),
            ),
            (
                "ONEMESH_PROXY_CONTROL_POLICY_ADDR".into(),
                control.policy.to_string(),
            ),
            ("ONEMESH_PROXY_CONTROL_ID".into(), control.id.clone()),
            ("ONEMESH_PROXY_IDENTITY_TOKEN".into(), w.token.clone()),
            ("ONEMESH_PROXY_LOG_FORMAT".into(), "json".into()),
            // Key, leaf, bundle and last configuration survive a restart of the proxy.
            (
                "ONEMESH_PROXY_STATE_DIR".into(),
                proxy_state.display().to_string(),
            ),
        ],
        netns: l.netns.as_deref().map(crate::isolate::netns_path),
    }
}

/// A workload's app: its command from mesh.yaml, with `PORT`/`LISTEN`/`PORT_<declared>`, its data
/// directory, `HTTP_PROXY` = its proxy's outbound port, and mesh.yaml's `env`.
fn app_spec(w: &Planned<'_>, bin_dir: &Path, data_dir: &Path) -> anyhow::Result<Spec> {
    let l = &w.layout;
    let first = l.app_ports.values().next().copied().unwrap_or(0);
    let mut env = vec![
        ("PORT".to_string(), first.to_string()),
        ("LISTEN".into(), format!("127.0.0.1:{first}")),
        ("DATA_DIR".into(), data_dir.display().to_string()),
        ("HTTP_PROXY".into(), format!("http://{}", l.outbound)),
        ("http_proxy".into(), format!("http://{}", l.outbound)),
        ("NO_PROXY".into(), String::new()),
        ("ONEMESH_NAMESPACE".into(), l.namespace.clone()),
        ("ONEMESH_WORKLOAD".into(), l.name.clone()),
    ];
    for (declared, local) in &l.app_ports {
        env.push((format!("PORT_{declared}"), local.to_string()));
    }
    env.extend(w.decl.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (prog, args) = match w.decl.command.split_first() {
        Some((p, rest)) => (program(bin_dir, p), rest.to_vec()),
        None => anyhow::bail!("workload {}/{} has no command", l.namespace, l.name),
    };
    Ok(Spec {
        label: format!("{}/{}", l.namespace, l.name),
        program: prog,
        args,
        env,
        netns: l.netns.as_deref().map(crate::isolate::netns_path),
    })
}

/// Waits (up to [`READY_TIMEOUT`] in all) until every proxy is ready and every app accepts
/// connections, logging each workload as it comes up or the ones that did not.
async fn wait_ready(plan: &Plan<'_>) {
    let total = plan.workloads.len();
    let ready_deadline = Instant::now() + READY_TIMEOUT;
    for (i, w) in plan.workloads.iter().enumerate() {
        let l = &w.layout;
        let ok = poll_until(ready_deadline, || {
            let admin = l.admin.clone();
            let apps: Vec<u16> = l.app_ports.values().copied().collect();
            async move {
                let proxy_ready = matches!(
                    crate::http::get(&admin, "/ready", Duration::from_secs(1)).await,
                    Ok((s, _)) if s == hyper::StatusCode::OK
                );
                let mut apps_up = true;
                for p in apps {
                    apps_up &= l.connect_app(p).await.is_ok();
                }
                proxy_ready && apps_up
            }
        })
        .await;
        let n = i + 1;
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
}

/// Runs until Ctrl-C, SIGTERM or `onemesh down`, storing the layout whenever a pid or a restart
/// count changes.
async fn serve_until_stopped(
    mut current: Layout,
    state_dir: &Path,
    watched: &[Watched],
    control: &supervise::Handle,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = tick.tick() => {
                let mut next = current.clone();
                refresh_pids(&mut next, watched, control.pid());
                if next != current {
                    current = next;
                    let _ = current.store(state_dir);
                }
            }
        }
    }
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

/// Creates `dir` and its missing parents as 0700 (this user only), or tightens an existing `dir`
/// to 0700 (a state directory made by an older onemesh, or by hand).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| {
            format!(
                "cannot create {} readable by this user only: check that this user owns it, or pass another --state-dir",
                dir.display()
            )
        })
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

/// The platform's edge: plain TCP from this machine to an exposed service's app. Isolated, the
/// connection to the app is made inside its namespace (as a load balancer in front of an
/// ingress, the entry is the declared public way in: it does not go through the app's proxy,
/// whose inbound would refuse an unauthenticated caller under default deny).
async fn forward_entry(listener: TcpListener, netns: Option<String>, backend: u16) {
    let app = SocketAddr::from(([127, 0, 0, 1], backend));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            if let Ok(mut server) = crate::isolate::connect(netns.as_deref(), app).await {
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
