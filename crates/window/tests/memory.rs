//! The window's memory stays under its bounds, heap counted by a global allocator:
//!
//! - the documented size: 1,000 simulated proxies for an hour at the default settings (10 s
//!   resolution, 1 h retention: 360 rounds) under 64 MiB (README.md, "Memory"); the same run with
//!   the query times is `bench/window-memory.sh`;
//! - 40 proxies for 65 rounds with a 10 min retention (so steps also age out) under about twice
//!   what was measured per proxy, so a change that makes records or series much fatter fails
//!   here even where it would still fit the 64 MiB.
//!
//! The allocator's counters are the process's: the tests take turns (nextest runs each in its
//! own process anyway).

#[path = "sim/alloc.rs"]
mod alloc;
mod sim;

use std::sync::Mutex;
use std::time::Duration;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Bytes per simulated proxy at 60 steps of retention: about twice the measured value.
const BOUND_PER_PROXY: usize = 2 * 17_500;

/// The documented bound of the window for 1,000 proxies over an hour at 10 s.
const BOUND_1000_PROXIES_HOUR: usize = 64 << 20;

/// One measurement at a time: the allocator's counters are shared by the process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `proxies` simulated proxies for `rounds` scrapes into a window, counted by this allocator.
fn measure(proxies: usize, rounds: u64, settings: onemesh_window::WindowSettings) -> sim::Report {
    sim::measure(
        proxies,
        rounds,
        settings,
        alloc::live,
        alloc::live_malloc,
        alloc::peak,
        alloc::reset_peak,
    )
}

#[test]
fn memory_of_1000_proxies_for_an_hour_stays_under_64_mib() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let settings = onemesh_window::WindowSettings::default();
    assert_eq!(
        (settings.resolution, settings.retention),
        (Duration::from_secs(10), Duration::from_secs(3600)),
        "the documented bound is for the default settings"
    );
    let report = measure(1000, 360, settings);
    report.print();
    // Every proxy's series are there (each is its own workload, with edges, routes and a policy),
    // none refused by the cap, and every step of the hour is held.
    assert!(report.stats.series > 9_000, "{report:?}");
    assert_eq!(report.stats.dropped_series_total, 0);
    assert!(
        report.heap_bytes < BOUND_1000_PROXIES_HOUR,
        "window holds {:.1} MiB for 1,000 proxies over an hour, over the documented {} MiB",
        report.heap_bytes as f64 / (1 << 20) as f64,
        BOUND_1000_PROXIES_HOUR >> 20
    );
    assert!(
        report.malloc_bytes < BOUND_1000_PROXIES_HOUR,
        "with malloc's overhead: {} bytes",
        report.malloc_bytes
    );
}

#[test]
fn memory_of_40_proxies_stays_under_the_bound() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let settings = onemesh_window::WindowSettings {
        resolution: Duration::from_secs(10),
        retention: Duration::from_secs(600),
        max_series: 100_000,
    };
    let report = measure(40, 65, settings);
    report.print();
    assert!(report.samples > 150, "{report:?}");
    assert!(
        report.heap_bytes < 40 * BOUND_PER_PROXY,
        "window holds {} bytes for 40 proxies, over the bound {}",
        report.heap_bytes,
        40 * BOUND_PER_PROXY
    );
    // The run-time estimate is honest (within 25 % of what the allocator counted).
    let estimate = report.estimate.total_bytes as f64;
    let measured = report.heap_bytes as f64;
    assert!(
        (estimate - measured).abs() < 0.25 * measured,
        "estimate {estimate} vs measured {measured}"
    );
    assert_eq!(report.stats.dropped_series_total, 0);
}
