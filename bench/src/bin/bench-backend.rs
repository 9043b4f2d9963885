//! `bench-backend --listen ADDR --body-bytes N`: the benchmark's HTTP backend (see
//! `onemesh_bench::backend`). Prints `listening on ADDR` once bound, so the harness can start it
//! on port 0 and read the real port.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

/// A fixed-response HTTP backend for the benchmark harness.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Size of every response body, in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    runtime.block_on(async {
        let backend = onemesh_bench::backend::Backend::bind(args.listen, args.body_bytes).await?;
        println!("listening on {}", backend.local_addr());
        tokio::select! {
            () = backend.serve() => {}
            res = tokio::signal::ctrl_c() => res.context("could not wait for ctrl-c")?,
        }
        Ok(())
    })
}
