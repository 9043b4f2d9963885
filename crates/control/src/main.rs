//! `onemesh-control`: runs the control plane over a local mesh.yaml until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use onemesh_control::local::{LocalStore, POLL_INTERVAL};
use onemesh_control::{Settings, start};

/// The onemesh control plane: identity, destination and policy gRPC services over TLS.
#[derive(Parser, Debug)]
#[command(name = "onemesh-control", version)]
struct Args {
    /// The mesh description (Namespaces, Workloads, Services, AuthorizationPolicies, Routes).
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
    /// Log filter (tracing syntax), e.g. `info` or `onemesh_control=debug`.
    #[arg(long, env = "ONEMESH_CONTROL_LOG", default_value = "info")]
    log: String,
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

    let store = LocalStore::open(&args.config, &args.state_dir)?;
    let watcher = store.spawn_watcher(POLL_INTERVAL);
    let mut settings = Settings::new(args.state_dir.clone());
    settings.identity_addr = args.listen_identity;
    settings.destination_addr = args.listen_destination;
    settings.policy_addr = args.listen_policy;
    settings.trust_domain = args.trust_domain;
    let control = start(&settings, Arc::new(store)).await?;
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
    watcher.abort();
    control.shutdown().await;
    Ok(())
}
