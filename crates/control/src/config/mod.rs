//! mesh.yaml: the declarative description of a local mesh, parsed and validated into [`MeshConfig`].
//!
//! The file holds Kubernetes-shaped resources (`apiVersion: onemesh.dev/v1`, `kind`,
//! `metadata.{name,namespace}`, `spec`) separated by `---`: Namespace, Workload, Service,
//! AuthorizationPolicy, Route and RateLimitPolicy (the last, and a Route's `fault`, in
//! [`traffic`]). `docs/mesh-yaml.md` is the reference of every field.
//!
//! Validation reports every problem at once, each as `file:line: field.path: what is wrong` (see
//! [`FieldError`]): unknown kinds and fields, missing fields, wrong types, bad ports, names,
//! durations, methods and SPIFFE ids, duplicates, and references to namespaces, workloads, services
//! or ports that are not declared. Resources are checked in dependency order (namespaces, then
//! workloads, services, policies and routes), so a reference may point forward in the file.
//!
//! This module only reads text: it does no I/O besides [`load`] reading the one file, and knows
//! nothing of endpoints or tokens (see [`crate::local`]).

mod traffic;
/// The value checks of a Route's fault and of RateLimitPolicy, for every source.
pub mod traffic_check {
    pub use super::traffic::{
        check_fault, check_grpc_status, check_header_name, check_header_value, check_http_status,
        check_limits, check_percent, check_rate,
    };
}
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use onemesh_identity::{IdError, SpiffeId};
use saphyr::{LoadableYamlNode, MarkedYamlOwned};

use crate::model::check::{self, HTTP_METHODS, is_dns_label};
pub use traffic::{
    AbortStatus, Fault, FaultAbort, FaultDelay, FaultHeader, Percent, Rate, RateLimitPolicy,
    RateLimits, RateOverride,
};
use yaml::{Errors, Map, Node};

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "onemesh.dev/v1";

/// The kinds of resource mesh.yaml may hold, in the order they are checked (each may refer to
/// the kinds before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Workload,
    Service,
    AuthorizationPolicy,
    Route,
    RateLimitPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Workload,
        Kind::Service,
        Kind::AuthorizationPolicy,
        Kind::Route,
        Kind::RateLimitPolicy,
    ];

    /// The name written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Workload => "Workload",
            Kind::Service => "Service",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Route => "Route",
            Kind::RateLimitPolicy => "RateLimitPolicy",
        }
    }
}

/// Why mesh.yaml could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: yaml syntax error: {message}; fix the yaml syntax", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}", FieldErrors(errors))]
    Invalid { errors: Vec<FieldError> },
}

struct FieldErrors<'a>(&'a [FieldError]);

impl fmt::Display for FieldErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// One problem in mesh.yaml, at a line and a field path such as `spec.ports[1].port`.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// Dotted path of the field within its resource; empty for the document itself.
    pub field: String,
    pub problem: Problem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.problem)
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    #[error(
        "unknown kind {0:?}: use one of Namespace, Workload, Service, AuthorizationPolicy, Route, RateLimitPolicy"
    )]
    UnknownKind(String),
    #[error("unsupported apiVersion {0:?}: use onemesh.dev/v1")]
    BadApiVersion(String),
    #[error("unknown field: use one of {expected}")]
    UnknownField { expected: String },
    #[error("missing required field")]
    MissingField,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("yaml tags and aliases are not supported: write the value out")]
    Unsupported,
    #[error("{value} is not a port: use 1-65535")]
    BadPort { value: i64 },
    #[error(
        "{0:?} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    BadName(String),
    #[error("duplicate {kind} {name} (first declared at line {first_line}): rename one")]
    DuplicateResource {
        kind: &'static str,
        name: String,
        first_line: usize,
    },
    #[error("duplicate port {port} in {owner}")]
    DuplicatePort { port: u16, owner: String },
    #[error("duplicate port name {name:?} in {owner}")]
    DuplicatePortName { name: String, owner: String },
    #[error("unknown namespace {0:?}: declare it with a Namespace resource")]
    UnknownNamespace(String),
    #[error("unknown workload {0}: declare it with a Workload resource in that namespace")]
    UnknownWorkload(String),
    #[error("unknown service {0}: declare it with a Service resource in that namespace")]
    UnknownService(String),
    #[error("port {port} is not declared by workload {workload}: add it to its spec.ports")]
    UndeclaredPort { port: u16, workload: String },
    #[error("no workload in namespace {namespace:?} declares port {port}")]
    PortNotInNamespace { port: u16, namespace: String },
    #[error("port name {name:?} is not declared by workload {workload}")]
    UndeclaredPortName { name: String, workload: String },
    #[error("selects no workload in namespace {0:?}: match the labels of a Workload")]
    SelectsNothing(String),
    #[error("empty list: give at least one entry")]
    Empty,
    #[error("{value:?} is not a spiffe id: {source}")]
    BadSpiffeId {
        value: String,
        #[source]
        source: IdError,
    },
    #[error(
        "{0:?} is not a duration: use a number with a unit (ms, s, m, h), e.g. 500ms, 2s, 1m30s"
    )]
    BadDuration(String),
    #[error("{0:?} is not an http method: use upper case, e.g. GET, POST")]
    BadMethod(String),
    #[error("{0:?} is not a path prefix: start it with '/'")]
    BadPathPrefix(String),
    #[error("{0:?} is not a protocol: use http or opaque")]
    BadProtocol(String),
    #[error("{0:?} is not an address: use ip:port, e.g. 127.0.0.1:8000")]
    BadAddress(String),
    #[error("cannot be read ({0}): fix the object's fields (see docs/mesh-yaml.md)")]
    Undecodable(String),
    #[error("weight {0} is out of range: use 0-1000000")]
    BadWeight(i64),
    #[error("backend {0:?} is listed twice: merge the entries into one weight")]
    DuplicateBackend(String),
    #[error("every backend has weight 0: give at least one a positive weight")]
    NoWeight,
    #[error(
        "{0:?} is not a retry condition: use connect-failure, 5xx, gateway-error, a status 400-599, or a gRPC status: cancelled, deadline-exceeded, resource-exhausted, internal, unavailable"
    )]
    BadRetryOn(String),
    #[error("{0:?} is not a header name: use letters, digits and '-', e.g. Idempotency-Key")]
    BadIdempotencyHeader(String),
    #[error(
        "namespace {0:?} is reserved for the control plane (its identity lives there): use another name"
    )]
    ReservedNamespace(String),
    #[error("{0:?} is not a percentage: use a number from 0 to 100, e.g. 30 or 0.5")]
    BadPercent(String),
    #[error("{0} is not an http status for an abort: use 400-599, e.g. 503")]
    BadAbortStatus(i64),
    #[error("{0} is not a grpc status for an abort: use 1-16, e.g. 14 (UNAVAILABLE)")]
    BadGrpcStatus(i64),
    #[error("give exactly one of httpStatus and grpcStatus")]
    AbortStatusChoice,
    #[error("a fault needs something to inject: give abort, delay or both")]
    EmptyFault,
    #[error(
        "{0:?} is not a header name to match: use a token such as x-fault (onemesh- headers are the mesh's own)"
    )]
    BadHeaderName(String),
    #[error("{0:?} is not a header value: use visible ascii characters")]
    BadHeaderValue(String),
    #[error("{0} is out of range: use 1-1000000 requests")]
    BadRate(i64),
    #[error("a rate limit policy needs a limit: give total, identity or overrides")]
    NoLimit,
    #[error("{value} is out of range: use {range}")]
    OutOfRange { value: String, range: &'static str },
    #[error(
        "a circuit breaker needs a rule: set consecutiveFailures, successRate, or both (see docs/mesh-yaml.md)"
    )]
    NoBreakerRule,
    #[error("maxEjection {max:?} is shorter than baseEjection {base:?}: make it at least as long")]
    EjectionOrder { base: Duration, max: Duration },
    #[error("{0:?} is not a policy mode: use enforce or audit")]
    BadMode(String),
    #[error(
        "{0:?} is not a grpc service name: use its full dotted name as in the .proto, e.g. pay.v1.Payments"
    )]
    BadGrpcService(String),
    #[error("{0:?} is not a grpc method name: use the rpc's name as in the .proto, e.g. Authorize")]
    BadGrpcMethod(String),
    #[error(
        "grpc cannot be combined with methods or pathPrefix in the same route: it stands for POST /<service>/<method>; write two route entries"
    )]
    GrpcWithHttpMatch,
}

/// How a workload port speaks: HTTP (detected as HTTP/1 or HTTP/2) or opaque TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Http,
    Opaque,
}

/// What a policy denial does: `enforce` refuses the request; `audit` lets it through, counted and
/// logged as `would_deny` (a dry run before enforcing). The default is `enforce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

impl PolicyMode {
    /// As written in mesh.yaml, the CRD and the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata` of a resource, and the line where the resource starts (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    /// Empty for a Namespace.
    pub namespace: String,
    pub line: usize,
}

/// `kind: Namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub meta: Meta,
    /// `spec.defaultPolicyMode`: the mode of the default (same namespace allowed, others denied)
    /// on the ports of its workloads that no policy covers.
    pub default_mode: PolicyMode,
}

/// `kind: Workload`: a program with an identity (its service account) and the ports it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub meta: Meta,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The program and its arguments (local mode); empty when not given.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<WorkloadPort>,
    /// `spec.accessLog: json`: its proxy writes one JSON line per request (masked as tap is) on
    /// its standard output; off by default.
    pub access_log: bool,
}

/// One port of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// `kind: Service`: a stable name over the workloads its selector matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub meta: Meta,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// Local mode: an address on this machine where `onemesh up` exposes the service's first port
    /// (the platform's public entry), e.g. `127.0.0.1:8000`.
    pub expose: Option<std::net::SocketAddr>,
    /// The circuit breaker callers apply to the service's endpoints.
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// One port of a service and the workload port it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
}

/// A service's `targetPort`: a workload port number or the name of a workload port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// HTTP request match: methods (any if empty) and a path prefix (any if `None`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpMatch {
    pub methods: Vec<String>,
    pub path_prefix: Option<String>,
}

/// `kind: AuthorizationPolicy`: who may call a namespace, a workload, or one of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    /// `None`: every workload of the namespace.
    pub target_workload: Option<String>,
    /// `None`: every port of the target.
    pub target_port: Option<u16>,
    /// Empty: every request.
    pub routes: Vec<HttpMatch>,
    pub from_identities: Vec<SpiffeId>,
    pub from_namespaces: Vec<String>,
    pub from_unauthenticated: bool,
    /// `spec.mode`.
    pub mode: PolicyMode,
}

/// `kind: Route`: per-request settings for requests to a service that match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub meta: Meta,
    pub service: String,
    pub matches: HttpMatch,
    pub rules: RouteRules,
}

/// What a route does to the requests it matches: the same whether it comes from mesh.yaml, a
/// `Route` object or a Gateway API `HTTPRoute`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RouteRules {
    /// Over every attempt; `None`: no timeout.
    pub timeout: Option<Duration>,
    /// A failed request may be retried even if its method is not idempotent.
    pub retryable: bool,
    /// Where matched requests go, split by weight; empty: the route's own service.
    pub backends: Vec<Backend>,
    /// How failed requests are retried (`None`: the defaults of [`Retry`]).
    pub retry: Option<Retry>,
    /// Faults the inbound proxies behind the route's service (and backends) inject; `None`: none.
    pub fault: Option<Fault>,
    /// The route's own circuit breaker (it counts only this route's requests).
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// How a route's failed requests are retried. A non-idempotent request is retried only when it
/// carries the idempotency header or its route is `retryable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// What is retried.
    pub on: Vec<RetryOn>,
    /// Each attempt's own deadline (`None`: only the route's timeout).
    pub per_try_timeout: Option<Duration>,
    /// The header (lower case) that makes a non-idempotent request retryable.
    pub idempotency_header: String,
    /// Bodies up to this size are kept to be sent again; larger ones are not retried.
    pub max_body_bytes: u32,
    /// Retries allowed, in percent of requests…
    pub budget_percent: u32,
    /// …plus this many per second, whatever the traffic.
    pub budget_min_per_second: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: RetryOn::DEFAULT.to_vec(),
            per_try_timeout: None,
            idempotency_header: "idempotency-key".into(),
            max_body_bytes: 64 * 1024,
            budget_percent: 20,
            budget_min_per_second: 10,
        }
    }
}

/// One condition a retry follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    /// No answer: connect, TLS or the connection failed (and a per-try timeout).
    ConnectFailure,
    /// An HTTP status, 400-599.
    Status(u16),
    /// A gRPC status code, 1-16.
    Grpc(u8),
}

impl RetryOn {
    /// `connect-failure`, 502, 503, 504 and gRPC `unavailable`.
    pub const DEFAULT: [RetryOn; 5] = [
        RetryOn::ConnectFailure,
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
        RetryOn::Grpc(14),
    ];
}

/// A circuit breaker of a service or a route: when a caller's proxy ejects an endpoint, and for
/// how long (docs/mesh-yaml.md, "Circuit breakers").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Eject after this many failures in a row; 0: rule off.
    pub consecutive_failures: u32,
    /// Eject when the success rate falls below a threshold.
    pub success_rate: Option<SuccessRate>,
    /// The first ejection (doubled for each ejection in a row).
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The most endpoints ejected at once, percent (1-100).
    pub max_ejection_percent: u32,
}

/// The success-rate rule of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessRate {
    /// The lowest acceptable success rate, per mille (1-1000).
    pub min_permille: u32,
    /// The sliding window it is measured over.
    pub window: Duration,
    /// Below this many requests in the window the rule does not trip.
    pub min_requests: u32,
}

/// One backend of a route: a service of the route's namespace and its share of requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    /// Relative weight (0 sends nothing; the shares are weight / sum of weights).
    pub weight: u32,
}

/// A valid mesh.yaml. Maps are keyed by `(namespace, name)`; policies and routes keep file order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MeshConfig {
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: BTreeMap<(String, String), Workload>,
    pub services: BTreeMap<(String, String), Service>,
    pub policies: Vec<AuthorizationPolicy>,
    pub routes: Vec<Route>,
    pub rate_limits: Vec<RateLimitPolicy>,
}

impl MeshConfig {
    /// Workloads of `namespace` whose labels include every `selector` pair.
    pub fn selected<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads
            .values()
            .filter(move |w| w.meta.namespace == namespace)
            .filter(move |w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    }
}

/// Reads and validates a mesh.yaml file.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validates mesh.yaml text; `file` is only used in messages.
pub fn parse(file: &Path, text: &str) -> Result<MeshConfig, ConfigError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    let mut errors = Errors::new(file);
    let mut by_kind: BTreeMap<Kind, Vec<Resource<'_>>> = BTreeMap::new();
    for doc in &docs {
        let node = Node::root(doc);
        if node.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        if let Some(resource) = header(&mut errors, node) {
            by_kind.entry(resource.kind).or_default().push(resource);
        }
    }
    let mut mesh = Parse::default();
    for (kind, resources) in by_kind {
        for r in resources {
            match kind {
                Kind::Namespace => namespace(&mut errors, &mut mesh, r),
                Kind::Workload => workload(&mut errors, &mut mesh, r),
                Kind::Service => service(&mut errors, &mut mesh, r),
                Kind::AuthorizationPolicy => policy(&mut errors, &mut mesh, r),
                Kind::Route => route(&mut errors, &mut mesh, r),
                Kind::RateLimitPolicy => traffic::rate_limit_policy(&mut errors, &mut mesh, r),
            }
        }
    }
    let errors = errors.into_sorted();
    if errors.is_empty() {
        Ok(mesh.config)
    } else {
        Err(ConfigError::Invalid { errors })
    }
}

/// The mesh being read, and the workloads whose ports could not all be read (their ports are not
/// checked against references, which would only repeat the first error).
#[derive(Default)]
struct Parse {
    config: MeshConfig,
    incomplete: std::collections::BTreeSet<(String, String)>,
}

impl std::ops::Deref for Parse {
    type Target = MeshConfig;
    fn deref(&self) -> &MeshConfig {
        &self.config
    }
}

impl std::ops::DerefMut for Parse {
    fn deref_mut(&mut self) -> &mut MeshConfig {
        &mut self.config
    }
}

impl Parse {
    fn complete(&self, w: &Workload) -> bool {
        !self
            .incomplete
            .contains(&(w.meta.namespace.clone(), w.meta.name.clone()))
    }
}

/// A document whose header (apiVersion, kind, metadata) is valid.
struct Resource<'y> {
    kind: Kind,
    meta: Meta,
    /// The node of `metadata.namespace`, for errors about it.
    namespace_node: Option<Node<'y>>,
    spec: Option<Node<'y>>,
}

fn header<'y>(errors: &mut Errors, doc: Node<'y>) -> Option<Resource<'y>> {
    let map = doc.map(errors, &["apiVersion", "kind", "metadata", "spec"])?;
    let api = map.required(errors, "apiVersion");
    if let Some(api) = api
        && let Some(value) = api.str(errors)
        && value != API_VERSION
    {
        errors.push(api.line(), &api.path, Problem::BadApiVersion(value.into()));
    }
    let kind_node = map.required(errors, "kind")?;
    let kind_name = kind_node.str(errors)?;
    let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_name) else {
        errors.push(
            kind_node.line(),
            &kind_node.path,
            Problem::UnknownKind(kind_name.into()),
        );
        return None;
    };
    let is_namespace = kind == Kind::Namespace;
    let metadata = map.required(errors, "metadata")?;
    let allowed: &'static [&'static str] = if is_namespace {
        &["name"]
    } else {
        &["name", "namespace"]
    };
    let metadata = metadata.map(errors, allowed)?;
    let name_node = metadata.required(errors, "name")?;
    let name = dns_name(errors, &name_node)?;
    let (namespace, namespace_node) = if is_namespace {
        (String::new(), None)
    } else {
        let node = metadata.required(errors, "namespace")?;
        (dns_name(errors, &node)?, Some(node))
    };
    let spec = map.optional("spec");
    if spec.is_none() && !is_namespace {
        map.required(errors, "spec");
        return None;
    }
    Some(Resource {
        kind,
        meta: Meta {
            name,
            namespace,
            line: doc.line(),
        },
        namespace_node,
        spec,
    })
}

fn dns_name(errors: &mut Errors, node: &Node<'_>) -> Option<String> {
    let s = node.str(errors)?;
    if is_dns_label(s) {
        Some(s.to_string())
    } else {
        errors.push(node.line(), &node.path, Problem::BadName(s.into()));
        None
    }
}

/// Checks that the resource's namespace is declared; returns false (and reports) if not.
fn namespace_known(errors: &mut Errors, mesh: &Parse, r: &Resource<'_>) -> bool {
    if mesh.namespaces.contains_key(&r.meta.namespace) {
        return true;
    }
    let line = r.namespace_node.as_ref().map_or(r.meta.line, Node::line);
    errors.push(
        line,
        "metadata.namespace",
        Problem::UnknownNamespace(r.meta.namespace.clone()),
    );
    false
}

fn duplicate(errors: &mut Errors, kind: &'static str, r: &Resource<'_>, first: &Meta) {
    let name = if r.meta.namespace.is_empty() {
        r.meta.name.clone()
    } else {
        format!("{}/{}", r.meta.namespace, r.meta.name)
    };
    errors.push(
        r.meta.line,
        "metadata.name",
        Problem::DuplicateResource {
            kind,
            name,
            first_line: first.line,
        },
    );
}

fn namespace(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    let mut default_mode = PolicyMode::Enforce;
    if let Some(spec) = r
        .spec
        .as_ref()
        .and_then(|s| s.map(errors, &["defaultPolicyMode"]))
        && let Some(n) = spec.optional("defaultPolicyMode")
        && let Some(mode) = policy_mode(errors, &n)
    {
        default_mode = mode;
    }
    if r.meta.name == crate::pki::CONTROL_NAMESPACE {
        // A workload there could be issued the control plane's own id and answer in its place.
        errors.push(
            r.meta.line,
            "metadata.name",
            Problem::ReservedNamespace(r.meta.name.clone()),
        );
    }
    if let Some(first) = mesh.namespaces.get(&r.meta.name) {
        duplicate(errors, "Namespace", &r, &first.meta.clone());
        return;
    }
    mesh.namespaces.insert(
        r.meta.name.clone(),
        Namespace {
            meta: r.meta,
            default_mode,
        },
    );
}

/// `enforce` or `audit`, reported at the node otherwise.
fn policy_mode(errors: &mut Errors, n: &Node<'_>) -> Option<PolicyMode> {
    let text = n.str(errors)?;
    check::mode(text)
        .map_err(|p| errors.push(n.line(), &n.path, p))
        .ok()
}

fn workload(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    namespace_known(errors, mesh, &r);
    let Some(spec) = r.spec.as_ref().and_then(|s| {
        s.map(
            errors,
            &[
                "serviceAccount",
                "labels",
                "command",
                "env",
                "ports",
                "accessLog",
            ],
        )
    }) else {
        return;
    };
    let access_log = match spec.optional("accessLog") {
        None => false,
        Some(n) => match n.str(errors) {
            Some("json") => true,
            Some("off") => false,
            Some(other) => {
                errors.push(
                    n.line(),
                    &n.path,
                    Problem::OutOfRange {
                        value: other.to_string(),
                        range: "json or off",
                    },
                );
                false
            }
            None => false,
        },
    };
    let owner = format!("workload {}/{}", r.meta.namespace, r.meta.name);
    let service_account = spec
        .required(errors, "serviceAccount")
        .and_then(|n| dns_name(errors, &n));
    let labels = match spec.optional("labels") {
        Some(n) => n.string_map(errors),
        None => Some(BTreeMap::new()),
    };
    let env = match spec.optional("env") {
        Some(n) => n.string_map(errors),
        None => Some(BTreeMap::new()),
    };
    let command = match spec.optional("command") {
        Some(n) => n.str_list(errors).and_then(|list| {
            if list.is_empty() {
                errors.push(n.line(), &n.path, Problem::Empty);
                None
            } else {
                Some(list.into_iter().map(|(s, _)| s).collect())
            }
        }),
        None => Some(Vec::new()),
    };
    let before = errors.len();
    let ports = spec
        .required(errors, "ports")
        .map(|n| workload_ports(errors, &n, &owner))
        .unwrap_or_default();
    if errors.len() != before {
        mesh.incomplete
            .insert((r.meta.namespace.clone(), r.meta.name.clone()));
    }
    // Even when something above was wrong, the workload is declared: record what could be read
    // so that references to it do not add misleading "unknown workload" errors. A file with
    // errors is refused as a whole anyway.
    let key = (r.meta.namespace.clone(), r.meta.name.clone());
    if let Some(first) = mesh.workloads.get(&key) {
        duplicate(errors, "Workload", &r, &first.meta.clone());
        return;
    }
    mesh.workloads.insert(
        key,
        Workload {
            meta: r.meta,
            service_account: service_account.unwrap_or_default(),
            labels: labels.unwrap_or_default(),
            command: command.unwrap_or_default(),
            env: env.unwrap_or_default(),
            ports,
            access_log,
        },
    );
}

/// The valid ports of a workload; the invalid ones are reported and left out.
fn workload_ports(errors: &mut Errors, node: &Node<'_>, owner: &str) -> Vec<WorkloadPort> {
    let Some(items) = node.seq(errors) else {
        return Vec::new();
    };
    let mut ports: Vec<WorkloadPort> = Vec::new();
    for item in items {
        let Some(map) = item.map(errors, &["name", "port", "protocol"]) else {
            continue;
        };
        let name = map.optional("name").and_then(|n| {
            let name = dns_name(errors, &n)?;
            if ports.iter().any(|p| p.name.as_deref() == Some(&name)) {
                errors.push(
                    n.line(),
                    &n.path,
                    Problem::DuplicatePortName {
                        name,
                        owner: owner.to_string(),
                    },
                );
                return None;
            }
            Some(name)
        });
        let port = map.required(errors, "port").and_then(|n| {
            let port = n.port(errors)?;
            if ports.iter().any(|p| p.port == port) {
                errors.push(
                    n.line(),
                    &n.path,
                    Problem::DuplicatePort {
                        port,
                        owner: owner.to_string(),
                    },
                );
                return None;
            }
            Some(port)
        });
        let protocol = match map.optional("protocol") {
            None => Some(Protocol::Http),
            Some(n) => match n.str(errors) {
                Some("http") => Some(Protocol::Http),
                Some("opaque") => Some(Protocol::Opaque),
                Some(other) => {
                    errors.push(n.line(), &n.path, Problem::BadProtocol(other.into()));
                    None
                }
                None => None,
            },
        };
        let named = map.optional("name").is_none() || name.is_some();
        if let (Some(port), Some(protocol), true) = (port, protocol, named) {
            ports.push(WorkloadPort {
                name,
                port,
                protocol,
            });
        }
    }
    ports
}

fn service(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    let ns_ok = namespace_known(errors, mesh, &r);
    let Some(spec) = r
        .spec
        .as_ref()
        .and_then(|s| s.map(errors, &["selector", "ports", "expose", "circuitBreaker"]))
    else {
        return;
    };
    let namespace = r.meta.namespace.clone();
    let owner = format!("service {namespace}/{}", r.meta.name);
    let selector_node = spec.required(errors, "selector");
    let selector = selector_node.as_ref().and_then(|n| {
        let map = n.string_map(errors)?;
        if map.is_empty() {
            errors.push(n.line(), &n.path, Problem::Empty);
            return None;
        }
        Some(map)
    });
    let selected: Vec<&Workload> = match (&selector, &selector_node, ns_ok) {
        (Some(selector), Some(node), true) => {
            let selected: Vec<_> = mesh.selected(&namespace, selector).collect();
            if selected.is_empty() {
                errors.push(
                    node.line(),
                    &node.path,
                    Problem::SelectsNothing(namespace.clone()),
                );
            }
            selected.into_iter().filter(|w| mesh.complete(w)).collect()
        }
        _ => Vec::new(),
    };
    let mut ports: Vec<ServicePort> = Vec::new();
    if let Some(node) = spec.required(errors, "ports")
        && let Some(items) = node.seq(errors)
    {
        if items.is_empty() {
            errors.push(node.line(), &node.path, Problem::Empty);
        }
        for item in items {
            if let Some(p) = service_port(errors, &item, &owner, &ports, &selected) {
                ports.push(p);
            }
        }
    }
    drop(selected);
    let expose = spec.optional("expose").and_then(|n| {
        let text = n.str(errors)?;
        match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(n.line(), &n.path, Problem::BadAddress(text.to_string()));
                None
            }
        }
    });
    let circuit_breaker = spec
        .optional("circuitBreaker")
        .and_then(|n| circuit_breaker(errors, &n));
    // Recorded even when invalid (see `workload`): routes naming it get no misleading error.
    let key = (namespace, r.meta.name.clone());
    if let Some(first) = mesh.services.get(&key) {
        duplicate(errors, "Service", &r, &first.meta.clone());
        return;
    }
    mesh.services.insert(
        key,
        Service {
            meta: r.meta,
            selector: selector.unwrap_or_default(),
            ports,
            expose,
            circuit_breaker,
        },
    );
}

/// A `circuitBreaker` map (of a Service or a Route); errors name the field to fix.
fn circuit_breaker(errors: &mut Errors, n: &Node<'_>) -> Option<CircuitBreaker> {
    const FIELDS: [&str; 5] = [
        "consecutiveFailures",
        "successRate",
        "baseEjection",
        "maxEjection",
        "maxEjectionPercent",
    ];
    let before = errors.len();
    let m = n.map(errors, &FIELDS)?;
    let int = |errors: &mut Errors, key: &str| m.optional(key).and_then(|v| v.int(errors));
    let text = |errors: &mut Errors, node: &Map<'_>, key: &str| {
        node.optional(key)
            .and_then(|v| v.str(errors).map(str::to_string))
    };
    let mut raw = check::RawBreaker {
        consecutive_failures: int(errors, "consecutiveFailures"),
        base_ejection: text(errors, &m, "baseEjection"),
        max_ejection: text(errors, &m, "maxEjection"),
        max_ejection_percent: int(errors, "maxEjectionPercent"),
        success_rate: None,
    };
    if let Some(sr) = m.optional("successRate") {
        let sr = sr.map(errors, &["minPercent", "window", "minRequests"])?;
        let min_percent = sr.optional("minPercent").and_then(|v| {
            let t = v.scalar_text(errors)?;
            match t.parse::<f64>() {
                Ok(p) => Some(p),
                Err(_) => {
                    errors.push(
                        v.line(),
                        &v.path,
                        Problem::WrongType {
                            expected: "a number",
                            found: "a string",
                        },
                    );
                    None
                }
            }
        });
        raw.success_rate = Some(check::RawSuccessRate {
            min_percent,
            window: text(errors, &sr, "window"),
            min_requests: sr.optional("minRequests").and_then(|v| v.int(errors)),
        });
    }
    if errors.len() > before {
        return None;
    }
    match check::circuit_breaker(&raw) {
        Ok(b) => Some(b),
        Err(problems) => {
            for (field, problem) in problems {
                let path = if field.is_empty() {
                    n.path.clone()
                } else {
                    format!("{}.{field}", n.path)
                };
                errors.push(n.line(), &path, problem);
            }
            None
        }
    }
}

fn service_port(
    errors: &mut Errors,
    item: &Node<'_>,
    owner: &str,
    earlier: &[ServicePort],
    selected: &[&Workload],
) -> Option<ServicePort> {
    let map = item.map(errors, &["name", "port", "targetPort"])?;
    let name = match map.optional("name") {
        Some(n) => Some(dns_name(errors, &n)?),
        None => None,
    };
    let port_node = map.required(errors, "port")?;
    let port = port_node.port(errors)?;
    if earlier.iter().any(|p| p.port == port) {
        errors.push(
            port_node.line(),
            &port_node.path,
            Problem::DuplicatePort {
                port,
                owner: owner.to_string(),
            },
        );
        return None;
    }
    let target_port = match map.optional("targetPort") {
        None => TargetPort::Number(port),
        Some(n) => {
            let target = if matches!(
                n.y.data,
                saphyr::YamlDataOwned::Value(saphyr::ScalarOwned::Integer(_))
            ) {
                TargetPort::Number(n.port(errors)?)
            } else {
                TargetPort::Name(dns_name(errors, &n)?)
            };
            // Every selected workload must serve the target port.
            for w in selected {
                let problem = match &target {
                    TargetPort::Number(p) if !w.ports.iter().any(|wp| wp.port == *p) => {
                        Problem::UndeclaredPort {
                            port: *p,
                            workload: format!("{}/{}", w.meta.namespace, w.meta.name),
                        }
                    }
                    TargetPort::Name(name)
                        if !w.ports.iter().any(|wp| wp.name.as_deref() == Some(name)) =>
                    {
                        Problem::UndeclaredPortName {
                            name: name.clone(),
                            workload: format!("{}/{}", w.meta.namespace, w.meta.name),
                        }
                    }
                    _ => continue,
                };
                errors.push(n.line(), &n.path, problem);
                return None;
            }
            target
        }
    };
    if let TargetPort::Number(p) = target_port
        && map.optional("targetPort").is_none()
    {
        for w in selected {
            if !w.ports.iter().any(|wp| wp.port == p) {
                errors.push(
                    port_node.line(),
                    &port_node.path,
                    Problem::UndeclaredPort {
                        port: p,
                        workload: format!("{}/{}", w.meta.namespace, w.meta.name),
                    },
                );
                return None;
            }
        }
    }
    Some(ServicePort {
        name,
        port,
        target_port,
    })
}

fn http_match(errors: &mut Errors, map: &Map<'_>) -> Option<HttpMatch> {
    let methods = match map.optional("methods") {
        None => Some(Vec::new()),
        Some(n) => n.str_list(errors).and_then(|list| {
            let mut ok = true;
            for (m, node) in &list {
                if !HTTP_METHODS.contains(&m.as_str()) {
                    errors.push(node.line(), &node.path, Problem::BadMethod(m.clone()));
                    ok = false;
                }
            }
            ok.then(|| list.into_iter().map(|(m, _)| m).collect())
        }),
    };
    let path_prefix = match map.optional("pathPrefix") {
        None => Some(None),
        Some(n) => n.str(errors).and_then(|p| {
            if p.starts_with('/') {
                Some(Some(p.to_string()))
            } else {
                errors.push(n.line(), &n.path, Problem::BadPathPrefix(p.into()));
                None
            }
        }),
    };
    Some(HttpMatch {
        methods: methods?,
        path_prefix: path_prefix?,
    })
}

fn policy(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    let ns_ok = namespace_known(errors, mesh, &r);
    let Some(spec) = r
        .spec
        .as_ref()
        .and_then(|s| s.map(errors, &["target", "routes", "from", "mode"]))
    else {
        return;
    };
    let mode = match spec.optional("mode") {
        None => Some(PolicyMode::Enforce),
        Some(n) => policy_mode(errors, &n),
    };
    let namespace = r.meta.namespace.clone();
    let mut ok = ns_ok;
    let (mut target_workload, mut target_port) = (None, None);
    if let Some(target) = spec.optional("target") {
        match target.map(errors, &["workload", "port"]) {
            Some(t) => {
                let workload = t.optional("workload");
                if let Some(n) = &workload {
                    match dns_name(errors, n) {
                        Some(name) => {
                            if ns_ok
                                && !mesh
                                    .workloads
                                    .contains_key(&(namespace.clone(), name.clone()))
                            {
                                errors.push(
                                    n.line(),
                                    &n.path,
                                    Problem::UnknownWorkload(format!("{namespace}/{name}")),
                                );
                                ok = false;
                            }
                            target_workload = Some(name);
                        }
                        None => ok = false,
                    }
                }
                if let Some(n) = t.optional("port") {
                    match n.port(errors) {
                        Some(port) => {
                            target_port = Some(port);
                            let declared = match &target_workload {
                                Some(w) => mesh
                                    .workloads
                                    .get(&(namespace.clone(), w.clone()))
                                    .filter(|w| mesh.complete(w))
                                    .map(|w| w.ports.iter().any(|p| p.port == port)),
                                None => {
                                    let in_ns = || {
                                        mesh.workloads
                                            .values()
                                            .filter(|w| w.meta.namespace == namespace)
                                    };
                                    if in_ns().all(|w| mesh.complete(w)) {
                                        Some(
                                            in_ns().any(|w| w.ports.iter().any(|p| p.port == port)),
                                        )
                                    } else {
                                        None
                                    }
                                }
                            };
                            // `None`: unknown or incomplete workload, already reported.
                            if ok && declared == Some(false) {
                                let problem = match &target_workload {
                                    Some(w) => Problem::UndeclaredPort {
                                        port,
                                        workload: format!("{namespace}/{w}"),
                                    },
                                    None => Problem::PortNotInNamespace {
                                        port,
                                        namespace: namespace.clone(),
                                    },
                                };
                                errors.push(n.line(), &n.path, problem);
                                ok = false;
                            }
                        }
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let mut routes = Vec::new();
    if let Some(n) = spec.optional("routes") {
        match n.seq(errors) {
            Some(items) => {
                for item in items {
                    match item
                        .map(errors, &["methods", "pathPrefix", "grpc"])
                        .and_then(|m| policy_route(errors, &m))
                    {
                        Some(m) => routes.push(m),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let (mut identities, mut namespaces, mut unauthenticated) = (Vec::new(), Vec::new(), false);
    match spec
        .required(errors, "from")
        .and_then(|f| f.map(errors, &["identities", "namespaces", "unauthenticated"]))
    {
        Some(from) => {
            if let Some(n) = from.optional("identities") {
                match spiffe_ids(errors, &n) {
                    Some(list) => identities = list,
                    None => ok = false,
                }
            }
            if let Some(n) = from.optional("namespaces") {
                match n.str_list(errors) {
                    Some(list) => {
                        for (value, node) in list {
                            if mesh.namespaces.contains_key(&value) {
                                namespaces.push(value);
                            } else {
                                errors.push(
                                    node.line(),
                                    &node.path,
                                    Problem::UnknownNamespace(value),
                                );
                                ok = false;
                            }
                        }
                    }
                    None => ok = false,
                }
            }
            if let Some(n) = from.optional("unauthenticated") {
                match n.bool(errors) {
                    Some(b) => unauthenticated = b,
                    None => ok = false,
                }
            }
        }
        None => ok = false,
    }
    let Some(mode) = mode else { return };
    if !ok {
        return;
    }
    if let Some(first) = mesh
        .policies
        .iter()
        .find(|p| p.meta.namespace == namespace && p.meta.name == r.meta.name)
    {
        duplicate(errors, "AuthorizationPolicy", &r, &first.meta.clone());
        return;
    }
    mesh.policies.push(AuthorizationPolicy {
        meta: r.meta,
        target_workload,
        target_port,
        routes,
        from_identities: identities,
        from_namespaces: namespaces,
        from_unauthenticated: unauthenticated,
        mode,
    });
}

/// One entry of a policy's `routes`: `methods` and `pathPrefix`, or `grpc: {service, method}`
/// (turned into the path match it stands for, see [`check::grpc_route`]).
fn policy_route(errors: &mut Errors, map: &Map<'_>) -> Option<HttpMatch> {
    let Some(g) = map.optional("grpc") else {
        return http_match(errors, map);
    };
    if map.optional("methods").is_some() || map.optional("pathPrefix").is_some() {
        errors.push(g.line(), &g.path, Problem::GrpcWithHttpMatch);
        return None;
    }
    let grpc = g.map(errors, &["service", "method"])?;
    let service_node = grpc.required(errors, "service");
    let service = service_node.as_ref().and_then(|n| n.str(errors));
    let method_node = grpc.optional("method");
    let method = match &method_node {
        None => Some(None),
        Some(n) => n.str(errors).map(Some),
    };
    let (Some(service), Some(method)) = (service, method) else {
        return None;
    };
    match check::grpc_route(service, method) {
        Ok(m) => Some(m),
        Err(p) => {
            let at = match (&p, &method_node, &service_node) {
                (Problem::BadGrpcMethod(_), Some(n), _) => n,
                (_, _, Some(n)) => n,
                _ => &g,
            };
            errors.push(at.line(), &at.path, p);
            None
        }
    }
}

fn route(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    let ns_ok = namespace_known(errors, mesh, &r);
    let Some(spec) = r.spec.as_ref().and_then(|s| {
        s.map(
            errors,
            &[
                "service",
                "match",
                "timeout",
                "retryable",
                "backends",
                "retry",
                "fault",
                "circuitBreaker",
            ],
        )
    }) else {
        return;
    };
    let namespace = r.meta.namespace.clone();
    // a service of the route's namespace (not checked when the namespace is unknown: one error)
    let service_of = |errors: &mut Errors, n: &Node<'_>| {
        let name = dns_name(errors, n)?;
        if ns_ok
            && !mesh
                .services
                .contains_key(&(namespace.clone(), name.clone()))
        {
            errors.push(
                n.line(),
                &n.path,
                Problem::UnknownService(format!("{namespace}/{name}")),
            );
            return None;
        }
        Some(name)
    };
    let service = spec
        .required(errors, "service")
        .and_then(|n| service_of(errors, &n));
    let backends = match spec.optional("backends") {
        None => Some(Vec::new()),
        Some(n) => n.seq(errors).and_then(|items| {
            let mut backends = Vec::new();
            let mut ok = true;
            for item in items {
                let Some(b) = item.map(errors, &["service", "weight"]) else {
                    ok = false;
                    continue;
                };
                let service = b
                    .required(errors, "service")
                    .and_then(|n| service_of(errors, &n));
                let weight = match b.optional("weight") {
                    None => Some(1),
                    Some(w) => w.int(errors).and_then(|v| {
                        check::weight(v)
                            .map_err(|p| errors.push(w.line(), &w.path, p))
                            .ok()
                    }),
                };
                match (service, weight) {
                    (Some(service), Some(weight)) => backends.push(Backend { service, weight }),
                    _ => ok = false,
                }
            }
            if !ok {
                return None;
            }
            match check::backends(&backends) {
                Ok(()) => Some(backends),
                Err(p) => {
                    errors.push(n.line(), &n.path, p);
                    None
                }
            }
        }),
    };
    let matches = match spec.optional("match") {
        None => Some(HttpMatch::default()),
        Some(n) => n
            .map(errors, &["methods", "pathPrefix"])
            .and_then(|m| http_match(errors, &m)),
    };
    let timeout = match spec.optional("timeout") {
        None => Some(None),
        Some(n) => n.str(errors).and_then(|s| match parse_duration(s) {
            Some(d) => Some(Some(d)),
            None => {
                errors.push(n.line(), &n.path, Problem::BadDuration(s.into()));
                None
            }
        }),
    };
    let retryable = match spec.optional("retryable") {
        None => Some(false),
        Some(n) => n.bool(errors),
    };
    let retry = match spec.optional("retry") {
        None => Some(None),
        Some(n) => retry(errors, &n).map(Some),
    };
    let fault = match spec.optional("fault") {
        None => Some(None),
        Some(n) => traffic::fault(errors, &n).map(Some),
    };
    let circuit_breaker = match spec.optional("circuitBreaker") {
        None => Some(None),
        Some(n) => circuit_breaker(errors, &n).map(Some),
    };
    let (
        Some(service),
        Some(matches),
        Some(timeout),
        Some(retryable),
        Some(backends),
        Some(retry),
        Some(fault),
        Some(circuit_breaker),
        true,
    ) = (
        service,
        matches,
        timeout,
        retryable,
        backends,
        retry,
        fault,
        circuit_breaker,
        ns_ok,
    )
    else {
        return;
    };
    if let Some(first) = mesh
        .routes
        .iter()
        .find(|x| x.meta.namespace == namespace && x.meta.name == r.meta.name)
    {
        duplicate(errors, "Route", &r, &first.meta.clone());
        return;
    }
    mesh.routes.push(Route {
        meta: r.meta,
        service,
        matches,
        rules: RouteRules {
            timeout,
            retryable,
            backends,
            retry,
            fault,
            circuit_breaker,
        },
    });
}

/// A list of SPIFFE ids, each bad one reported at its item.
pub(crate) fn spiffe_ids(errors: &mut Errors, n: &Node<'_>) -> Option<Vec<SpiffeId>> {
    let mut ok = true;
    let mut ids = Vec::new();
    for (value, node) in n.str_list(errors)? {
        match value.parse::<SpiffeId>() {
            Ok(id) => ids.push(id),
            Err(source) => {
                errors.push(
                    node.line(),
                    &node.path,
                    Problem::BadSpiffeId { value, source },
                );
                ok = false;
            }
        }
    }
    ok.then_some(ids)
}

/// A route's `retry`: every field optional, each absent one at its default.
fn retry(errors: &mut Errors, n: &Node<'_>) -> Option<Retry> {
    let before = errors.len();
    let map = n.map(
        errors,
        &[
            "attempts",
            "on",
            "perTryTimeout",
            "idempotencyHeader",
            "maxBodyBytes",
            "budget",
        ],
    )?;
    let mut out = Retry::default();
    // a checked value of an optional field (its problem reported at the field)
    fn checked<T, U>(
        errors: &mut Errors,
        node: Option<Node<'_>>,
        read: impl FnOnce(&Node<'_>, &mut Errors) -> Option<T>,
        check: impl FnOnce(T) -> Result<U, Problem>,
    ) -> Option<U> {
        let node = node?;
        let value = read(&node, errors)?;
        check(value)
            .map_err(|p| errors.push(node.line(), &node.path, p))
            .ok()
    }
    let int = |n: &Node<'_>, e: &mut Errors| n.int(e);
    if let Some(v) = checked(errors, map.optional("attempts"), int, check::attempts) {
        out.attempts = v;
    }
    if let Some(v) = checked(
        errors,
        map.optional("maxBodyBytes"),
        int,
        check::max_body_bytes,
    ) {
        out.max_body_bytes = v;
    }
    if let Some(b) = map
        .optional("budget")
        .and_then(|b| b.map(errors, &["percent", "minPerSecond"]))
    {
        if let Some(v) = checked(errors, b.optional("percent"), int, check::budget_percent) {
            out.budget_percent = v;
        }
        if let Some(v) = checked(
            errors,
            b.optional("minPerSecond"),
            int,
            check::min_per_second,
        ) {
            out.budget_min_per_second = v;
        }
    }
    let text = |n: &Node<'_>, e: &mut Errors| n.str(e).map(str::to_string);
    if let Some(d) = checked(errors, map.optional("perTryTimeout"), text, |t| {
        check::duration(&t)
    }) {
        out.per_try_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(h) = checked(errors, map.optional("idempotencyHeader"), text, |h| {
        check::header_name(&h)
    }) {
        out.idempotency_header = h;
    }
    if let Some(on) = map.optional("on") {
        let mut conditions = Vec::new();
        for item in on.seq(errors).unwrap_or_default() {
            let scalar = |n: &Node<'_>, e: &mut Errors| n.scalar_text(e);
            let token = |t: String| check::retry_on(&t);
            conditions.extend(checked(errors, Some(item), scalar, token).unwrap_or_default());
        }
        conditions.sort();
        conditions.dedup();
        out.on = conditions;
    }
    (errors.len() == before).then_some(out)
}

/// Parses `500ms`, `2s`, `1m30s`, `1h`: one or more numbers, each followed by a unit.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60)?),
            "h" => Duration::from_secs(value.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
pub(crate) mod tests;
