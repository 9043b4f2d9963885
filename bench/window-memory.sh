#!/bin/sh
# What does the control plane's metrics window cost? Runs N simulated proxies (default 1,000) for
# R scrape rounds (default 360: one hour at 10 s) into a window with the default settings (10 s
# resolution, 1 h retention) and prints the heap it holds (counted by a global allocator, with and
# without malloc's per-block overhead), bytes per proxy and per aggregated series, the ingest time
# per proxy scrape, and query times. Release build; ~1-2 minutes on 2 cores after building.
# What the simulated proxies look like: crates/window/tests/sim/mod.rs; the numbers last measured
# and the bound: crates/window/README.md.
#
#   bench/window-memory.sh [proxies] [rounds]
set -eu
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p onemesh-window --example window_memory -- "${1:-1000}" "${2:-360}"
