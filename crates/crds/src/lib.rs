//! onemesh-crds: the onemesh custom resources of Kubernetes mode, `AuthorizationPolicy` and
//! `Route` (group `onemesh.dev`, version `v1`, namespaced), as Rust types.
//!
//! Their fields are those of the same kinds in mesh.yaml (`docs/mesh-yaml.md`), and the schemas
//! carry the same validation wherever OpenAPI can say it, so that the API server refuses a bad
//! object at `kubectl apply` instead of the control plane finding it later: ports 1–65535, HTTP
//! methods from a fixed list, path prefixes starting with `/`, SPIFFE ids of the form
//! `spiffe://<td>/ns/<ns>/sa/<sa>`, durations such as `500ms` or `1m30s`, DNS-label names of at
//! most 63 characters (a CEL rule on `metadata.name`), and lists without duplicates.
//!
//! The Rust fields are deliberately loose (strings and integers, not enums): an object the API
//! server stored under an older, laxer schema must still decode, so that the control plane can
//! report what is wrong with it (the `Accepted` condition in `status`) instead of failing to read
//! the whole list. The control plane validates every object again on its own model.
//!
//! `crdgen` (this crate's binary) prints the CustomResourceDefinitions; the committed copies live in
//! `deploy/crds/` and a test fails when they differ from the generated ones.

use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every onemesh resource.
pub const GROUP: &str = "onemesh.dev";
/// The one version served.
pub const VERSION: &str = "v1";
/// The type of the condition the control plane sets on every object it has read.
pub const ACCEPTED: &str = "Accepted";

/// HTTP methods a route may name (the same list as mesh.yaml).
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A DNS-1123 label: namespaces, workloads, services.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub const SPIFFE_ID_PATTERN: &str = "^spiffe://[a-z0-9._-]+/ns/[a-z0-9]([-a-z0-9]*[a-z0-9])?/sa/[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// One or more numbers, each with a unit: `500ms`, `2s`, `1m30s`, `1h`.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// `AuthorizationPolicy`: who may call a namespace, a workload, or one of its ports.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "onemesh.dev",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "ResourceStatus",
    shortname = "authz",
    category = "onemesh",
    doc = "Who may call a namespace, a workload or one of its ports (DESIGN.md: deny between namespaces unless allowed).",
    printcolumn(name = "Workload", type_ = "string", json_path = ".spec.target.workload", description = "target workload (empty: every workload of the namespace)"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.target.port", description = "target port (empty: every port)"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode", description = "enforce (empty) or audit"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status", description = "whether the control plane uses it"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message("metadata.name: use at most 63 characters (a DNS label)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: use lower-case letters, digits and '-', starting and ending with a letter or digit"),
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// What is protected; absent: every workload and port of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Requests allowed: any one match is enough; absent: every request (and TCP connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<PolicyRoute>>,
    /// Callers allowed: any one of the three is enough; `from: {}` allows nobody.
    pub from: From,
    /// `enforce` (default) refuses what the policies on a port deny; `audit` lets it through,
    /// counted and logged as `would_deny`. One enforce policy on a port keeps denials enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mode_schema")]
    pub mode: Option<String>,
}

/// The modes a policy (or a namespace's default) may have.
pub const POLICY_MODES: [&str; 2] = ["enforce", "audit"];

/// The Namespace annotation that sets the mode of its default (`enforce` when absent): `audit`
/// lets the callers the default would deny (other namespaces, unauthenticated) through as
/// `would_deny`.
pub const DEFAULT_POLICY_MODE_ANNOTATION: &str = "onemesh.dev/default-policy-mode";

/// A gRPC service name as in the .proto: dotted identifiers, `pkg.v1.Service`.
pub const GRPC_SERVICE_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$";
/// A gRPC method name: one identifier.
pub const GRPC_METHOD_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// One entry of an AuthorizationPolicy's `routes`: methods and a path prefix, or a gRPC service
/// (and method), which stands for `POST /<service>/<method>` (not both in one entry).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.grpc) || (!has(self.methods) && !has(self.pathPrefix))",
    "message": "grpc cannot be combined with methods or pathPrefix in the same route: write two route entries",
}]))]
pub struct PolicyRoute {
    /// Upper-case HTTP methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Option<Vec<String>>,
    /// A path prefix starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path_prefix: Option<String>,
    /// A gRPC service, or one of its methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
}

/// `grpc` of a policy route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMatch {
    /// The full service name, e.g. `pay.v1.Payments`.
    #[schemars(length(min = 1, max = 512), regex(pattern = GRPC_SERVICE_PATTERN))]
    pub service: String,
    /// One rpc of the service, e.g. `Authorize`; absent: every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = GRPC_METHOD_PATTERN))]
    pub method: Option<String>,
}

/// `spec.target` of an AuthorizationPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// A workload of the policy's namespace (a Deployment, StatefulSet, DaemonSet or Job, or a
    /// bare Pod); absent: every workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub workload: Option<String>,
    /// A container port of the target; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// An HTTP request match: methods (any if absent) and a path prefix (any if absent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Upper-case HTTP methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Option<Vec<String>>,
    /// A path prefix starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path_prefix: Option<String>,
}

/// `spec.from` of an AuthorizationPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct From {
    /// SPIFFE ids, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "identities_schema")]
    pub identities: Option<Vec<String>>,
    /// Meshed namespaces: any meshed caller from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespaces_schema")]
    pub namespaces: Option<Vec<String>>,
    /// `true` also allows callers without a mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
}

/// `Route`: per-request settings the caller's proxy applies to requests to a service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "onemesh.dev",
    version = "v1",
    kind = "Route",
    namespaced,
    status = "ResourceStatus",
    category = "onemesh",
    doc = "Per-request settings (timeout, retryability) for requests to a Service that match.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Timeout", type_ = "string", json_path = ".spec.timeout"),
    printcolumn(name = "Retryable", type_ = "boolean", json_path = ".spec.retryable"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status", description = "whether the control plane uses it"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message("metadata.name: use at most 63 characters (a DNS label)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: use lower-case letters, digits and '-', starting and ending with a letter or digit"),
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// A Service of the route's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub service: String,
    /// Requests this route applies to; absent: every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<HttpMatch>,
    /// Whole-request timeout, e.g. `500ms`, `2s`, `1m30s`; absent or `0s`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// `true`: a failed request may be retried even if its method is not idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Where matched requests go, split by weight (a canary); absent: the route's service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backends: Vec<Backend>,
    /// How failed requests are retried; absent: 2 attempts on connect failures, 502, 503, 504
    /// and gRPC unavailable, for idempotent requests and those carrying `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Faults the inbound proxies behind the service (and backends) inject into matched
    /// requests, to test how callers cope; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<RouteFault>,
    /// The route's own circuit breaker: it counts only this route's requests and keeps its own
    /// endpoint states; absent: the Service's breaker (annotation `onemesh.dev/circuit-breaker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// A Route's fault injection: an abort, a delay or both, optionally only for requests with a
/// header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteFault {
    /// Answer matched requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Hold matched requests before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Only requests carrying this header (and value, if given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<FaultHeader>,
}

/// `fault.abort`: exactly one of `httpStatus` and `grpcStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// An HTTP status, 400-599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub http_status: Option<u16>,
    /// A gRPC status code, 1-16 (answered as gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub grpc_status: Option<u32>,
    /// Share of matched requests, 0-100 (absent: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<f64>,
}

/// `fault.delay`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long, e.g. `3s`.
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub duration: String,
    /// Share of matched requests, 0-100 (absent: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<f64>,
}

/// `fault.header`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultHeader {
    /// A header name, e.g. `x-fault`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Its value; absent: any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `spec.retry` of a Route (every field optional; see docs/mesh-yaml.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts in all, the first included (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<u32>,
    /// What is retried: `connect-failure`, `5xx`, `gateway-error`, a status `"400"`-`"599"`,
    /// or a gRPC status `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`,
    /// `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub on: Option<Vec<String>>,
    /// Each attempt's own deadline, e.g. `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub per_try_timeout: Option<String>,
    /// The header that makes a non-idempotent request retryable (default `Idempotency-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z0-9_-]+$"))]
    pub idempotency_header: Option<String>,
    /// Bodies up to this size are kept to be sent again (default 65536, at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1_048_576))]
    pub max_body_bytes: Option<u32>,
    /// Retries allowed: `percent` of requests (default 20) plus `minPerSecond` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// `spec.retry.budget` of a Route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000))]
    pub min_per_second: Option<u32>,
}

/// The annotation on a Service that gives it a circuit breaker: a JSON object with the fields of
/// [`CircuitBreaker`], e.g. `{"consecutiveFailures": 5}`.
pub const CIRCUIT_BREAKER_ANNOTATION: &str = "onemesh.dev/circuit-breaker";

/// A circuit breaker: when a caller's proxy ejects an endpoint, and for how long. At least one
/// of `consecutiveFailures` and `successRate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Eject an endpoint after this many failures in a row (1-1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<i64>,
    /// Eject an endpoint whose success rate falls below a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    /// The first ejection, doubled for each ejection in a row (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub base_ejection: Option<String>,
    /// The longest ejection (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub max_ejection: Option<String>,
    /// The most endpoints ejected at once, percent (1-100, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<i64>,
}

/// The success-rate rule of a [`CircuitBreaker`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRate {
    /// The lowest acceptable success rate, percent (above 0, at most 100, e.g. `99.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent: Option<serde_json::Number>,
    /// The sliding window it is measured over (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    pub window: Option<String>,
    /// Fewer requests than this in the window never trip the rule (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub min_requests: Option<i64>,
}

/// One backend of a Route: a Service of the route's namespace and its relative weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// A Service of the route's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub service: String,
    /// Relative weight, 0-1000000 (absent: 1); the share is weight / sum of weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub weight: Option<u32>,
}

/// `RateLimitPolicy`: token buckets on a workload's inbound proxies (each replica its own).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "onemesh.dev",
    version = "v1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "ResourceStatus",
    shortname = "ratelimit",
    category = "onemesh",
    doc = "Rate limits on a workload's inbound proxies: in total, per caller identity, and overrides for named callers (429 with Retry-After).",
    printcolumn(name = "Workload", type_ = "string", json_path = ".spec.target.workload"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.target.port", description = "target port (empty: every port)"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status", description = "whether the control plane uses it"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message("metadata.name: use at most 63 characters (a DNS label)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: use lower-case letters, digits and '-', starting and ending with a letter or digit"),
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// The workload (and optionally one of its ports) limited.
    pub target: RateLimitTarget,
    /// The requests limited (methods, path prefix); absent: every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<HttpMatch>,
    /// Every caller together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<RateSpec>,
    /// Each caller identity on its own bucket (callers without one share a bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<RateSpec>,
    /// Other per-caller rates for named callers, who share the override's bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub overrides: Vec<RateOverride>,
}

/// `spec.target` of a RateLimitPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitTarget {
    /// A workload of the policy's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub workload: String,
    /// A container port of the workload; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// A token bucket's rate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateSpec {
    /// Sustained requests per second, 1-1000000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_second: i64,
    /// Requests that may come at once, 1-1000000 (absent: `requestsPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<i64>,
}

/// One override of a RateLimitPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateOverride {
    /// Sustained requests per second, 1-1000000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_second: i64,
    /// Requests that may come at once (absent: `requestsPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<i64>,
    /// The callers: SPIFFE ids and namespaces (at least one entry).
    pub from: RateFrom,
}

/// `overrides[].from`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateFrom {
    /// SPIFFE ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "identities_schema")]
    pub identities: Option<Vec<String>>,
    /// Namespaces: any meshed caller from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespaces_schema")]
    pub namespaces: Option<Vec<String>>,
}

/// The status the control plane writes on each object: one `Accepted` condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A condition in the shape of `meta/v1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(schema_with = "condition_status_schema")]
    pub status: String,
    /// One CamelCase word: `Valid`, `Invalid`, …
    pub reason: String,
    /// What is wrong and what to do, or empty.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

fn string_list(items: serde_json::Value) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "items": items,
    })
}

fn methods_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_list(serde_json::json!({"type": "string", "enum": HTTP_METHODS}))
}

fn identities_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_list(serde_json::json!({
        "type": "string",
        "maxLength": 2048,
        "pattern": SPIFFE_ID_PATTERN,
    }))
}

fn namespaces_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_list(serde_json::json!({
        "type": "string",
        "maxLength": 63,
        "pattern": DNS_LABEL_PATTERN,
    }))
}

fn mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": POLICY_MODES})
}

fn condition_status_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["True", "False", "Unknown"]})
}

/// Why the CRD YAML could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(
        "cannot write the CustomResourceDefinition {name} as yaml: {source}; this is a bug in onemesh-crds"
    )]
    Yaml {
        name: &'static str,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// Every CRD of onemesh: the file name under `deploy/crds/` and its YAML.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, CrdError> {
    let crds = [
        ("authorizationpolicies.yaml", AuthorizationPolicy::crd()),
        ("routes.yaml", Route::crd()),
        ("ratelimitpolicies.yaml", RateLimitPolicy::crd()),
    ];
    crds.into_iter()
        .map(|(name, crd)| {
            let yaml = serde_saphyr::to_string(&crd)
                .map_err(|source| CrdError::Yaml { name, source })?;
            Ok((
                name,
                format!("# Generated by `cargo run -p onemesh-crds --bin crdgen -- deploy/crds`: do not edit.\n{yaml}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
