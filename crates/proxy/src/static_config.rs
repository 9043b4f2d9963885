//! Static mode: the JSON configuration file (`ONEMESH_PROXY_STATIC_CONFIG`) and a local issuer,
//! implementing the seams of [`crate::discover`] without a control plane.
//!
//! The file lists meshed services (endpoints with their expected identities, routes), extra
//! outbound TCP listeners (`tcp_forwards`, for local mode without iptables), the inbound's
//! declared ports (`inbound.ports`: the only ports it forwards to; none when absent), the
//! inbound authorizations and rate limits (`inbound.rate_limits`). It is parsed with `deny_unknown_fields`, and every error names the field.
//! These implementations are also the test doubles of the seams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::{Issued, Issuer, SpiffeId};
use serde::Deserialize;
use tokio::sync::watch;

use crate::discover::{
    Backend, BoxFuture, Certifier, CertifyError, Discover, DiscoverError, Endpoint,
    EndpointProtocol, InboundPolicy, Resolution, Route, Service, Target,
};
use crate::policy::{Authorization, Authorizations, DeclaredPorts, Mode, RouteMatch};

/// The file's top level.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Meshed services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Extra outbound listeners that carry opaque TCP to a service.
    #[serde(default)]
    pub tcp_forwards: Vec<TcpForwardSpec>,
    /// Inbound policy.
    #[serde(default)]
    pub inbound: InboundSpec,
}

fn default_port() -> u16 {
    80
}
fn default_weight() -> u32 {
    1
}
fn default_prefix() -> String {
    "/".to_string()
}

/// A meshed service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Service port (default 80).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Original destination addresses (e.g. a cluster IP) that mean this service when traffic is
    /// redirected by iptables.
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
}

/// `http` or `opaque`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolSpec {
    /// HTTP (detected).
    #[default]
    Http,
    /// Opaque TCP.
    Opaque,
}

/// One endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The endpoint's inbound proxy address.
    pub addr: SocketAddr,
    /// The app port behind it.
    pub target_port: u16,
    /// The identity it must prove.
    pub identity: SpiffeId,
    /// Workload name.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// Weight (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Protocol (default http).
    #[serde(default)]
    pub protocol: ProtocolSpec,
}

/// One outbound route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Route name.
    pub name: String,
    /// Methods (empty = all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix (default "/").
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retry even non-idempotent requests.
    #[serde(default)]
    pub retryable: bool,
    /// The split: `<service>.<namespace>` names with weights (empty: the service itself).
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

/// One backend of a route's split.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// `<service>.<namespace>`.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
}

/// An extra outbound TCP listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpForwardSpec {
    /// Address to listen on (port 0 picks one; the bound address is logged).
    pub listen: SocketAddr,
    /// Service name (`<svc>.<ns>` etc.).
    pub service: String,
    /// Service port (default 80).
    #[serde(default = "default_port")]
    pub port: u16,
}

/// Inbound policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    /// The workload's declared ports: the only ports the inbound forwards to (none when absent:
    /// nothing is forwarded).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Authorizations.
    #[serde(default)]
    pub authorizations: Vec<AuthorizationSpec>,
    /// Rate limits (per workload, in total and per caller identity).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// The mode of the default (ports no authorization covers): `enforce` (default) or `audit`.
    #[serde(default)]
    pub default_mode: Mode,
}

/// One rate limit of the inbound (see [`crate::inbound::limit`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Name (metric label, 429 body).
    pub name: String,
    /// Ports (empty = all).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Every caller together.
    #[serde(default)]
    pub total: Option<RateSpec>,
    /// Each caller identity on its own.
    #[serde(default)]
    pub identity: Option<RateSpec>,
}

/// A token bucket's rate.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Requests per second (at least 1).
    pub requests_per_second: u32,
    /// Requests at once (default: the rate).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateSpec {
    fn rate(self) -> crate::inbound::limit::Rate {
        crate::inbound::limit::Rate {
            per_second: self.requests_per_second.max(1),
            burst: self.burst.unwrap_or(self.requests_per_second).max(1),
        }
    }
}

/// One authorization.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSpec {
    /// Name.
    pub name: String,
    /// Ports (empty = all).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Routes (empty = all).
    #[serde(default)]
    pub routes: Vec<RouteMatchSpec>,
    /// Allowed identities.
    #[serde(default)]
    pub identities: Vec<SpiffeId>,
    /// Allowed namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Allow unauthenticated callers.
    #[serde(default)]
    pub unauthenticated: bool,
    /// `enforce` (default) or `audit`: denials on its ports let through as `would_deny`.
    #[serde(default)]
    pub mode: Mode,
}

/// A route filter of an authorization.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchSpec {
    /// Methods (empty = all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix (default "/").
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
}

/// Why the static configuration or local issuer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// A file could not be read.
    #[error("cannot read {what} at {path}: {source}")]
    Read {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON does not match the schema.
    #[error("static config is invalid: {0}")]
    Json(#[from] serde_json::Error),
    /// A value is invalid.
    #[error("static config field {field} is invalid: {problem}")]
    Invalid {
        /// The field path, e.g. `services[0].routes[1].methods`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The trust bundle or issuer could not be parsed.
    #[error("cannot load {what}: {source}")]
    Identity {
        /// What failed to load.
        what: &'static str,
        /// The identity error.
        source: Box<onemesh_identity::Error>,
    },
}

/// Reads a file into a string, naming it in the error.
pub fn read_file(what: &'static str, path: &Path) -> Result<String, StaticError> {
    std::fs::read_to_string(path).map_err(|source| StaticError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn methods(field: String, methods: &[String]) -> Result<Vec<http::Method>, StaticError> {
    methods
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                StaticError::Invalid {
                    field: field.clone(),
                    problem: format!("{m:?} is not an http method"),
                }
            })
        })
        .collect()
}

fn prefix(field: String, p: &str) -> Result<String, StaticError> {
    if !p.starts_with('/') {
        return Err(StaticError::Invalid {
            field,
            problem: format!("{p:?} must start with /"),
        });
    }
    Ok(p.to_string())
}

/// An extra outbound TCP listener, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpForward {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where its connections go.
    pub target: Target,
}

/// The static configuration turned into the data path's model.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Services keyed by (name, namespace, port).
    pub services: Vec<Service>,
    /// Address aliases of services: index into `services`.
    pub addresses: HashMap<SocketAddr, usize>,
    /// Extra outbound listeners.
    pub tcp_forwards: Vec<TcpForward>,
    /// Inbound authorizations.
    pub authorizations: Authorizations,
}

impl StaticConfig {
    /// Parses the JSON text.
    pub fn from_json(text: &str) -> Result<StaticConfig, StaticError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Validates and converts to the data path's model.
    pub fn load(&self) -> Result<Loaded, StaticError> {
        let mut services = Vec::new();
        let mut addresses = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            if s.name.is_empty() || s.namespace.is_empty() {
                return Err(StaticError::Invalid {
                    field: format!("services[{i}]"),
                    problem: "name and namespace must not be empty".into(),
                });
            }
            let mut endpoints = Vec::new();
            for (j, e) in s.endpoints.iter().enumerate() {
                if e.weight == 0 || e.target_port == 0 {
                    return Err(StaticError::Invalid {
                        field: format!("services[{i}].endpoints[{j}]"),
                        problem: "weight and target_port must be at least 1".into(),
                    });
                }
                endpoints.push(Endpoint {
                    addr: e.addr,
                    target_port: e.target_port,
                    identity: e.identity.clone(),
                    workload: e.workload.as_str().into(),
                    namespace: e.namespace.as_str().into(),
                    weight: e.weight,
                    protocol: match e.protocol {
                        ProtocolSpec::Http => EndpointProtocol::Http,
                        ProtocolSpec::Opaque => EndpointProtocol::Opaque,
                    },
                });
            }
            let mut routes = Vec::new();
            for (j, r) in s.routes.iter().enumerate() {
                routes.push(Route {
                    name: r.name.as_str().into(),
                    methods: methods(format!("services[{i}].routes[{j}].methods"), &r.methods)?,
                    path_prefix: prefix(
                        format!("services[{i}].routes[{j}].path_prefix"),
                        &r.path_prefix,
                    )?,
                    timeout: r.timeout_ms.map(Duration::from_millis),
                    retryable: r.retryable,
                    backends: (!r.backends.is_empty()).then(|| {
                        r.backends
                            .iter()
                            .map(|b| Backend {
                                name: b.name.as_str().into(),
                                weight: b.weight,
                            })
                            .collect()
                    }),
                    retry: None,
                    breaker: None,
                });
            }
            for a in &s.addresses {
                addresses.insert(*a, services.len());
            }
            services.push(Service {
                name: format!("{}.{}", s.name, s.namespace).into(),
                namespace: s.namespace.as_str().into(),
                port: s.port,
                endpoints,
                routes,
                breaker: None,
            });
        }
        let tcp_forwards = self
            .tcp_forwards
            .iter()
            .map(|f| TcpForward {
                listen: f.listen,
                target: Target::Name {
                    host: f.service.to_ascii_lowercase(),
                    port: f.port,
                },
            })
            .collect();
        if self.inbound.ports.contains(&0) {
            return Err(StaticError::Invalid {
                field: "inbound.ports".into(),
                problem: "0 is not a port: list the app's ports, 1-65535".into(),
            });
        }
        let mut list = Vec::new();
        for (i, a) in self.inbound.authorizations.iter().enumerate() {
            let mut routes = Vec::new();
            for (j, r) in a.routes.iter().enumerate() {
                routes.push(RouteMatch {
                    methods: methods(
                        format!("inbound.authorizations[{i}].routes[{j}].methods"),
                        &r.methods,
                    )?,
                    path_prefix: prefix(
                        format!("inbound.authorizations[{i}].routes[{j}].path_prefix"),
                        &r.path_prefix,
                    )?,
                });
            }
            list.push(Authorization {
                name: a.name.as_str().into(),
                ports: a.ports.clone(),
                routes,
                identities: a.identities.clone(),
                namespaces: a.namespaces.clone(),
                unauthenticated: a.unauthenticated,
                mode: a.mode,
            });
        }
        Ok(Loaded {
            services,
            addresses,
            tcp_forwards,
            authorizations: Authorizations {
                list,
                ports: DeclaredPorts::new(self.inbound.ports.iter().copied()),
                limits: self
                    .inbound
                    .rate_limits
                    .iter()
                    .map(|l| {
                        crate::inbound::limit::RateLimit::new(
                            l.name.as_str().into(),
                            l.ports.clone(),
                            l.total.map(RateSpec::rate),
                            l.identity.map(RateSpec::rate),
                            Vec::new(),
                        )
                    })
                    .collect(),
                faults: Vec::new(),
                default_mode: self.inbound.default_mode,
            },
        })
    }
}

/// Splits a host into (service, namespace) per the mesh naming rules:
/// `<svc>.<ns>.svc.<cluster-domain>`, `<svc>.<ns>`, `<svc>` (in `own_namespace`).
pub fn service_name<'a>(host: &'a str, own_namespace: &'a str) -> Option<(&'a str, &'a str)> {
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [svc] => Some((svc, own_namespace)),
        [svc, ns] => Some((svc, ns)),
        [svc, ns, "svc", rest @ ..] if !rest.is_empty() => Some((svc, ns)),
        _ => None,
    }
}

/// [`Discover`] over the static file.
#[derive(Debug)]
pub struct StaticDiscover {
    own_namespace: String,
    by_name: HashMap<(String, String, u16), watch::Sender<Arc<Service>>>,
    by_addr: HashMap<SocketAddr, watch::Sender<Arc<Service>>>,
}

impl StaticDiscover {
    /// Builds the discovery source for a proxy in `own_namespace`.
    pub fn new(loaded: &Loaded, own_namespace: &str) -> Self {
        let mut by_name = HashMap::new();
        let mut senders = Vec::new();
        for s in &loaded.services {
            let (tx, _) = watch::channel(Arc::new(s.clone()));
            let svc = s.name.split('.').next().unwrap_or_default().to_string();
            by_name.insert((svc, s.namespace.to_string(), s.port), tx.clone());
            senders.push(tx);
        }
        let by_addr = loaded
            .addresses
            .iter()
            .filter_map(|(a, i)| senders.get(*i).map(|tx| (*a, tx.clone())))
            .collect();
        Self {
            own_namespace: own_namespace.to_string(),
            by_name,
            by_addr,
        }
    }

    /// Replaces a service's endpoints (tests use this to simulate discovery updates).
    pub fn set_endpoints(&self, name: &str, namespace: &str, port: u16, endpoints: Vec<Endpoint>) {
        if let Some(tx) = self
            .by_name
            .get(&(name.to_string(), namespace.to_string(), port))
        {
            tx.send_modify(|s| {
                let mut next = (**s).clone();
                next.endpoints = endpoints;
                *s = Arc::new(next);
            });
        }
    }

    fn lookup(&self, target: &Target) -> Option<watch::Receiver<Arc<Service>>> {
        match target {
            Target::Name { host, port } => {
                let (svc, ns) = service_name(host, &self.own_namespace)?;
                self.by_name
                    .get(&(svc.to_string(), ns.to_string(), *port))
                    .map(watch::Sender::subscribe)
            }
            Target::Addr(addr) => self.by_addr.get(addr).map(watch::Sender::subscribe),
        }
    }
}

impl Discover for StaticDiscover {
    fn resolve(&self, target: &Target) -> BoxFuture<Result<Resolution, DiscoverError>> {
        let found = match self.lookup(target) {
            Some(rx) => Resolution::Mesh(rx),
            None => Resolution::External,
        };
        Box::pin(async move { Ok(found) })
    }
}

/// [`InboundPolicy`] over the static file.
#[derive(Debug)]
pub struct StaticPolicy {
    tx: watch::Sender<Arc<Authorizations>>,
}

impl StaticPolicy {
    /// Serves these authorizations.
    pub fn new(authorizations: Authorizations) -> Self {
        let (tx, _) = watch::channel(Arc::new(authorizations));
        Self { tx }
    }

    /// Replaces the authorizations (tests use this to simulate policy updates).
    pub fn set(&self, authorizations: Authorizations) {
        self.tx.send_replace(Arc::new(authorizations));
    }
}

impl InboundPolicy for StaticPolicy {
    fn authorizations(&self) -> watch::Receiver<Arc<Authorizations>> {
        self.tx.subscribe()
    }
}

/// [`Certifier`] backed by a local issuer: signs this proxy's CSR for its own id only.
pub struct StaticCertifier {
    issuer: Arc<Issuer>,
    id: SpiffeId,
    lifetime: Duration,
}

impl StaticCertifier {
    /// Signs CSRs for `id` with `issuer`, valid for `lifetime`.
    pub fn new(issuer: Issuer, id: SpiffeId, lifetime: Duration) -> Self {
        Self {
            issuer: Arc::new(issuer),
            id,
            lifetime,
        }
    }
}

impl std::fmt::Debug for StaticCertifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCertifier")
            .field("id", &self.id)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Certifier for StaticCertifier {
    fn certify(&self, csr_der: Vec<u8>) -> BoxFuture<Result<Issued, CertifyError>> {
        let issued = self
            .issuer
            .sign_csr(&csr_der, self.lifetime, |id| *id == self.id)
            .map_err(CertifyError::from);
        Box::pin(async move { issued })
    }
}

#[cfg(test)]
mod tests;
