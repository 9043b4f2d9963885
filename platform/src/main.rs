//! `onemesh-platform`: runs one of the five services, or the traffic generator.
//!
//! `onemesh-platform <order|pg|appcard|card|bank> [--listen ADDR] [--data-dir DIR]`
//! `onemesh-platform traffic --target http://ORDER_ADDR --rate N --duration 30s`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use onemesh_platform::common::serve::{init_logging, serve};
use onemesh_platform::run::{Service, ServiceConfig, build_app, open_db};
use onemesh_platform::traffic::{self, TrafficConfig};

#[derive(Parser)]
#[command(
    name = "onemesh-platform",
    about = "The onemesh reference platform's services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (default: $LISTEN, else 127.0.0.1:$PORT, else 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the service's SQLite database (default: $DATA_DIR, else ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The table-ordering shop (public entry).
    Order(ServeArgs),
    /// The payment gateway.
    Pg(ServeArgs),
    /// The app-card wallet.
    Appcard(ServeArgs),
    /// The card issuer.
    Card(ServeArgs),
    /// The bank.
    Bank(ServeArgs),
    /// Drive a mix of payments against the order service and print a summary.
    Traffic {
        /// Base URL of the order service.
        #[arg(long)]
        target: String,
        /// Scenarios per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// How long to run, e.g. `30s`, `2m`, `500ms`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Scenarios in flight at most.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Stop after this many scenarios (default: only the duration limits).
        #[arg(long)]
        max: Option<u64>,
        /// Percent of pay requests sent twice at once with the same key (a racing client retry).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        duplicate_pay_percent: u32,
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("cannot read duration {text:?}; use e.g. 30s, 2m, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {text:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run_service(service: Service, args: ServeArgs) -> anyhow::Result<()> {
    let listen = match (args.listen, env("LISTEN"), env("PORT")) {
        (Some(a), _, _) => a,
        (None, Some(l), _) => l
            .parse()
            .with_context(|| format!("LISTEN={l:?} is not an address"))?,
        (None, None, Some(p)) => {
            let port: u16 = p
                .parse()
                .with_context(|| format!("PORT={p:?} is not a port"))?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
        (None, None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let data_dir = args
        .data_dir
        .or_else(|| env("DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"));
    let config = ServiceConfig::from_lookup(service, env)?;
    let db = open_db(&data_dir, service).with_context(|| {
        format!(
            "opening the {} database in {}",
            service.name(),
            data_dir.display()
        )
    })?;
    let app = build_app(&config, db)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is the port free?"))?;
    let addr = listener.local_addr()?;
    tracing::info!(service = service.name(), %addr, data_dir = %data_dir.display(), upstreams = ?config.upstreams, "listening");
    serve(listener, app, shutdown_signal()).await?;
    tracing::info!(service = service.name(), "stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let (service, args) = match cli.command {
        Command::Order(a) => (Service::Order, a),
        Command::Pg(a) => (Service::Pg, a),
        Command::Appcard(a) => (Service::Appcard, a),
        Command::Card(a) => (Service::Card, a),
        Command::Bank(a) => (Service::Bank, a),
        Command::Traffic {
            target,
            rate,
            duration,
            concurrency,
            max,
            duplicate_pay_percent,
            json,
        } => {
            let mut config = TrafficConfig::new(&target, rate, duration);
            config.concurrency = concurrency;
            config.max_scenarios = max;
            config.duplicate_pay_percent = duplicate_pay_percent;
            let summary = traffic::run(config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", traffic::render(&summary));
            }
            return Ok(());
        }
    };
    run_service(service, args).await
}
