//! The store-neutral model of a mesh: what the services serve from, whoever filled it.
//!
//! A store turns its source into one [`Mesh`]: namespaces, workloads (identity = namespace +
//! service account, declared ports, labels, running instances), services with their endpoints as
//! data, authorization policies and routes. Local mode builds it from mesh.yaml and `onemesh up`'s
//! instances ([`Mesh::from_config`]: a service's endpoints are the instances of the workloads its
//! selector matches); Kubernetes mode from Namespaces, Pods, Services, EndpointSlices and the
//! onemesh CRDs (`crate::kube`: a service's endpoints are its EndpointSlices' ready endpoints).
//!
//! Every object carries where it came from ([`Origin`]), so that a problem found on the model is
//! shown where the user wrote it: `mesh.yaml:42: …` for the file, the object's `Accepted`
//! condition and an Event in Kubernetes. The value checks shared by both sources (ports, names,
//! methods, path prefixes, SPIFFE ids, durations) live here ([`check`]); the mesh.yaml parser
//! uses them with the line of each field, the Kubernetes store on each CRD object, where an
//! invalid object is left out of the model and the rest keeps working.
//!
//! The model holds no I/O and no handles: it is plain data, compared with `==` to decide whether
//! a new state must be published.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use onemesh_identity::SpiffeId;

pub use crate::config::{
    Backend, CircuitBreaker, Fault, HttpMatch, PolicyMode, Problem, Protocol, RateLimits, Retry,
    RetryOn, RouteRules, SuccessRate, WorkloadPort,
};
use crate::config::{MeshConfig, TargetPort};
use crate::state::Instance as LocalInstance;

/// Where an object of the model comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    /// A resource of mesh.yaml, starting at this 1-based line.
    File { line: usize },
    /// A Kubernetes object.
    Object {
        kind: &'static str,
        namespace: String,
        name: String,
        uid: String,
        generation: Option<i64>,
    },
    /// Made by the store itself (e.g. a test's state).
    #[default]
    Derived,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { line } => write!(f, "mesh.yaml:{line}"),
            Origin::Object {
                kind,
                namespace,
                name,
                ..
            } if namespace.is_empty() => write!(f, "{kind} {name}"),
            Origin::Object {
                kind,
                namespace,
                name,
                ..
            } => write!(f, "{kind} {namespace}/{name}"),
            Origin::Derived => f.write_str("(store)"),
        }
    }
}

/// A problem with one field of one object of the model.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{origin}: {}{problem}", field_prefix(field))]
pub struct ModelError {
    pub origin: Origin,
    /// Dotted path of the field, e.g. `spec.routes[0].pathPrefix`; empty for the whole object.
    pub field: String,
    pub problem: Problem,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl ModelError {
    /// The reason of the object's `Accepted=False` condition: one CamelCase word.
    pub fn reason(&self) -> &'static str {
        match self.problem {
            Problem::UnknownService(_) | Problem::UnknownWorkload(_) => "UnknownReference",
            Problem::UnknownNamespace(_) => "UnknownNamespace",
            _ => "Invalid",
        }
    }
}

/// A namespace of the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// The mode of the default on the ports of its workloads that no policy covers (mesh.yaml
    /// `spec.defaultPolicyMode`; Kubernetes: the annotation `onemesh.dev/default-policy-mode`).
    pub default_mode: PolicyMode,
    pub origin: Origin,
}

/// A workload: a set of instances with one identity and the ports they declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<WorkloadPort>,
    /// Where it runs now (local: endpoints.json; Kubernetes: its pods with an IP).
    pub instances: Vec<Instance>,
    pub origin: Origin,
}

/// One running instance of a workload: its inbound proxy and the real port of each declared port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The address of the instance's inbound proxy.
    pub inbound: SocketAddr,
    /// Its proxy's admin listener (`/metrics`, plain HTTP), which the metrics window scrapes.
    pub admin: Option<SocketAddr>,
    /// Its proxy's control-only admin listener (mTLS, the control plane's id only: tap).
    pub control_admin: Option<SocketAddr>,
    /// Declared port → port the application really listens on; a declared port missing here is
    /// the real port.
    pub ports: BTreeMap<u16, u16>,
}

impl Instance {
    pub fn real_port(&self, declared: u16) -> u16 {
        self.ports.get(&declared).copied().unwrap_or(declared)
    }
}

/// A service: a stable name, its ports, and for each port the endpoints behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// The virtual IPs a captured connection may be addressed to (Kubernetes ClusterIPs; none in
    /// local mode, where apps name services).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// The circuit breaker callers apply to its endpoints.
    pub circuit_breaker: Option<CircuitBreaker>,
    pub origin: Origin,
}

/// One port of a service and where its traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// Sorted by address, one per address.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a service port: an instance's inbound proxy and the port its app listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub target_port: u16,
    pub namespace: String,
    pub workload: String,
    pub service_account: String,
    pub protocol: Protocol,
}

/// An authorization policy: who may call a namespace, a workload or one of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// `None`: every workload of the namespace.
    pub target_workload: Option<String>,
    /// `None`: every port of the target.
    pub target_port: Option<u16>,
    /// Empty: every request.
    pub routes: Vec<HttpMatch>,
    pub from_identities: Vec<SpiffeId>,
    pub from_namespaces: Vec<String>,
    pub from_unauthenticated: bool,
    /// What a denial by the policies on a port does (see [`PolicyMode`]).
    pub mode: PolicyMode,
    pub origin: Origin,
}

/// A route: per-request settings for requests to a service that match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub matches: HttpMatch,
    pub rules: RouteRules,
    pub origin: Origin,
}

/// A rate limit policy: token buckets on a workload's inbound (optionally one port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub namespace: String,
    pub name: String,
    pub target_workload: String,
    /// `None`: every port of the workload.
    pub target_port: Option<u16>,
    /// The requests limited (default: every request).
    pub matches: HttpMatch,
    pub limits: RateLimits,
    pub origin: Origin,
}

/// The whole mesh. Maps are keyed by `(namespace, name)`; policies and routes keep their order
/// (file order; in Kubernetes, by namespace, then creation).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mesh {
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: BTreeMap<(String, String), Workload>,
    pub services: BTreeMap<(String, String), Service>,
    pub policies: Vec<Policy>,
    pub routes: Vec<Route>,
    pub rate_limits: Vec<RateLimit>,
}

impl Mesh {
    /// Local mode: the mesh of a valid mesh.yaml and the instances `onemesh up` started. A service
    /// port's endpoints are the instances of every workload its selector matches, at the real
    /// port of the workload port its `targetPort` names.
    pub fn from_config(config: &MeshConfig, instances: &[LocalInstance]) -> Mesh {
        let mut mesh = Mesh::default();
        for ns in config.namespaces.values() {
            mesh.namespaces.insert(
                ns.meta.name.clone(),
                Namespace {
                    name: ns.meta.name.clone(),
                    default_mode: ns.default_mode,
                    origin: Origin::File { line: ns.meta.line },
                },
            );
        }
        for (key, w) in &config.workloads {
            let instances = instances
                .iter()
                .filter(|i| i.namespace == w.meta.namespace && i.workload == w.meta.name)
                .map(|i| Instance {
                    inbound: i.inbound,
                    admin: i.admin,
                    control_admin: i.control_admin,
                    ports: i.ports.clone(),
                })
                .collect();
            mesh.workloads.insert(
                key.clone(),
                Workload {
                    namespace: w.meta.namespace.clone(),
                    name: w.meta.name.clone(),
                    service_account: w.service_account.clone(),
                    labels: w.labels.clone(),
                    ports: w.ports.clone(),
                    instances,
                    origin: Origin::File { line: w.meta.line },
                },
            );
        }
        for (key, s) in &config.services {
            let ports = s
                .ports
                .iter()
                .map(|sp| {
                    let mut endpoints = Vec::new();
                    for w in config.selected(&s.meta.namespace, &s.selector) {
                        let declared = w.ports.iter().find(|p| match &sp.target_port {
                            TargetPort::Number(n) => p.port == *n,
                            TargetPort::Name(name) => p.name.as_deref() == Some(name.as_str()),
                        });
                        let Some(declared) = declared else { continue };
                        let Some(workload) = mesh
                            .workloads
                            .get(&(w.meta.namespace.clone(), w.meta.name.clone()))
                        else {
                            continue;
                        };
                        for i in &workload.instances {
                            endpoints.push(Endpoint {
                                addr: i.inbound,
                                target_port: i.real_port(declared.port),
                                namespace: w.meta.namespace.clone(),
                                workload: w.meta.name.clone(),
                                service_account: w.service_account.clone(),
                                protocol: declared.protocol,
                            });
                        }
                    }
                    sort_endpoints(&mut endpoints);
                    ServicePort {
                        name: sp.name.clone(),
                        port: sp.port,
                        endpoints,
                    }
                })
                .collect();
            mesh.services.insert(
                key.clone(),
                Service {
                    namespace: s.meta.namespace.clone(),
                    name: s.meta.name.clone(),
                    cluster_ips: Vec::new(),
                    ports,
                    circuit_breaker: s.circuit_breaker.clone(),
                    origin: Origin::File { line: s.meta.line },
                },
            );
        }
        mesh.policies = config
            .policies
            .iter()
            .map(|p| Policy {
                namespace: p.meta.namespace.clone(),
                name: p.meta.name.clone(),
                target_workload: p.target_workload.clone(),
                target_port: p.target_port,
                routes: p.routes.clone(),
                from_identities: p.from_identities.clone(),
                from_namespaces: p.from_namespaces.clone(),
                from_unauthenticated: p.from_unauthenticated,
                mode: p.mode,
                origin: Origin::File { line: p.meta.line },
            })
            .collect();
        mesh.routes = config
            .routes
            .iter()
            .map(|r| Route {
                namespace: r.meta.namespace.clone(),
                name: r.meta.name.clone(),
                service: r.service.clone(),
                matches: r.matches.clone(),
                rules: r.rules.clone(),
                origin: Origin::File { line: r.meta.line },
            })
            .collect();
        mesh.rate_limits = config
            .rate_limits
            .iter()
            .map(|l| RateLimit {
                namespace: l.meta.namespace.clone(),
                name: l.meta.name.clone(),
                target_workload: l.target_workload.clone(),
                target_port: l.target_port,
                matches: l.matches.clone(),
                limits: l.limits.clone(),
                origin: Origin::File { line: l.meta.line },
            })
            .collect();
        mesh
    }

    /// Whether a workload of the mesh runs as `namespace`/`service_account`.
    pub fn runs_as(&self, namespace: &str, service_account: &str) -> bool {
        self.workloads
            .values()
            .any(|w| w.namespace == namespace && w.service_account == service_account)
    }

    /// The references between objects that do not resolve: a route's service. (A policy naming a
    /// workload that has no instance right now is fine: workloads come and go.)
    pub fn check_references(&self) -> Vec<ModelError> {
        let mut errors = Vec::new();
        for r in &self.routes {
            if !self
                .services
                .contains_key(&(r.namespace.clone(), r.service.clone()))
            {
                errors.push(ModelError {
                    origin: r.origin.clone(),
                    field: "spec.service".into(),
                    problem: Problem::UnknownService(format!("{}/{}", r.namespace, r.service)),
                });
            }
        }
        errors
    }
}

/// Sorts endpoints by address and keeps one per address (an instance serves a port once).
pub fn sort_endpoints(endpoints: &mut Vec<Endpoint>) {
    endpoints.sort_by_key(|e| e.addr);
    endpoints.dedup_by(|a, b| a.addr == b.addr);
}

/// The value checks both sources share. Each returns the value, or the [`Problem`] to report at
/// the field.
pub mod check {
    use std::time::Duration;

    use onemesh_identity::SpiffeId;

    use super::{Problem, RetryOn};

    /// HTTP methods a route may name: the list the CRD schema enumerates.
    pub const HTTP_METHODS: [&str; 9] = onemesh_crds::HTTP_METHODS;

    /// A DNS-1123 label: what Kubernetes accepts as a namespace, workload or service name.
    pub fn is_dns_label(s: &str) -> bool {
        let bytes = s.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    }

    pub fn name(s: &str) -> Result<String, Problem> {
        if is_dns_label(s) {
            Ok(s.to_string())
        } else {
            Err(Problem::BadName(s.into()))
        }
    }

    pub fn port(value: i64) -> Result<u16, Problem> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(Problem::BadPort { value }),
        }
    }

    pub fn method(m: &str) -> Result<String, Problem> {
        if HTTP_METHODS.contains(&m) {
            Ok(m.to_string())
        } else {
            Err(Problem::BadMethod(m.into()))
        }
    }

    pub fn path_prefix(p: &str) -> Result<String, Problem> {
        if p.starts_with('/') {
            Ok(p.to_string())
        } else {
            Err(Problem::BadPathPrefix(p.into()))
        }
    }

    /// A policy mode: `enforce` or `audit`.
    pub fn mode(s: &str) -> Result<super::PolicyMode, Problem> {
        match s {
            "enforce" => Ok(super::PolicyMode::Enforce),
            "audit" => Ok(super::PolicyMode::Audit),
            _ => Err(Problem::BadMode(s.into())),
        }
    }

    /// An identifier of a .proto: a letter or `_`, then letters, digits and `_`.
    fn is_proto_ident(s: &str) -> bool {
        let mut bytes = s.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && s.len() <= 128
    }

    /// A policy route's `grpc: {service, method}` as the path match it stands for: `POST` and
    /// `/<service>/<method>`, or `/<service>/` for every method of the service. `service` is the
    /// full dotted name (`pkg.v1.Service`), `method` the rpc's name.
    pub fn grpc_route(service: &str, method: Option<&str>) -> Result<super::HttpMatch, Problem> {
        if service.len() > 512 || !service.split('.').all(is_proto_ident) {
            return Err(Problem::BadGrpcService(service.into()));
        }
        let path = match method {
            Some(m) if is_proto_ident(m) => format!("/{service}/{m}"),
            Some(m) => return Err(Problem::BadGrpcMethod(m.into())),
            None => format!("/{service}/"),
        };
        Ok(super::HttpMatch {
            methods: vec!["POST".into()],
            path_prefix: Some(path),
        })
    }

    pub fn spiffe_id(value: &str) -> Result<SpiffeId, Problem> {
        value
            .parse::<SpiffeId>()
            .map_err(|source| Problem::BadSpiffeId {
                value: value.to_string(),
                source,
            })
    }

    pub fn duration(s: &str) -> Result<Duration, Problem> {
        crate::config::parse_duration(s).ok_or_else(|| Problem::BadDuration(s.into()))
    }

    /// The largest backend weight (Gateway API's bound).
    pub const MAX_WEIGHT: i64 = 1_000_000;

    pub fn weight(value: i64) -> Result<u32, Problem> {
        match u32::try_from(value) {
            Ok(w) if value <= MAX_WEIGHT => Ok(w),
            _ => Err(Problem::BadWeight(value)),
        }
    }

    /// Attempts of a retry policy, the first included.
    pub fn attempts(v: i64) -> Result<u32, Problem> {
        in_range(v, 1, 10, "1-10 (attempts in all, the first included)")
    }

    /// The largest body kept to be sent again (1 MiB).
    pub fn max_body_bytes(v: i64) -> Result<u32, Problem> {
        in_range(v, 0, 1 << 20, "0-1048576 bytes")
    }

    pub fn budget_percent(v: i64) -> Result<u32, Problem> {
        in_range(v, 0, 1000, "0-1000 (percent of requests)")
    }

    pub fn min_per_second(v: i64) -> Result<u32, Problem> {
        in_range(v, 0, 10_000, "0-10000 (retries per second)")
    }

    fn in_range(v: i64, min: i64, max: i64, what: &'static str) -> Result<u32, Problem> {
        match u32::try_from(v) {
            Ok(x) if (min..=max).contains(&v) => Ok(x),
            _ => Err(Problem::OutOfRange {
                value: v.to_string(),
                range: what,
            }),
        }
    }

    /// A retry condition, as written in `retry.on` (a name may stand for several).
    pub fn retry_on(token: &str) -> Result<Vec<RetryOn>, Problem> {
        let grpc = |code| Ok(vec![RetryOn::Grpc(code)]);
        match token {
            "connect-failure" => Ok(vec![RetryOn::ConnectFailure]),
            "5xx" => Ok((500..=599).map(RetryOn::Status).collect()),
            "gateway-error" => Ok(vec![
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
            ]),
            "cancelled" => grpc(1),
            "deadline-exceeded" => grpc(4),
            "resource-exhausted" => grpc(8),
            "internal" => grpc(13),
            "unavailable" => grpc(14),
            other => match other.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => Ok(vec![RetryOn::Status(code)]),
                _ => Err(Problem::BadRetryOn(token.into())),
            },
        }
    }

    /// An HTTP header name (a token), kept in lower case.
    pub fn header_name(s: &str) -> Result<String, Problem> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(s.to_ascii_lowercase())
        } else {
            Err(Problem::BadIdempotencyHeader(s.into()))
        }
    }

    /// A circuit breaker as written, before its checks (the same fields in mesh.yaml, the Route
    /// CRD and the Service annotation).
    #[derive(Clone, Debug, Default)]
    pub struct RawBreaker {
        pub consecutive_failures: Option<i64>,
        pub success_rate: Option<RawSuccessRate>,
        pub base_ejection: Option<String>,
        pub max_ejection: Option<String>,
        pub max_ejection_percent: Option<i64>,
    }

    /// `successRate` as written.
    #[derive(Clone, Debug, Default)]
    pub struct RawSuccessRate {
        pub min_percent: Option<f64>,
        pub window: Option<String>,
        pub min_requests: Option<i64>,
    }

    /// A breaker's first ejection when not given.
    pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(1);
    /// A breaker's longest ejection when not given.
    pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(60);
    /// The most endpoints ejected at once when not given, percent.
    pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
    /// The success-rate window when not given.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    /// The fewest requests in the window for the success-rate rule, when not given.
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;

    /// Checks a circuit breaker; each problem names its field (relative to the breaker, empty
    /// for the breaker as a whole), all reported at once.
    pub fn circuit_breaker(
        raw: &RawBreaker,
    ) -> Result<super::CircuitBreaker, Vec<(&'static str, Problem)>> {
        type Problems = Vec<(&'static str, Problem)>;
        fn int(
            problems: &mut Problems,
            field: &'static str,
            v: Option<i64>,
            range: &'static str,
            (lo, hi): (i64, i64),
        ) -> Option<u32> {
            match v {
                None => None,
                Some(v) if (lo..=hi).contains(&v) => u32::try_from(v).ok(),
                Some(v) => {
                    let value = v.to_string();
                    problems.push((field, Problem::OutOfRange { value, range }));
                    None
                }
            }
        }
        fn dur(
            problems: &mut Problems,
            field: &'static str,
            v: &Option<String>,
            default: Duration,
        ) -> Option<Duration> {
            let Some(t) = v else {
                return Some(default);
            };
            match duration(t) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Some(d),
                Ok(_) => {
                    let (value, range) = (t.clone(), "a duration from 1ms to 1h");
                    problems.push((field, Problem::OutOfRange { value, range }));
                    None
                }
                Err(p) => {
                    problems.push((field, p));
                    None
                }
            }
        }
        let mut problems = Problems::new();
        let p = &mut problems;
        let consecutive = int(
            p,
            "consecutiveFailures",
            raw.consecutive_failures,
            "1-1000",
            (1, 1000),
        );
        let percent = int(
            p,
            "maxEjectionPercent",
            raw.max_ejection_percent,
            "1-100",
            (1, 100),
        );
        let min_requests = raw.success_rate.as_ref().and_then(|s| {
            int(
                p,
                "successRate.minRequests",
                s.min_requests,
                "1-1000000",
                (1, 1_000_000),
            )
        });
        let base = dur(p, "baseEjection", &raw.base_ejection, DEFAULT_BASE_EJECTION);
        let max = dur(p, "maxEjection", &raw.max_ejection, DEFAULT_MAX_EJECTION);
        let success_rate = raw.success_rate.as_ref().and_then(|s| {
            let window = dur(p, "successRate.window", &s.window, DEFAULT_WINDOW)?;
            let min_permille = match s.min_percent {
                None => {
                    p.push(("successRate.minPercent", Problem::MissingField));
                    return None;
                }
                Some(pct) if pct > 0.0 && pct <= 100.0 => (pct * 10.0).round().max(1.0) as u32,
                Some(pct) => {
                    p.push((
                        "successRate.minPercent",
                        Problem::OutOfRange {
                            value: pct.to_string(),
                            range: "a percentage above 0 and at most 100, e.g. 90 or 99.5",
                        },
                    ));
                    return None;
                }
            };
            Some(super::SuccessRate {
                min_permille,
                window,
                min_requests: min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            })
        });
        if raw.consecutive_failures.is_none() && raw.success_rate.is_none() {
            p.push(("", Problem::NoBreakerRule));
        }
        if let (Some(base), Some(max)) = (base, max)
            && max < base
        {
            p.push(("maxEjection", Problem::EjectionOrder { base, max }));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(super::CircuitBreaker {
            consecutive_failures: consecutive.unwrap_or(0),
            success_rate,
            base_ejection: base.unwrap_or(DEFAULT_BASE_EJECTION),
            max_ejection: max.unwrap_or(DEFAULT_MAX_EJECTION),
            max_ejection_percent: percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        })
    }

    /// A route's backends as a whole: each service once, and something to send to.
    pub fn backends(backends: &[super::Backend]) -> Result<(), Problem> {
        for (i, b) in backends.iter().enumerate() {
            if backends[..i].iter().any(|x| x.service == b.service) {
                return Err(Problem::DuplicateBackend(b.service.clone()));
            }
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            return Err(Problem::NoWeight);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
