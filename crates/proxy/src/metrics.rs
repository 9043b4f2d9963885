//! The proxy's Prometheus metrics (served as text on the admin `/metrics`).
//!
//! Names and labels follow DESIGN.md and Prometheus conventions (base units: seconds and bytes;
//! counters end in `_total`; `promtool check metrics` passes with no exception): `request_total`,
//! `response_total`, `response_latency_seconds`,
//! `tcp_open_total`, `tcp_close_total`, `tcp_open_connections`, `tcp_read_bytes_total`,
//! `tcp_write_bytes_total`, `tcp_connection_duration_seconds`, labelled `direction`, `namespace`, `workload`, `dst_namespace`,
//! `dst_workload`, `client_id` (inbound) / `server_id` (outbound), `tls`, `route`. Plus the proxy's
//! own: `tls_handshake_failure_total`, `authz_allow_total`, `authz_deny_total`,
//! `authz_would_deny_total` (labels `policy`, `kind`), the decision log's
//! `audit_decisions_total{outcome}`, `audit_shipped_records_total`, `audit_queue_records`,
//! `audit_ship_failures_total` ([`crate::audit`]), `proxy_error_total`, `detect_total`, `control_admin_refused_total`,
//! `identity_cert_expiration_timestamp_seconds`, `process_start_time_seconds`, `identity_certify_total`, `rate_limited_total`
//! (per caller, policy and `limit`), `fault_injected_total` (per route and `kind`), and the
//! outbound circuit breakers' `breaker_endpoint_state` and `breaker_ejection_total` (labels
//! `dst_service`, `route`, `endpoint`; see [`crate::outbound::breaker`]).
//!
//! TCP metrics cover every inbound connection (after the handshake, labelled with the caller;
//! an upgraded (WebSocket) connection stays counted, bytes and duration, until its splice ends),
//! every outbound opaque stream and every outbound upgrade spliced after its `101` (labelled with
//! the destination, counted from the `101` on). An application's outbound HTTP connection is not
//! a TCP edge (its destinations vary per request) and shows in the HTTP metrics. Each counted
//! connection's lifetime is observed in `tcp_connection_duration_seconds` when it closes.
//!
//! Every label value comes from a bounded enum, the configuration, or a verified peer identity;
//! never from request data or error text. Label sets hold `Arc<str>`s, so a connection builds its
//! [`EdgeLabels`] once and each request only clones pointers.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::io::ByteCounters;

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From another proxy (or an unmeshed caller) to our app.
    Inbound,
    /// From our app to somewhere else.
    Outbound,
}

impl Direction {
    /// Label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Whether the hop was mTLS with a verified identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tls {
    /// mTLS, peer identity verified.
    True,
    /// Plain: unmeshed caller or egress.
    NoIdentity,
}

impl Tls {
    /// Label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Tls::True => "true",
            Tls::NoIdentity => "no_identity",
        }
    }
}

/// The labels of an edge: who (this workload) talks to whom, over what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeLabels {
    /// Direction.
    pub direction: Direction,
    /// This workload's namespace.
    pub namespace: Arc<str>,
    /// This workload's name.
    pub workload: Arc<str>,
    /// The destination's namespace (empty when unknown, e.g. egress).
    pub dst_namespace: Arc<str>,
    /// The destination's workload (empty when unknown).
    pub dst_workload: Arc<str>,
    /// The peer's identity: `client_id` on inbound, `server_id` on outbound.
    pub peer_id: Option<Arc<str>>,
    /// mTLS or not.
    pub tls: Tls,
}

impl EncodeLabelSet for EdgeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("namespace", &*self.namespace).encode(encoder.encode_label())?;
        ("workload", &*self.workload).encode(encoder.encode_label())?;
        ("dst_namespace", &*self.dst_namespace).encode(encoder.encode_label())?;
        ("dst_workload", &*self.dst_workload).encode(encoder.encode_label())?;
        if let Some(id) = &self.peer_id {
            let key = match self.direction {
                Direction::Inbound => "client_id",
                Direction::Outbound => "server_id",
            };
            (key, &**id).encode(encoder.encode_label())?;
        }
        ("tls", self.tls.as_str()).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// Edge labels plus the route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    /// The edge.
    pub edge: EdgeLabels,
    /// Route name (from config; `default` when none matched).
    pub route: Arc<str>,
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.edge.encode(encoder)?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A route's request counter, latency histogram and response counters, looked up once (per
/// connection inbound, per endpoint and route outbound) so that a request hashes no label set.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// The labels.
    pub labels: RouteLabels,
    requests: Counter,
    latency: Histogram,
    /// `response_total` counters by status and classification, each looked up once (shared by
    /// every clone of these handles).
    responses: Arc<Mutex<Vec<(u16, Classification, Counter)>>>,
}

/// The most (status, classification) counters a [`RouteMetrics`] keeps at hand; rarer outcomes
/// are looked up in the family each time.
const MAX_CACHED_RESPONSES: usize = 16;

impl RouteMetrics {
    /// Counts a request.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Records a request's outcome: its latency since `start` and its response.
    pub fn record(
        &self,
        metrics: &Metrics,
        start: std::time::Instant,
        status: http::StatusCode,
        classification: Classification,
    ) {
        self.latency.observe(start.elapsed().as_secs_f64());
        let code = status.as_u16();
        let mut cached = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, counter)) = cached
            .iter()
            .find(|(s, c, _)| *s == code && *c == classification)
        {
            counter.inc();
            return;
        }
        let counter = metrics.response_total.get_or_create_owned(&ResponseLabels {
            route: self.labels.clone(),
            classification,
            status_code: code,
        });
        counter.inc();
        if cached.len() < MAX_CACHED_RESPONSES {
            cached.push((code, classification, counter));
        }
    }
}

/// Whether a response counts as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// Not a 5xx (and, for gRPC, grpc-status 0 when present in the headers).
    Success,
    /// A 5xx, a gRPC error, or no response at all.
    Failure,
}

/// Route labels plus the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    /// Route labels.
    pub route: RouteLabels,
    /// Success or failure.
    pub classification: Classification,
    /// HTTP status code.
    pub status_code: u16,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.route.encode(encoder)?;
        let class = match self.classification {
            Classification::Success => "success",
            Classification::Failure => "failure",
        };
        ("classification", class).encode(encoder.encode_label())?;
        ("status_code", self.status_code as u64).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// Direction + a static reason (handshake failures, proxy errors, detection outcomes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReasonLabels {
    /// Direction.
    pub direction: Direction,
    /// A bounded reason.
    pub reason: &'static str,
}

impl EncodeLabelSet for ReasonLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("reason", self.reason).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A retry decision, by the route it was made on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RetryLabels {
    /// Direction (outbound).
    pub direction: Direction,
    /// The service's namespace.
    pub dst_namespace: Arc<str>,
    /// The route (`default` when none matched).
    pub route: Arc<str>,
    /// `retried`, `budget_exhausted`, `attempts_exhausted`, `body_too_large`, `not_idempotent`.
    pub reason: &'static str,
}

impl EncodeLabelSet for RetryLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("dst_namespace", &*self.dst_namespace).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("reason", self.reason).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A circuit breaker's endpoint: the service, the route (empty for the service's breaker) and the
/// endpoint's address (all from the control plane's configuration).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BreakerLabels {
    /// `<service>.<namespace>`.
    pub dst_service: Arc<str>,
    /// The route whose breaker it is; empty: the service's.
    pub route: Arc<str>,
    /// The endpoint's inbound address, `ip:port`.
    pub endpoint: Arc<str>,
}

impl EncodeLabelSet for BreakerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", "outbound").encode(encoder.encode_label())?;
        ("dst_service", &*self.dst_service).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("endpoint", &*self.endpoint).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A breaker's endpoint and one of its states (`healthy`, `failing`, `ejected`, `probation`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BreakerStateLabels {
    /// The endpoint.
    pub endpoint: BreakerLabels,
    /// The state.
    pub state: &'static str,
}

impl EncodeLabelSet for BreakerStateLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.endpoint.encode(encoder)?;
        ("state", self.state).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// An authorization decision's labels (`authz_deny_total` and `authz_allow_total`).
pub type AuthzLabels = DenyLabels;

/// An authorization decision (allowed or denied): the edge, the policy and the kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DenyLabels {
    /// The edge (inbound, with the caller's id if any).
    pub edge: EdgeLabels,
    /// The policy that decided.
    pub policy: Arc<str>,
    /// `http` or `tcp`.
    pub kind: &'static str,
}

impl EncodeLabelSet for DenyLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.edge.encode(encoder)?;
        ("policy", &*self.policy).encode(encoder.encode_label())?;
        ("kind", self.kind).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A request refused by a rate limit: the caller (edge), the policy and its bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LimitLabels {
    /// The edge (inbound, with the caller's verified id if any).
    pub edge: EdgeLabels,
    /// The RateLimitPolicy.
    pub policy: Arc<str>,
    /// `total`, `identity` or `override`.
    pub limit: &'static str,
}

impl EncodeLabelSet for LimitLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.edge.encode(encoder)?;
        ("policy", &*self.policy).encode(encoder.encode_label())?;
        ("limit", self.limit).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// A fault injected: the route that declared it and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultLabels {
    /// Direction (inbound: faults are injected on the serving side).
    pub direction: Direction,
    /// The route's name.
    pub route: Arc<str>,
    /// `abort` or `delay`.
    pub kind: &'static str,
}

impl EncodeLabelSet for FaultLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("kind", self.kind).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// Outcome of a certificate request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// A bounded refusal reason alone (`control_admin_refused_total`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefusalLabels {
    /// The reason.
    pub reason: &'static str,
}

impl EncodeLabelSet for RefusalLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("reason", self.reason).encode(encoder.encode_label())
    }
}

/// The `outcome` label of the decision log's record counter (bounded: see [`crate::audit`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutcomeLabels {
    /// `individual`, `aggregated` or `overflow`.
    pub outcome: &'static str,
}

impl EncodeLabelSet for OutcomeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("outcome", self.outcome).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for ResultLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("result", self.result).encode(encoder.encode_label())
    }
}

/// Bucket bounds of the latency histogram, in seconds: 1 ms to 30 s, 1-2-3-4-5 per decade.
const LATENCY_BUCKETS: [f64; 23] = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0,
    2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Bucket bounds of the TCP connection duration histogram, in seconds: 10 ms to 1 h (a pooled
/// connection lives minutes, a WebSocket hours; `+Inf` holds the rest).
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests started.
    pub request_total: Family<RouteLabels, Counter>,
    /// HTTP responses (or failures) by outcome.
    pub response_total: Family<ResponseLabels, Counter>,
    /// Time to response headers, in seconds.
    pub response_latency_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// TCP connections opened.
    pub tcp_open_total: Family<EdgeLabels, Counter>,
    /// TCP connections closed.
    pub tcp_close_total: Family<EdgeLabels, Counter>,
    /// TCP connections open now.
    pub tcp_open_connections: Family<EdgeLabels, Gauge>,
    /// Bytes read from the accepted peer.
    pub tcp_read_bytes_total: Family<EdgeLabels, Counter>,
    /// Bytes written to the accepted peer.
    pub tcp_write_bytes_total: Family<EdgeLabels, Counter>,
    /// How long each counted connection or stream was open, observed when it closes.
    pub tcp_connection_duration_seconds: Family<EdgeLabels, Histogram, fn() -> Histogram>,
    /// TLS handshakes that failed, by reason.
    pub tls_handshake_failure_total: Family<ReasonLabels, Counter>,
    /// Requests/connections denied by policy.
    pub authz_deny_total: Family<DenyLabels, Counter>,
    /// Requests/connections allowed, by the policy that allowed them.
    pub authz_allow_total: Family<AuthzLabels, Counter>,
    /// Requests/connections denied by policies in audit mode only, let through.
    pub authz_would_deny_total: Family<DenyLabels, Counter>,
    /// Decisions entered in the decision log, by how (`individual`, `aggregated`, `overflow`).
    pub audit_decisions_total: Family<OutcomeLabels, Counter>,
    /// Decision records the control plane acknowledged.
    pub audit_shipped_records_total: Counter,
    /// Decision records waiting to be shipped (one by one, and aggregates).
    pub audit_queue_records: Gauge,
    /// `Audit.Append` calls that failed (each is retried with the same batch).
    pub audit_ship_failures_total: Counter,
    /// Decision records of batches the control plane refused as malformed (never sent again).
    pub audit_rejected_records_total: Counter,
    /// Connections refused by the control-only admin listener, by reason.
    pub control_admin_refused_total: Family<RefusalLabels, Counter>,
    /// Proxy errors by `onemesh-error` reason.
    pub proxy_error_total: Family<ReasonLabels, Counter>,
    /// Outbound retry decisions by route (see [`RetryLabels`]).
    pub retry_total: Family<RetryLabels, Counter>,
    /// Protocol detection outcomes (reason = http1, http2, opaque, timeout, skipped).
    pub detect_total: Family<ReasonLabels, Counter>,
    /// When the current leaf certificate expires (unix seconds).
    pub identity_cert_expiration_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Unix time at which the proxy started: the control plane's window counts a proxy's first
    /// scrape from zero when it started while the window watched.
    pub process_start_time_seconds: Gauge<f64, AtomicU64>,
    /// Certificate requests by result.
    pub identity_certify_total: Family<ResultLabels, Counter>,
    /// Inbound requests refused by a rate limit, per caller.
    pub rate_limited_total: Family<LimitLabels, Counter>,
    /// Faults injected by the inbound, per route and kind.
    pub fault_injected_total: Family<FaultLabels, Counter>,
    /// Circuit breakers' endpoint states (1 for the current state, 0 for the others).
    pub breaker_endpoint_state: Family<BreakerStateLabels, Gauge>,
    /// Circuit breakers' ejections.
    pub breaker_ejection_total: Family<BreakerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            request_total: Family::default(),
            response_total: Family::default(),
            response_latency_seconds: Family::new_with_constructor(latency_histogram),
            tcp_open_total: Family::default(),
            tcp_close_total: Family::default(),
            tcp_open_connections: Family::default(),
            tcp_read_bytes_total: Family::default(),
            tcp_write_bytes_total: Family::default(),
            tcp_connection_duration_seconds: Family::new_with_constructor(duration_histogram),
            tls_handshake_failure_total: Family::default(),
            authz_deny_total: Family::default(),
            authz_allow_total: Family::default(),
            authz_would_deny_total: Family::default(),
            audit_decisions_total: Family::default(),
            audit_shipped_records_total: Counter::default(),
            audit_queue_records: Gauge::default(),
            audit_ship_failures_total: Counter::default(),
            audit_rejected_records_total: Counter::default(),
            control_admin_refused_total: Family::default(),
            proxy_error_total: Family::default(),
            retry_total: Family::default(),
            detect_total: Family::default(),
            identity_cert_expiration_timestamp_seconds: Gauge::default(),
            process_start_time_seconds: Gauge::default(),
            identity_certify_total: Family::default(),
            rate_limited_total: Family::default(),
            fault_injected_total: Family::default(),
            breaker_endpoint_state: Family::default(),
            breaker_ejection_total: Family::default(),
            registry: Registry::default(),
        };
        registry.register("request", "HTTP requests received", m.request_total.clone());
        registry.register(
            "response",
            "HTTP responses sent, by classification and status code",
            m.response_total.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from request to response headers, in seconds",
            m.response_latency_seconds.clone(),
        );
        registry.register(
            "tcp_open",
            "TCP connections opened",
            m.tcp_open_total.clone(),
        );
        registry.register(
            "tcp_close",
            "TCP connections closed",
            m.tcp_close_total.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.tcp_open_connections.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from the accepted side of TCP connections",
            m.tcp_read_bytes_total.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to the accepted side of TCP connections",
            m.tcp_write_bytes_total.clone(),
        );
        registry.register(
            "tcp_connection_duration_seconds",
            "How long TCP connections (and spliced streams) were open, in seconds, observed at close",
            m.tcp_connection_duration_seconds.clone(),
        );
        registry.register(
            "tls_handshake_failure",
            "TLS handshakes that failed, by reason",
            m.tls_handshake_failure_total.clone(),
        );
        registry.register(
            "authz_deny",
            "Inbound requests and connections denied by policy",
            m.authz_deny_total.clone(),
        );
        registry.register(
            "authz_allow",
            "Inbound requests and connections allowed, by the policy that allowed them",
            m.authz_allow_total.clone(),
        );
        registry.register(
            "authz_would_deny",
            "Inbound requests and connections denied by policies in audit mode only, let through",
            m.authz_would_deny_total.clone(),
        );
        registry.register(
            "audit_decisions",
            "Authorization decisions entered in the decision log, by outcome: individual (one record each), aggregated (counted in a per-minute aggregate), overflow (aggregated without the caller: too many keys)",
            m.audit_decisions_total.clone(),
        );
        registry.register(
            "audit_shipped_records",
            "Decision records the control plane acknowledged",
            m.audit_shipped_records_total.clone(),
        );
        registry.register(
            "audit_queue_records",
            "Decision records waiting to be shipped to the control plane",
            m.audit_queue_records.clone(),
        );
        registry.register(
            "audit_ship_failures",
            "Audit.Append calls that failed (the same batch is sent again)",
            m.audit_ship_failures_total.clone(),
        );
        registry.register(
            "audit_rejected_records",
            "Decision records of batches the control plane refused as malformed (dropped, not sent again)",
            m.audit_rejected_records_total.clone(),
        );
        registry.register(
            "control_admin_refused",
            "Connections and requests refused by the control-only admin listener, by reason",
            m.control_admin_refused_total.clone(),
        );
        registry.register(
            "proxy_error",
            "Errors answered by the proxy, by onemesh-error reason",
            m.proxy_error_total.clone(),
        );
        registry.register(
            "retry",
            "Outbound retry decisions by route: retried, or not (budget_exhausted, attempts_exhausted, body_too_large, not_idempotent)",
            m.retry_total.clone(),
        );
        registry.register(
            "detect",
            "Protocol detection outcomes",
            m.detect_total.clone(),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.process_start_time_seconds.set(started);
        registry.register(
            "process_start_time_seconds",
            "Start time of the proxy since the Unix epoch, in seconds",
            m.process_start_time_seconds.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Unix time at which the current leaf certificate expires",
            m.identity_cert_expiration_timestamp_seconds.clone(),
        );
        registry.register(
            "identity_certify",
            "Certificate signing requests sent, by result",
            m.identity_certify_total.clone(),
        );
        registry.register(
            "rate_limited",
            "Inbound requests refused by a rate limit, by caller, policy and limit",
            m.rate_limited_total.clone(),
        );
        registry.register(
            "fault_injected",
            "Faults injected by the inbound, by route and kind (abort, delay)",
            m.fault_injected_total.clone(),
        );
        registry.register(
            "breaker_endpoint_state",
            "Outbound circuit breakers' endpoint states: 1 for the endpoint's current state \
             (healthy, failing, ejected, probation), 0 for the others",
            m.breaker_endpoint_state.clone(),
        );
        registry.register(
            "breaker_ejection",
            "Endpoints ejected by outbound circuit breakers",
            m.breaker_ejection_total.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition (format 0.0.4).
    ///
    /// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
    /// the Prometheus text format (what promtool and most scrapers expect) names the family
    /// `x_total` in `# HELP`/`# TYPE` too, so those lines are rewritten, and `# EOF` dropped.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        if prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry).is_err() {
            return "# metrics encoding failed\n".to_string();
        }
        to_prometheus_text(&open_metrics)
    }

    /// The request counter and latency histogram of `labels`.
    pub fn route(&self, labels: RouteLabels) -> RouteMetrics {
        RouteMetrics {
            requests: self.request_total.get_or_create_owned(&labels),
            latency: self.response_latency_seconds.get_or_create_owned(&labels),
            responses: Arc::default(),
            labels,
        }
    }

    /// Counts an opened connection and returns a guard that counts its close and bytes.
    ///
    /// Every handle is looked up here, once per connection, so the close hashes no label set.
    pub fn open_tcp(&self, labels: EdgeLabels) -> TcpGuard {
        self.tcp_open_total.get_or_create(&labels).inc();
        let open = self.tcp_open_connections.get_or_create_owned(&labels);
        open.inc();
        let counters = ByteCounters {
            read: self.tcp_read_bytes_total.get_or_create_owned(&labels),
            write: self.tcp_write_bytes_total.get_or_create_owned(&labels),
        };
        TcpGuard {
            close: self.tcp_close_total.get_or_create_owned(&labels),
            duration: self
                .tcp_connection_duration_seconds
                .get_or_create_owned(&labels),
            open,
            opened: std::time::Instant::now(),
            counters,
        }
    }

    /// Counts a proxy error.
    pub fn error(&self, direction: Direction, reason: &'static str) {
        self.proxy_error_total
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }
}

/// Rewrites OpenMetrics counter metadata to the Prometheus text format (see [`Metrics::encode`]).
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let lines: Vec<&str> = open_metrics.lines().collect();
    let mut counters = std::collections::HashSet::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(open_metrics.len() + 64);
    for line in lines {
        if line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Counts a TCP connection's close and observes its duration when dropped; holds its byte
/// counters.
#[derive(Debug)]
pub struct TcpGuard {
    close: Counter,
    open: Gauge,
    duration: Histogram,
    opened: std::time::Instant,
    counters: ByteCounters,
}

impl TcpGuard {
    /// The connection's byte counters.
    pub fn counters(&self) -> &ByteCounters {
        &self.counters
    }
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.close.inc();
        self.open.dec();
        self.duration.observe(self.opened.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RouteLabels {
        RouteLabels {
            edge: EdgeLabels {
                direction: Direction::Inbound,
                namespace: "pg".into(),
                workload: "api".into(),
                dst_namespace: "pg".into(),
                dst_workload: "api".into(),
                peer_id: None,
                tls: Tls::NoIdentity,
            },
            route: "default".into(),
        }
    }

    fn count(metrics: &Metrics, status: u16, class: &str) -> Option<u64> {
        let text = metrics.encode();
        let needle = format!("classification=\"{class}\",status_code=\"{status}\"}} ");
        text.lines()
            .find_map(|l| l.split_once(&needle).map(|(_, n)| n.parse().ok()))
            .flatten()
    }

    #[test]
    fn responses_are_counted_per_status_through_every_clone() {
        let metrics = Metrics::new();
        let route = metrics.route(labels());
        let copy = route.clone();
        let now = std::time::Instant::now();
        route.record(&metrics, now, http::StatusCode::OK, Classification::Success);
        copy.record(&metrics, now, http::StatusCode::OK, Classification::Success);
        route.record(
            &metrics,
            now,
            http::StatusCode::BAD_GATEWAY,
            Classification::Failure,
        );
        assert_eq!(count(&metrics, 200, "success"), Some(2));
        assert_eq!(count(&metrics, 502, "failure"), Some(1));
        assert_eq!(count(&metrics, 502, "success"), None);
    }

    #[test]
    fn outcomes_beyond_the_cache_are_still_counted() {
        let metrics = Metrics::new();
        let route = metrics.route(labels());
        let now = std::time::Instant::now();
        for _ in 0..2 {
            for code in 200..200 + 2 * MAX_CACHED_RESPONSES as u16 {
                let status = http::StatusCode::from_u16(code).expect("valid status");
                route.record(&metrics, now, status, Classification::Success);
            }
        }
        for code in 200..200 + 2 * MAX_CACHED_RESPONSES as u16 {
            assert_eq!(count(&metrics, code, "success"), Some(2), "status {code}");
        }
    }
}
