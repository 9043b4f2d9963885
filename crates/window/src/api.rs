//! The JSON the control plane serves on port 8084 (issue 16's contract), as the window's queries
//! produce it and as the CLI reads it back. Times are unix seconds, latencies milliseconds, rates
//! per second. A ratio or a percentile is `null` when nothing was counted, and an identity or a
//! workload is `null` when it is not known.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /api/v1/overview`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub now_unix: f64,
    /// Seconds the numbers really cover: the window asked for, shorter right after start (the
    /// first scrape of a proxy is only its baseline), rounded to whole steps.
    pub window_s: f64,
    pub resolution_s: f64,
    pub retention_s: f64,
    pub targets: TargetCounts,
    pub workloads: Vec<WorkloadStats>,
    pub edges: Vec<EdgeStats>,
}

/// Proxies the control plane scrapes, and how many answered their last scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCounts {
    pub known: u32,
    pub up: u32,
}

/// A workload's inbound (served) traffic over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStats {
    pub namespace: String,
    pub workload: String,
    pub identity: Option<String>,
    /// Proxies of this workload known now.
    pub instances: u32,
    /// Of those, the ones whose last scrape succeeded.
    pub meshed: u32,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests and connections its inbound refused by policy.
    pub denied: u64,
    /// Requests and connections its inbound let through that policies in audit mode would deny.
    pub would_deny: u64,
    /// Inbound connections open at the last scrape, summed over its up proxies.
    pub tcp_open_connections: u64,
    pub tcp_read_bytes_per_s: f64,
    pub tcp_write_bytes_per_s: f64,
}

/// Whether an edge's traffic was mutually authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsState {
    /// Every request or connection had a verified peer identity.
    Mtls,
    /// None had.
    Plaintext,
    /// Some had, some not, within the window.
    Mixed,
}

/// Calls from one workload to another: the caller's outbound view, plus `denied`, what the
/// destination's inbound refused for the caller's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// `null` when the denied caller is not meshed (no identity) or its id is not a SPIFFE id.
    pub src_namespace: Option<String>,
    /// `null` when the denied caller's identity belongs to no known proxy.
    pub src_workload: Option<String>,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub src_id: Option<String>,
    pub dst_id: Option<String>,
    pub tls: TlsState,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub denied: u64,
    /// Requests let through that policies in audit mode would deny.
    pub would_deny: u64,
    /// Bytes from the caller to the callee per second (read by the callee's inbound from the
    /// caller's connections: HTTP, opaque TCP and upgrades), and back (`tcp_write_bytes_per_s`).
    pub tcp_read_bytes_per_s: f64,
    pub tcp_write_bytes_per_s: f64,
}

/// `GET /api/v1/workloads/{namespace}/{workload}/series`: one entry per step, oldest first;
/// `t` is each step's start. A value is `null` where it cannot be known: before the first data,
/// and for ratios and percentiles where no request was counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub step_s: f64,
    pub t: Vec<f64>,
    pub rps: Vec<Option<f64>>,
    pub success_rate: Vec<Option<f64>>,
    pub p50_ms: Vec<Option<f64>>,
    pub p95_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub denied_per_s: Vec<Option<f64>>,
    pub tcp_read_bytes_per_s: Vec<Option<f64>>,
    pub tcp_write_bytes_per_s: Vec<Option<f64>>,
}

/// `GET /api/v1/routes`: a route's traffic as the callers' proxies saw it, by the destination
/// namespace and the `route` label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub namespace: String,
    pub route: String,
    pub requests: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests sent again.
    pub retries: u64,
    /// Retries wanted and not made (budget or attempts exhausted, body too large, not
    /// idempotent).
    pub retries_refused: u64,
    /// Requests by the workload that answered (`namespace/workload`): a split's real shares.
    pub by_backend: BTreeMap<String, u64>,
}

/// `GET /api/v1/authz`: one authorization policy's decisions on one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzStats {
    pub namespace: String,
    pub workload: String,
    pub policy: String,
    pub allowed: u64,
    pub denied: u64,
    /// Requests denied by policies in audit mode only, and let through.
    pub would_deny: u64,
    pub callers: Vec<AuthzCaller>,
}

/// One caller's share of a policy's decisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzCaller {
    /// The caller's SPIFFE id; `null` for an unmeshed caller.
    pub id: Option<String>,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

/// `GET /api/v1/targets`: one scraped proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub namespace: String,
    pub workload: String,
    /// The proxy's admin address (`ip:port`).
    pub instance: String,
    pub identity: String,
    /// Whether the last scrape succeeded.
    pub up: bool,
    /// When the last scrape (successful or not) ended; `null` before the first.
    pub last_scrape_unix: Option<f64>,
    /// Why the last scrape failed.
    pub error: Option<String>,
}
