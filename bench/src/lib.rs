//! onemesh-bench: the small binaries the benchmark harness (`bench/run`) drives.
//!
//! - [`backend`]: the HTTP server every benchmarked path ends at. It answers every request with
//!   the same fixed-size body, so the numbers measure the path, not the application.
//!
//! The harness itself is `bench/run` (Python standard library only, to keep build time down); see
//! `bench/README.md` for what each number answers. This crate deliberately has no load generator:
//! the harness uses `oha`, a maintained constant-rate generator with latency correction.

pub mod backend;
