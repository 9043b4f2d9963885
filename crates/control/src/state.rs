//! The mesh state the services serve from, and the pure functions that turn it into what one
//! watcher sees: a service's endpoints, a workload's authorizations, a service's routes.
//!
//! A store (see [`crate::store`]) publishes a new [`MeshState`] on every change; each open watch
//! stream recomputes its own view with these functions and sends only when that view changed.
//! Keeping the views pure (state in, message out) keeps them testable without any I/O. The state
//! is the store-neutral [`crate::model::Mesh`]: a service's endpoints are data the store computed
//! (local: selectors over `onemesh up`'s instances; Kubernetes: EndpointSlices), so these views
//! are the same in both modes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use onemesh_api::destination::{Endpoint, ProtocolHint, Snapshot};
use onemesh_api::policy::{
    Authorization, Backend, CircuitBreaker, Fault, HttpRoute, InboundPolicy, OutboundPolicy, Rate,
    RateLimit, RateLimitOverride, RetryPolicy, Route,
};
use onemesh_identity::SpiffeId;

use crate::config::{MeshConfig, Protocol, Retry, RetryOn};
use crate::model::Mesh;

/// Everything the services need: the store-neutral model of the mesh (see [`crate::model`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshState {
    pub mesh: Mesh,
}

impl MeshState {
    /// Local mode: a valid mesh.yaml and the instances `onemesh up` started.
    pub fn local(config: &MeshConfig, instances: &[Instance]) -> Self {
        MeshState {
            mesh: Mesh::from_config(config, instances),
        }
    }
}

/// One running instance of a local workload, as `onemesh up` records it in endpoints.json: its
/// inbound proxy and the real port of each declared port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub namespace: String,
    pub workload: String,
    /// The address of the instance's inbound proxy.
    pub inbound: SocketAddr,
    /// Its proxy's admin listener (`/metrics`, plain HTTP), which the metrics window scrapes.
    pub admin: Option<SocketAddr>,
    /// Its proxy's control-only admin listener (mTLS, the control plane's id only: tap).
    pub control_admin: Option<SocketAddr>,
    /// Declared workload port → port the application really listens on. A declared port that is
    /// missing here is assumed to be the real port.
    pub ports: BTreeMap<u16, u16>,
}

/// Why a destination name cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty destination name: send `<service>.<namespace>[:port]`")]
    Empty,
    #[error("invalid port in {0:?}: use 1-65535 after the colon")]
    BadPort(String),
    #[error("{0:?} is a short name but no caller namespace was sent: send caller_namespace")]
    NoCallerNamespace(String),
}

/// A service name resolved to `(namespace, service, port)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

/// What a watcher asked for: a service by name, or an address a captured connection was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Name(ServiceRef),
    /// A ClusterIP or a pod IP with its port; what it stands for is looked up in each state
    /// ([`Dest::service`], [`pod_endpoint`]), so a Service created later is found.
    Addr(SocketAddr),
}

impl Dest {
    /// The service this destination stands for in `state`: the named one, or the Service whose
    /// ClusterIP is the address.
    pub fn service(&self, state: &MeshState) -> Option<ServiceRef> {
        match self {
            Dest::Name(r) => Some(r.clone()),
            Dest::Addr(addr) => state.mesh.services.values().find_map(|s| {
                s.cluster_ips.contains(&addr.ip()).then(|| ServiceRef {
                    namespace: s.namespace.clone(),
                    service: s.name.clone(),
                    port: addr.port(),
                })
            }),
        }
    }
}

/// Resolves a watched name: `ip:port` (IPv6 in brackets) is an address; otherwise see
/// [`resolve_name`].
pub fn resolve_dest(name: &str, caller_namespace: &str) -> Result<Option<Dest>, NameError> {
    if let Ok(addr) = name.trim().parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(NameError::BadPort(name.to_string()));
        }
        return Ok(Some(Dest::Addr(addr)));
    }
    Ok(resolve_name(name, caller_namespace)?.map(Dest::Name))
}

/// Resolves `<svc>.<ns>.svc.<cluster-domain>`, `<svc>.<ns>` or `<svc>` (in `caller_namespace`),
/// each with an optional `:port` (default 80). `Ok(None)`: the name has another shape, so it is
/// not a mesh service (the caller passes such traffic through).
pub fn resolve_name(name: &str, caller_namespace: &str) -> Result<Option<ServiceRef>, NameError> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) if p != 0 => (host, p),
            _ => return Err(NameError::BadPort(name.to_string())),
        },
        None => (name, 80),
    };
    let labels: Vec<&str> = host.split('.').collect();
    let (service, namespace) = match labels.as_slice() {
        [svc] => {
            if caller_namespace.is_empty() {
                return Err(NameError::NoCallerNamespace(name.to_string()));
            }
            (*svc, caller_namespace)
        }
        [svc, ns] => (*svc, *ns),
        [svc, ns, "svc", ..] => (*svc, *ns),
        _ => return Ok(None),
    };
    if service.is_empty() || namespace.is_empty() {
        return Ok(None);
    }
    Ok(Some(ServiceRef {
        namespace: namespace.to_string(),
        service: service.to_string(),
        port,
    }))
}

/// The endpoints of a service port, as the store found them.
pub fn endpoints(state: &MeshState, trust_domain: &str, target: &ServiceRef) -> Snapshot {
    let key = (target.namespace.clone(), target.service.clone());
    let Some(service) = state.mesh.services.get(&key) else {
        return Snapshot::default();
    };
    let mut snapshot = Snapshot {
        exists: true,
        service: target.service.clone(),
        namespace: target.namespace.clone(),
        port: u32::from(target.port),
        endpoints: Vec::new(),
    };
    let Some(service_port) = service.ports.iter().find(|p| p.port == target.port) else {
        return snapshot;
    };
    for e in &service_port.endpoints {
        let Ok(identity) = SpiffeId::new(trust_domain, &e.namespace, &e.service_account) else {
            continue;
        };
        let protocol = match e.protocol {
            Protocol::Http => ProtocolHint::Http,
            Protocol::Opaque => ProtocolHint::Opaque,
        };
        snapshot.endpoints.push(Endpoint {
            addr: e.addr.to_string(),
            target_port: u32::from(e.target_port),
            identity: identity.to_string(),
            weight: 1,
            protocol: protocol as i32,
            workload: e.workload.clone(),
            namespace: e.namespace.clone(),
        });
    }
    snapshot
}

/// A captured connection to a pod's own IP: that one instance, if a meshed workload runs there.
/// Loopback addresses never match (local mode's instances all live there).
pub fn pod_endpoint(state: &MeshState, trust_domain: &str, addr: SocketAddr) -> Snapshot {
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        return Snapshot::default();
    }
    let found = state.mesh.workloads.values().find_map(|w| {
        w.instances
            .iter()
            .find(|i| i.inbound.ip() == addr.ip())
            .map(|i| (w, i))
    });
    let Some((w, instance)) = found else {
        return Snapshot::default();
    };
    let Ok(identity) = SpiffeId::new(trust_domain, &w.namespace, &w.service_account) else {
        return Snapshot::default();
    };
    let protocol = match w.ports.iter().find(|p| p.port == addr.port()) {
        Some(p) if p.protocol == Protocol::Opaque => ProtocolHint::Opaque,
        _ => ProtocolHint::Http,
    };
    Snapshot {
        exists: true,
        service: w.name.clone(),
        namespace: w.namespace.clone(),
        port: u32::from(addr.port()),
        endpoints: vec![Endpoint {
            addr: instance.inbound.to_string(),
            target_port: u32::from(addr.port()),
            identity: identity.to_string(),
            weight: 1,
            protocol: protocol as i32,
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
        }],
    }
}

/// What a destination watch sends for `dest` in `state`.
pub fn destination(state: &MeshState, trust_domain: &str, dest: &Dest) -> Snapshot {
    match (dest.service(state), dest) {
        (Some(service), _) => endpoints(state, trust_domain, &service),
        (None, Dest::Addr(addr)) => pod_endpoint(state, trust_domain, *addr),
        (None, Dest::Name(_)) => Snapshot::default(),
    }
}

/// The authorizations in force for a workload. Ports are the real ports its inbound proxy sees
/// (declared ports mapped through the running instances); `port` 0 means every port, another
/// value keeps only the authorizations that name it.
pub fn inbound(state: &MeshState, namespace: &str, workload: &str, port: u16) -> InboundPolicy {
    let key = (namespace.to_string(), workload.to_string());
    let Some(w) = state.mesh.workloads.get(&key) else {
        return InboundPolicy::default();
    };
    let real_ports = |declared: u16| -> Vec<u32> {
        let mut ports: Vec<u32> = w
            .instances
            .iter()
            .map(|i| u32::from(i.real_port(declared)))
            .collect();
        if ports.is_empty() {
            ports.push(u32::from(declared));
        }
        ports
    };
    let mut authorizations = Vec::new();
    for policy in &state.mesh.policies {
        if policy.namespace != namespace
            || policy
                .target_workload
                .as_deref()
                .is_some_and(|t| t != workload)
        {
            continue;
        }
        let declared: Vec<u16> = match policy.target_port {
            Some(p) if w.ports.iter().any(|wp| wp.port == p) => vec![p],
            Some(_) => continue, // a namespace-wide policy for a port this workload lacks
            None => w.ports.iter().map(|p| p.port).collect(),
        };
        let mut ports: Vec<u32> = declared.into_iter().flat_map(real_ports).collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() || (port != 0 && !ports.contains(&u32::from(port))) {
            continue;
        }
        authorizations.push(Authorization {
            name: policy.name.clone(),
            ports,
            routes: policy
                .routes
                .iter()
                .map(|m| HttpRoute {
                    methods: m.methods.clone(),
                    path_prefix: m.path_prefix.clone().unwrap_or_default(),
                })
                .collect(),
            identities: policy
                .from_identities
                .iter()
                .map(ToString::to_string)
                .collect(),
            namespaces: policy.from_namespaces.clone(),
            unauthenticated: policy.from_unauthenticated,
            mode: mode(policy.mode).into(),
        });
    }
    let mut ports: Vec<u32> = w.ports.iter().flat_map(|p| real_ports(p.port)).collect();
    ports.sort_unstable();
    ports.dedup();
    // Rate limits and faults (issue 15), kept together so other additions merge cleanly.
    let rate_limits = state
        .mesh
        .rate_limits
        .iter()
        .filter(|l| l.namespace == namespace && l.target_workload == workload)
        .filter_map(|l| {
            let ports = match l.target_port {
                Some(p) if w.ports.iter().any(|wp| wp.port == p) => real_ports(p),
                Some(_) => return None, // the workload no longer declares that port
                None => Vec::new(),
            };
            Some(rate_limit(l, ports))
        })
        .collect();
    let faults = state
        .mesh
        .routes
        .iter()
        .filter(|r| r.namespace == namespace)
        .filter_map(|r| {
            let f = r.rules.fault.as_ref()?;
            let ports = route_ports_on(&state.mesh, r, workload);
            (!ports.is_empty()).then(|| fault(r, f, ports))
        })
        .collect();
    InboundPolicy {
        exists: true,
        authorizations,
        ports,
        rate_limits,
        faults,
        default_mode: state
            .mesh
            .namespaces
            .get(namespace)
            .map_or(onemesh_api::policy::Mode::Enforce, |ns| {
                mode(ns.default_mode)
            })
            .into(),
    }
}

/// The ports (as the inbound sees them) through which a route's service, or one of its
/// backends, reaches `workload` (of the route's namespace): the target ports of its endpoints
/// there. Empty when none of them selects the workload.
fn mode(m: crate::config::PolicyMode) -> onemesh_api::policy::Mode {
    match m {
        crate::config::PolicyMode::Enforce => onemesh_api::policy::Mode::Enforce,
        crate::config::PolicyMode::Audit => onemesh_api::policy::Mode::Audit,
    }
}

fn route_ports_on(mesh: &Mesh, route: &crate::model::Route, workload: &str) -> Vec<u32> {
    let services =
        std::iter::once(&route.service).chain(route.rules.backends.iter().map(|b| &b.service));
    let mut ports: Vec<u32> = services
        .filter_map(|s| mesh.services.get(&(route.namespace.clone(), s.clone())))
        .flat_map(|s| s.ports.iter())
        .flat_map(|p| p.endpoints.iter())
        .filter(|e| e.namespace == route.namespace && e.workload == workload)
        .map(|e| u32::from(e.target_port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn rate(r: &crate::config::Rate) -> Rate {
    Rate {
        requests_per_second: r.requests_per_second,
        burst: r.burst,
    }
}

fn rate_limit(l: &crate::model::RateLimit, ports: Vec<u32>) -> RateLimit {
    RateLimit {
        name: l.name.clone(),
        ports,
        total: l.limits.total.as_ref().map(rate),
        identity: l.limits.identity.as_ref().map(rate),
        overrides: l
            .limits
            .overrides
            .iter()
            .map(|o| RateLimitOverride {
                rate: Some(rate(&o.rate)),
                identities: o.identities.iter().map(ToString::to_string).collect(),
                namespaces: o.namespaces.clone(),
            })
            .collect(),
        methods: l.matches.methods.clone(),
        path_prefix: l.matches.path_prefix.clone().unwrap_or_default(),
    }
}

fn fault(r: &crate::model::Route, f: &crate::model::Fault, ports: Vec<u32>) -> Fault {
    use crate::config::AbortStatus;
    let (http, grpc) = match f.abort.map(|a| a.status) {
        Some(AbortStatus::Http(s)) => (u32::from(s), 0),
        Some(AbortStatus::Grpc(c)) => (0, c),
        None => (0, 0),
    };
    Fault {
        route: r.name.clone(),
        ports,
        methods: r.matches.methods.clone(),
        path_prefix: r.matches.path_prefix.clone().unwrap_or_default(),
        header_name: f
            .header
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default(),
        header_value: f
            .header
            .as_ref()
            .and_then(|h| h.value.clone())
            .unwrap_or_default(),
        abort_http_status: http,
        abort_grpc_status: grpc,
        abort_percent: f.abort.map_or(0.0, |a| a.percent.as_f64()),
        delay_ms: f.delay.map_or(0, |d| {
            u64::try_from(d.duration.as_millis()).unwrap_or(u64::MAX)
        }),
        delay_percent: f.delay.map_or(0.0, |d| d.percent.as_f64()),
    }
}

/// A route's retry policy as the proxy receives it.
fn retry_policy(r: &Retry) -> RetryPolicy {
    let mut policy = RetryPolicy {
        attempts: r.attempts,
        per_try_timeout_ms: r
            .per_try_timeout
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        idempotency_header: r.idempotency_header.clone(),
        max_body_bytes: r.max_body_bytes,
        budget_percent: r.budget_percent,
        budget_min_per_second: r.budget_min_per_second,
        ..RetryPolicy::default()
    };
    for on in &r.on {
        match *on {
            RetryOn::ConnectFailure => policy.on_connect_failure = true,
            RetryOn::Status(code) => policy.on_statuses.push(code.into()),
            RetryOn::Grpc(code) => policy.on_grpc.push(code.into()),
        }
    }
    policy
}

/// The routes of a service, in the store's order.
pub fn outbound(state: &MeshState, target: &ServiceRef) -> OutboundPolicy {
    let key = (target.namespace.clone(), target.service.clone());
    if !state.mesh.services.contains_key(&key) {
        return OutboundPolicy::default();
    }
    OutboundPolicy {
        exists: true,
        service: target.service.clone(),
        namespace: target.namespace.clone(),
        routes: state
            .mesh
            .routes
            .iter()
            .filter(|r| r.namespace == target.namespace && r.service == target.service)
            .map(|r| Route {
                name: r.name.clone(),
                methods: r.matches.methods.clone(),
                path_prefix: r.matches.path_prefix.clone().unwrap_or_default(),
                timeout_ms: r
                    .rules
                    .timeout
                    .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                retryable: r.rules.retryable,
                backends: r
                    .rules
                    .backends
                    .iter()
                    .map(|b| Backend {
                        name: format!("{}.{}", b.service, r.namespace),
                        weight: b.weight,
                    })
                    .collect(),
                retry: r.rules.retry.as_ref().map(retry_policy),
                circuit_breaker: r.rules.circuit_breaker.as_ref().map(circuit_breaker),
            })
            .collect(),
        circuit_breaker: state
            .mesh
            .services
            .get(&key)
            .and_then(|s| s.circuit_breaker.as_ref())
            .map(circuit_breaker),
    }
}

/// A circuit breaker as the policy API sends it.
fn circuit_breaker(b: &crate::model::CircuitBreaker) -> CircuitBreaker {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let rate = b.success_rate.as_ref();
    CircuitBreaker {
        consecutive_failures: b.consecutive_failures,
        min_success_permille: rate.map_or(0, |r| r.min_permille),
        window_ms: rate.map_or(0, |r| ms(r.window)),
        min_requests: rate.map_or(0, |r| r.min_requests),
        base_ejection_ms: ms(b.base_ejection),
        max_ejection_ms: ms(b.max_ejection),
        max_ejection_percent: b.max_ejection_percent,
    }
}

#[cfg(test)]
mod tests;
