//! `onemesh-proxy`: configuration → logging → a runtime of `ONEMESH_PROXY_CORES` threads (one:
//! current-thread) →
//! [`onemesh_proxy::build`] → wait for SIGTERM or SIGINT → drain for up to
//! `ONEMESH_PROXY_SHUTDOWN_GRACE` → exit 0.

use anyhow::Context;
use onemesh_proxy::config::LogFormat;
use onemesh_proxy::{Config, Env, Sources};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `ONEMESH_PROXY_LOG` as `level` or `target=level` directives (`info,onemesh_proxy=debug`).
/// A plain target filter rather than `EnvFilter`, whose regular-expression engine would stay
/// resident in every sidecar for a start-up parse.
fn init_logging(config: &Config) {
    let filter = config
        .log
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json())
            .init(),
        LogFormat::Plain => tracing_subscriber::registry().with(filter).with(fmt).init(),
    }
}

fn main() -> anyhow::Result<()> {
    let config = Config::from_source(&Env).context("reading ONEMESH_PROXY_* variables")?;
    init_logging(&config);
    runtime(config.cores)
        .context("starting the async runtime")?
        .block_on(run(config))
}

/// One core: a current-thread runtime, so every task runs on the main thread and no wake-up
/// crosses threads. More: a work-stealing runtime with that many workers.
fn runtime(cores: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cores <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all().build()
}

async fn run(config: Config) -> anyhow::Result<()> {
    let grace = config.shutdown_grace;
    let sources = if config.control.is_some() {
        onemesh_proxy::control::sources(&config).context("starting the control-plane client")?
    } else {
        Sources::from_static_config(&config).context("loading static configuration")?
    };
    let proxy = onemesh_proxy::build(config, sources)
        .await
        .context("starting the proxy")?;

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    if proxy.shutdown(grace).await {
        info!("drained; exiting");
    } else {
        warn!(
            ?grace,
            "shutdown grace period passed with work in flight; exiting"
        );
    }
    Ok(())
}
