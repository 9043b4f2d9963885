//! Measures the metrics window with simulated proxies: heap held (counted by a global
//! allocator), bytes per proxy and per aggregated series, ingest time per scrape, query times.
//!
//! `cargo run --release -p onemesh-window --example window_memory -- [proxies] [rounds]`
//! (default 1,000 proxies, 360 rounds: an hour at 10 s). See `bench/window-memory.sh`.

#[path = "../tests/sim/alloc.rs"]
mod alloc;
#[path = "../tests/sim/mod.rs"]
mod sim;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let proxies = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds = args.next().and_then(|a| a.parse().ok()).unwrap_or(360);
    let report = sim::measure(
        proxies,
        rounds,
        onemesh_window::WindowSettings::default(),
        alloc::live,
        alloc::live_malloc,
        alloc::peak,
        alloc::reset_peak,
    );
    report.print();
}
