//! `onemesh-proxy`: configuration → logging → a runtime of `ONEMESH_PROXY_CORES` threads (one:
//! current-thread) →
//! [`onemesh_proxy::build`] → wait for SIGTERM or SIGINT → drain for up to
//! `ONEMESH_PROXY_SHUTDOWN_GRACE` → exit 0.
//!
//! `onemesh-proxy init [options]` is the one subcommand: the pod's init step, which installs the
//! iptables rules that send the pod's TCP through its proxy ([`onemesh_capture`]), prints them
//! and exits (0 done, 1 failed). Its options are parsed by hand (`onemesh_capture::USAGE`); the
//! proxy itself takes no arguments, only `ONEMESH_PROXY_*` variables.

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
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("init") => std::process::exit(init(args)),
        Some(other) => {
            eprintln!(
                "onemesh-proxy: unknown argument {other:?}: run `onemesh-proxy` with no \
                 arguments for the proxy (configured by ONEMESH_PROXY_* variables), or \
                 `onemesh-proxy init --help`"
            );
            std::process::exit(1);
        }
    }
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

/// `onemesh-proxy init`: install (or with `--remove` delete) the capture rules, print them and
/// how long it took; the exit status for the container runtime.
fn init(args: impl Iterator<Item = String>) -> i32 {
    use onemesh_capture::{InitCommand, USAGE, apply, parse_init_args, remove, render, show};
    let started = std::time::Instant::now();
    let parsed = match parse_init_args(args) {
        Ok(InitCommand::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Ok(InitCommand::Run(parsed)) => parsed,
        Err(e) => {
            eprintln!("onemesh-proxy init: {e}");
            return 1;
        }
    };
    if parsed.dry_run {
        if parsed.remove {
            println!(
                "# --remove would delete the jumps to, and the chains, ONEMESH_PREROUTING, \
                 ONEMESH_INBOUND_REDIRECT, ONEMESH_OUTPUT, ONEMESH_OUTBOUND_REDIRECT"
            );
        } else {
            print!("{}", render(&parsed.rules));
        }
        return 0;
    }
    let backend = parsed.backend.resolve();
    let done = if parsed.remove {
        remove(backend).map(|removed| {
            if removed {
                "removed the capture rules"
            } else {
                "no capture rules to remove"
            }
        })
    } else {
        apply(&parsed.rules, backend).map(|()| "installed the capture rules")
    };
    let elapsed = started.elapsed();
    if let Err(e) = done.as_ref() {
        eprintln!("onemesh-proxy init: iptables {backend}: {e}");
        return 1;
    }
    match show(backend) {
        Ok(rules) => print!("{rules}"),
        Err(e) => {
            eprintln!("onemesh-proxy init: the rules are in place but could not be listed: {e}");
            return 1;
        }
    }
    println!(
        "# onemesh-proxy init: {} with iptables-{backend} in {} ms",
        done.unwrap_or_default(),
        elapsed.as_millis()
    );
    0
}
