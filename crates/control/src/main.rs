//! `onemesh-control`: runs the control plane until SIGINT or SIGTERM, over a local mesh.yaml
//! (`--store local`, the default) or over the Kubernetes API (`--store kubernetes`).
//!
//! In Kubernetes mode the CA is not made here: it is read from `--ca-dir`, where the issuer Secret
//! is mounted (see [`onemesh_control::kubestore::ca_files`] for its keys), and copied into the
//! state directory (an emptyDir) under the names the CA module reads. Without the anchor's key the
//! issuer is not rotated by the control plane: rotating the issuer in Kubernetes is replacing the
//! Secret and restarting the control plane. Replicas elect a leader with the Lease
//! `onemesh-control` in `--namespace` (`POD_NAMESPACE`); only the leader writes the onemesh
//! objects' conditions and Events, and would rotate the issuer by itself. Every replica serves
//! the proxy-injection webhook (`--listen-webhook`, see `onemesh_control::webhook`) and publishes
//! the trust anchors (`onemesh_control::publish`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use onemesh_control::inject::InjectConfig;
use onemesh_control::kubestore::{KubeSettings, KubeStore, lease};
use onemesh_control::local::{LocalStore, POLL_INTERVAL};
use onemesh_control::observe::{ObserveSettings, TOKEN_FILE, Token};
use onemesh_control::pki::CaSettings;
use onemesh_control::store::Store;
use onemesh_control::webhook::WebhookSettings;
use onemesh_control::{Settings, start};
use onemesh_window::WindowSettings;

/// The onemesh control plane: identity, destination and policy gRPC services over TLS.
#[derive(Parser, Debug)]
#[command(name = "onemesh-control", version)]
struct Args {
    /// Where the mesh is described: `local` (mesh.yaml and `onemesh up`'s state files) or
    /// `kubernetes` (the Kubernetes API: meshed Namespaces, Pods, Services, EndpointSlices and
    /// the onemesh CRDs; identity by ServiceAccount token).
    #[arg(long, value_enum, default_value_t = StoreKind::Local)]
    store: StoreKind,
    /// Kubernetes mode: the kubeconfig to use; absent: the in-cluster configuration (the pod's
    /// ServiceAccount).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the audience a proxy's ServiceAccount token must carry.
    #[arg(long, default_value = "onemesh")]
    token_audience: String,
    /// Kubernetes mode (required there): the directory where the issuer Secret is mounted
    /// (`ca.crt`: the trust anchors bundle, `tls.crt`: the issuer's certificate chain,
    /// `tls.key`: its private key).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Kubernetes mode: the control plane's namespace, where its Lease `onemesh-control` elects
    /// the replica that writes statuses and rotates the issuer.
    #[arg(long, env = "POD_NAMESPACE", default_value = "onemesh")]
    namespace: String,
    /// Local mode: the mesh description (Namespaces, Workloads, Services, AuthorizationPolicies, Routes).
    #[arg(long, default_value = "mesh.yaml")]
    config: PathBuf,
    /// Holds the CA (made when absent), endpoints.json and tokens.json.
    #[arg(long, default_value = ".onemesh")]
    state_dir: PathBuf,
    /// Address of the identity service.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen_identity: SocketAddr,
    /// Address of the destination service.
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen_destination: SocketAddr,
    /// Address of the policy service.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen_policy: SocketAddr,
    /// Trust domain of the mesh's SPIFFE ids.
    #[arg(long, default_value = onemesh_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of each issuer the control plane makes (e.g. `8760h`, one year).
    #[arg(long, default_value = "8760h", value_parser = duration)]
    issuer_lifetime: Duration,
    /// Fraction of the issuer's life at which it is rotated by itself.
    #[arg(long, default_value_t = onemesh_control::pki::ISSUER_ROTATE_AT, value_parser = fraction)]
    issuer_rotate_at: f64,
    /// Lifetime of a trust anchor the control plane makes (first start, anchor rotation).
    #[arg(long, default_value = "87600h", value_parser = duration)]
    anchor_lifetime: Duration,
    /// How long each rotation step waits for the connected proxies when the operator names no
    /// deadline (automatic issuer rotation included).
    #[arg(long, default_value = "5m", value_parser = duration)]
    rotation_deadline: Duration,
    /// Proxies renew within this after the issuer changed (spread at random over it).
    #[arg(long, default_value = "5s", value_parser = duration)]
    renew_within: Duration,
    /// Address of the health endpoint for probes (`/live`, `/ready`; plain HTTP, nothing
    /// secret), e.g. `0.0.0.0:9990` in a pod; absent: none.
    #[arg(long)]
    listen_health: Option<SocketAddr>,
    /// Kubernetes mode: address of the proxy-injection webhook (HTTPS, `/inject`; the API server
    /// calls it, see `onemesh_control::webhook`). Default `0.0.0.0:8443` in Kubernetes mode;
    /// `off`: none.
    #[arg(long, value_parser = listen_or_off)]
    listen_webhook: Option<Listen>,
    /// Kubernetes mode: the proxy image the webhook injects (it also runs the init step).
    #[arg(long, default_value = concat!("onemesh/proxy:v", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// Kubernetes mode: the cluster's DNS domain (the control plane's Service name in injected
    /// proxies and in the webhook's certificate).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Address of the dashboard and its JSON API (plain HTTP; operators only: every API call
    /// needs the dashboard token). `0.0.0.0:8084` in a pod; `off`: none.
    #[arg(long, default_value = "127.0.0.1:8084", value_parser = listen_or_off)]
    listen_dashboard: Listen,
    /// Another name the dashboard answers to (`NAME` or `NAME:PORT`; repeatable). Requests for
    /// other names are refused (a guard against DNS rebinding).
    #[arg(long = "dashboard-host")]
    dashboard_hosts: Vec<String>,
    /// The dashboard token's file. Default `<state-dir>/dashboard-token`, made at first start;
    /// Kubernetes mode: the mounted Secret `onemesh-dashboard-token` (it must exist).
    #[arg(long)]
    dashboard_token_file: Option<PathBuf>,
    /// The metrics window's resolution: every proxy is scraped this often.
    #[arg(long, default_value = "10s", value_parser = duration)]
    metrics_resolution: Duration,
    /// How much history the metrics window keeps.
    #[arg(long, default_value = "1h", value_parser = duration)]
    metrics_retention: Duration,
    /// The most series the metrics window keeps (workloads, edges, routes, policies); more are
    /// dropped and counted.
    #[arg(long, default_value_t = WindowSettings::default().max_series)]
    metrics_max_series: usize,
    /// The decision log's directory (`Audit.Append`: every proxy's authorization decisions,
    /// hash-chained and sealed; see docs/audit.md). Default `<state-dir>/audit`; Kubernetes: a
    /// persistent volume.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// A decision log file reaching this size is closed and a new one started (the chain and a
    /// signed checkpoint carried into it).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    audit_max_file_bytes: u64,
    /// How often the decision log is sealed with a checkpoint signed by the control plane's key
    /// (when something new was written; also at shutdown).
    #[arg(long, default_value = "10s", value_parser = duration)]
    audit_seal_interval: Duration,
    /// Decision log files whose every entry is older than this are deleted (e.g. `365d`, the
    /// PCI DSS 10.5.1 year; `2160h`).
    #[arg(long, default_value = "365d", value_parser = days_or_duration)]
    audit_retention: Duration,
    /// Log filter (tracing syntax), e.g. `info` or `onemesh_control=debug`.
    #[arg(long, env = "ONEMESH_CONTROL_LOG", default_value = "info")]
    log: String,
}

/// An address to listen on, or `off`.
#[derive(Clone, Copy, Debug)]
enum Listen {
    On(SocketAddr),
    Off,
}

fn listen_or_off(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::On)
        .map_err(|_| format!("{s:?} is not an ip:port address or `off`: write e.g. 0.0.0.0:8443"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Local,
    Kubernetes,
}

/// This replica's name in the Lease: `POD_NAME` (set from the downward API), else
/// `<hostname>-<pid>`.
fn replica_name() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// A positive duration such as `500ms`, `5m`, `8760h`.
fn duration(s: &str) -> Result<Duration, String> {
    onemesh_control::config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!("{s:?} is not a positive duration: write e.g. 500ms, 30s, 5m or 8760h")
        })
}

/// A positive duration, or a number of days (`365d`).
fn days_or_duration(s: &str) -> Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) if days > 0 => Ok(Duration::from_secs(days.saturating_mul(86_400))),
        Some(_) => Err(format!(
            "{s:?} is not a positive number of days: write e.g. 365d"
        )),
        None => duration(s),
    }
}

/// A fraction strictly between 0 and 1.
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!(
            "{s:?} is not a fraction between 0 and 1: write e.g. 0.7"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    // Before anything is announced, so a SIGTERM right after start is a graceful stop.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;

    let mut leading = None;
    // Live at once; ready once the store has its first full view and the servers listen.
    let (ready, readiness) = tokio::sync::watch::channel(Err::<(), String>(
        "starting: waiting for the store's first complete view of the mesh".to_string(),
    ));
    if let Some(addr) = args.listen_health {
        let bound = onemesh_control::health::bind(addr, readiness)
            .await
            .with_context(|| format!("cannot listen for health checks on {addr}"))?;
        tracing::info!(health = %bound, "health endpoint listening");
    }
    let mut kube_client = None;
    let (store, stop_store): (Arc<dyn Store>, Box<dyn FnOnce()>) = match args.store {
        StoreKind::Local => {
            let store = LocalStore::open(&args.config, &args.state_dir)?;
            let watcher = store.spawn_watcher(POLL_INTERVAL);
            (Arc::new(store), Box::new(move || watcher.abort()))
        }
        StoreKind::Kubernetes => {
            let ca_dir = args.ca_dir.as_deref().context(
                "--store kubernetes needs --ca-dir: the directory where the issuer Secret is mounted (ca.crt, tls.crt, tls.key)",
            )?;
            onemesh_control::kubestore::ca_files(ca_dir, &args.state_dir)?;
            let client = onemesh_control::kubestore::client(args.kubeconfig.as_deref()).await?;
            kube_client = Some(client.clone());
            let identity = replica_name();
            let (leader, election) = lease::spawn(
                kube::Api::namespaced(client.clone(), &args.namespace),
                lease::LeaseSettings::new(&args.namespace, &identity),
            );
            leading = Some(leader.clone());
            let settings = KubeSettings {
                trust_domain: args.trust_domain.clone(),
                audiences: vec![args.token_audience.clone()],
                leader: Some(leader),
                ..KubeSettings::default()
            };
            let store = KubeStore::start(client, settings);
            store.wait_ready(Duration::from_secs(60)).await?;
            let handle = store.clone();
            (
                Arc::new(store),
                Box::new(move || {
                    election.abort();
                    handle.stop();
                }),
            )
        }
    };
    let mut settings = Settings::new(args.state_dir.clone());
    settings.identity_addr = args.listen_identity;
    settings.destination_addr = args.listen_destination;
    settings.policy_addr = args.listen_policy;
    settings.trust_domain = args.trust_domain;
    settings.ca = CaSettings {
        anchor_lifetime: args.anchor_lifetime,
        issuer_lifetime: args.issuer_lifetime,
        issuer_rotate_at: args.issuer_rotate_at,
        rotation_deadline: args.rotation_deadline,
        renew_within: args.renew_within,
        ..CaSettings::default()
    };
    settings.leader = leading;
    if let Some(dir) = &args.audit_dir {
        settings.audit.dir = dir.clone();
    }
    settings.audit.max_file_bytes = args.audit_max_file_bytes;
    settings.audit.seal_interval = args.audit_seal_interval;
    settings.audit.retention = args.audit_retention;
    let mesh_state = store.subscribe();
    let control = start(&settings, store).await?;
    let observe = match args.listen_dashboard {
        Listen::On(listen) => {
            let token = match &args.dashboard_token_file {
                Some(path) => Token::load(path)?,
                None => Token::load_or_create(&args.state_dir.join(TOKEN_FILE))?,
            };
            let observe = onemesh_control::observe::start(
                ObserveSettings {
                    listen,
                    hosts: args.dashboard_hosts.clone(),
                    token,
                    window: WindowSettings {
                        resolution: args.metrics_resolution,
                        retention: args.metrics_retention,
                        max_series: args.metrics_max_series,
                    },
                    trust_domain: settings.trust_domain.clone(),
                },
                mesh_state,
                control.credentials.clone(),
            )
            .await?;
            tracing::info!(dashboard = %observe.addr, "dashboard and metrics API listening");
            Some(observe)
        }
        Listen::Off => None,
    };
    let mut webhook = None;
    if let Some(client) = kube_client {
        // Proxies mount the anchors from their own namespace before they trust anything else.
        tokio::spawn(onemesh_control::publish::run(
            client,
            control.subscribe_ca(),
            args.namespace.clone(),
        ));
        let default_webhook = Listen::On(SocketAddr::from(([0, 0, 0, 0], 8443)));
        if let Listen::On(addr) = args.listen_webhook.unwrap_or(default_webhook) {
            let inject = InjectConfig {
                proxy_image: args.proxy_image.clone(),
                trust_domain: settings.trust_domain.clone(),
                control_namespace: args.namespace.clone(),
                cluster_domain: args.cluster_domain.clone(),
                token_audience: args.token_audience.clone(),
                ..InjectConfig::default()
            };
            let hook = onemesh_control::webhook::start(
                WebhookSettings::new(addr, inject),
                control.subscribe_ca(),
            )
            .await
            .context("cannot start the proxy-injection webhook")?;
            webhook = Some(hook);
        }
    }
    let _previous = ready.send_replace(Ok(()));
    tracing::info!(
        identity = %control.identity_addr,
        destination = %control.destination_addr,
        policy = %control.policy_addr,
        id = %control.id,
        "onemesh-control listening"
    );

    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    stop_store();
    drop(observe);
    if let Some(hook) = webhook {
        hook.stop();
    }
    control.shutdown().await;
    Ok(())
}
