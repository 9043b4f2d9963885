//! Inbound authorization: may this caller (a SPIFFE id, or unauthenticated) use this port and,
//! for HTTP, this method and path?
//!
//! The model (DESIGN.md): when no authorization names a port of this workload, meshed callers
//! from the same namespace are allowed and everyone else is denied (policy
//! [`DEFAULT_SAME_NAMESPACE`]). When any authorization names the port, only callers matching one
//! of them are allowed; a caller matching none is denied by the authorizations in force on that
//! port, and the 403 names them (their names joined by `,`), so an operator knows which policy
//! to edit. An authorization
//! with an empty `ports` list applies to every port. Routes (method + path prefix) only filter
//! HTTP requests; an opaque TCP connection is allowed only by an authorization without routes.
//!
//! Routes match the raw request path, which must first pass [`crate::path::check`] (the type
//! [`CheckedPath`] says it did): once ambiguous spellings (`..`, `%2f`, `;`, double encoding) are
//! refused there is nothing left to normalize, and the path matched is exactly the path the
//! application receives.
//!
//! The same snapshot carries the workload's **declared ports** ([`DeclaredPorts`]): the inbound
//! forwards only to those, and never to the proxy's own ports ([`check_port`], and
//! [`plain_target`] for redirected plain connections). Nothing is declared until the first
//! policy arrives, so nothing is forwarded before then.
//!
//! **Modes** ([`Mode`]): the decision is computed as above, and then a denial is softened to
//! [`Verdict::WouldDeny`] (let through, counted and logged as `would_deny`) only when whatever
//! decided it is in audit mode: for a denial by the authorizations in force on the port, when
//! EVERY one of them is `audit` (one `enforce` authorization covering the port keeps denials
//! enforced, and an audit authorization on another port changes nothing here); for a denial by
//! the default, when the namespace's default mode ([`Authorizations::default_mode`]) is `audit`
//! (which never softens a port that an authorization covers). Refusals before policy (an
//! undeclared port, an ambiguous path) are never softened.
//!
//! [`authorize`] is a pure function over a snapshot, so the data path just reads the current
//! `Arc<Authorizations>` from a watch and calls it. The control plane's explain endpoint
//! ([`crate::control_admin`]) calls the same function on the same snapshot, and lists the
//! per-authorization predicates with [`Authorization::evaluate`].

use std::net::SocketAddr;
use std::sync::Arc;

use onemesh_identity::SpiffeId;

use crate::path::CheckedPath;

/// The policy name of the default (no authorization names the port).
pub const DEFAULT_SAME_NAMESPACE: &str = "default:same-namespace";

/// A method + path prefix filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Methods; empty matches all.
    pub methods: Vec<http::Method>,
    /// Path prefix.
    pub path_prefix: String,
}

impl RouteMatch {
    /// The prefix matches whole segments: `/v1` matches `/v1` and `/v1/pay`, never `/v1admin`.
    pub(crate) fn matches(&self, method: &http::Method, path: CheckedPath<'_>) -> bool {
        let prefix = self.path_prefix.as_str();
        let path_ok = match path.as_str().strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        };
        (self.methods.is_empty() || self.methods.contains(method)) && path_ok
    }
}

/// What a denial does: refuse it, or let it through as `would_deny` (a dry run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are refused (the default).
    #[default]
    Enforce,
    /// Denials are let through, counted and logged as `would_deny`.
    Audit,
}

impl Mode {
    /// `enforce` or `audit` (explain answers, decision records).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// One authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Its name (metric label, 403 body).
    pub name: Arc<str>,
    /// Ports of this workload it covers; empty = all.
    pub ports: Vec<u16>,
    /// HTTP routes it allows; empty = all requests (and opaque connections).
    pub routes: Vec<RouteMatch>,
    /// Identities allowed.
    pub identities: Vec<SpiffeId>,
    /// Namespaces whose meshed callers are allowed.
    pub namespaces: Vec<String>,
    /// Whether callers without a mesh identity are allowed.
    pub unauthenticated: bool,
    /// Whether a denial on its ports is enforced (see the module doc).
    pub mode: Mode,
}

/// The predicates of one authorization for one request (the explain endpoint's detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// It covers the port.
    pub covers_port: bool,
    /// It admits the caller.
    pub admits_caller: bool,
    /// It allows the request (method and path; or the opaque connection).
    pub matches_request: bool,
    /// The first of its routes matching the request (`None` without routes, or when none does).
    pub route: Option<usize>,
}

impl Authorization {
    /// Evaluates the same predicates as [`authorize`] for this authorization alone.
    pub fn evaluate(
        &self,
        port: u16,
        caller: Option<&SpiffeId>,
        request: Option<(&http::Method, CheckedPath<'_>)>,
    ) -> Evaluation {
        Evaluation {
            covers_port: self.covers(port),
            admits_caller: self.admits(caller),
            matches_request: self.allows_request(request),
            route: request.and_then(|(method, path)| {
                self.routes.iter().position(|r| r.matches(method, path))
            }),
        }
    }

    fn covers(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn admits(&self, caller: Option<&SpiffeId>) -> bool {
        match caller {
            Some(id) => {
                self.identities.contains(id) || self.namespaces.iter().any(|n| n == id.namespace())
            }
            None => self.unauthenticated,
        }
    }

    fn allows_request(&self, request: Option<(&http::Method, CheckedPath<'_>)>) -> bool {
        match request {
            Some((method, path)) => {
                self.routes.is_empty() || self.routes.iter().any(|r| r.matches(method, path))
            }
            None => self.routes.is_empty(),
        }
    }
}

/// The authorizations in force for this workload, and the ports it declares; with them, the
/// other per-request rules of the inbound: rate limits and faults (both empty unless declared).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Authorizations {
    /// All of them.
    pub list: Vec<Authorization>,
    /// The only ports the inbound forwards to (none by default: nothing is forwarded).
    pub ports: DeclaredPorts,
    /// Rate limits (`RateLimitPolicy`), each with its buckets ([`crate::inbound::limit`]).
    pub limits: Vec<crate::inbound::limit::RateLimit>,
    /// Faults of the routes over this workload ([`crate::inbound::fault`]).
    pub faults: Vec<crate::inbound::fault::FaultRule>,
    /// The mode of the default (ports no authorization covers), from the namespace.
    pub default_mode: Mode,
}

impl Authorizations {
    /// Takes over the buckets of the limits of `old` that this snapshot keeps unchanged (a
    /// policy update must not refill them).
    pub fn adopt_buckets(&mut self, old: &Authorizations) {
        for limit in &mut self.limits {
            if let Some(same) = old.limits.iter().find(|o| o.name == limit.name) {
                limit.adopt(same);
            }
        }
    }
}

/// A workload's declared ports, sorted: the ports its application serves, as the inbound
/// reaches them. Looked up once per connection (a binary search in a few entries).
/// The default declares nothing (nothing is forwarded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredPorts {
    ports: Box<[u16]>,
    /// False until the first policy arrived: nothing is known yet, so a refusal is temporary
    /// (503) rather than final (403).
    known: bool,
}

impl Default for DeclaredPorts {
    fn default() -> Self {
        Self::new([])
    }
}

impl DeclaredPorts {
    /// The ports, in any order, duplicates allowed.
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut ports: Vec<u16> = ports.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        Self {
            ports: ports.into(),
            known: true,
        }
    }

    /// No policy yet (a proxy's first start, before the control plane answered).
    pub fn awaiting() -> Self {
        Self {
            ports: Box::default(),
            known: false,
        }
    }

    /// Whether `port` is declared.
    pub fn contains(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    /// The ports, ascending.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports
    }
}

/// Why the inbound refuses to forward a connection to the port it names, before any byte is
/// forwarded. Each becomes a bounded metric reason ([`PortRefusal::reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRefusal {
    /// The port is not one of the workload's declared ports.
    #[error(
        "port {0} is not a declared port of this workload; if its app serves that port, declare \
         it (a container port, or a Service's target port)"
    )]
    Undeclared(u16),
    /// The port is one of the proxy's own listeners (inbound, outbound, admin, tcp forwards):
    /// forwarding there would let a caller act as this workload.
    #[error("port {0} is one of the proxy's own ports; the inbound never forwards to it")]
    ProxyPort(u16),
    /// No inbound policy has arrived yet (a proxy's first start): retry shortly.
    #[error(
        "this proxy has not received its inbound policy from the control plane yet; retry shortly"
    )]
    AwaitingPolicy,
    /// A plain connection that was not redirected by iptables names no port at all.
    #[error("the plain connection was not redirected, so it names no port; call through a proxy")]
    NoOriginalDst,
}

impl PortRefusal {
    /// The metric label (`proxy_error_total{reason}`) and `onemesh-error` value.
    pub fn reason(self) -> &'static str {
        match self {
            PortRefusal::Undeclared(_) => "undeclared_port",
            PortRefusal::ProxyPort(_) => "proxy_port",
            PortRefusal::AwaitingPolicy => "awaiting_policy",
            PortRefusal::NoOriginalDst => "no_original_dst",
        }
    }
}

/// Whether the inbound may forward to `port`: it must be declared and must not be one of
/// `proxy_ports` (the proxy's own listeners; refused even when declared).
pub fn check_port(
    declared: &DeclaredPorts,
    proxy_ports: &[u16],
    port: u16,
) -> Result<u16, PortRefusal> {
    if proxy_ports.contains(&port) {
        return Err(PortRefusal::ProxyPort(port));
    }
    if !declared.known {
        return Err(PortRefusal::AwaitingPolicy);
    }
    if !declared.contains(port) {
        return Err(PortRefusal::Undeclared(port));
    }
    Ok(port)
}

/// The target port of a plain (unauthenticated) connection: its original destination's port,
/// if it was redirected there and [`check_port`] allows it.
pub fn plain_target(
    original_dst: Option<SocketAddr>,
    declared: &DeclaredPorts,
    proxy_ports: &[u16],
) -> Result<u16, PortRefusal> {
    let dst = original_dst.ok_or(PortRefusal::NoOriginalDst)?;
    check_port(declared, proxy_ports, dst.port())
}

/// What a decision does with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied: refused.
    Deny,
    /// Denied in audit mode: let through, counted and logged as `would_deny`.
    WouldDeny,
}

impl Verdict {
    /// `allow`, `deny` or `would_deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// The outcome of an authorization check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed, denied, or denied in audit mode.
    pub verdict: Verdict,
    /// The policy that allowed, or the policies in force that denied, joined by `,` (bounded:
    /// from config or a constant).
    pub policy: Arc<str>,
    /// The mode it was taken in: the allowing authorization's; for a denial by authorizations,
    /// `audit` only when all of them are; for the default, the namespace's default mode.
    pub mode: Mode,
    /// Whether the default decided (no authorization covers the port).
    pub default: bool,
}

impl Decision {
    /// Whether the request goes on to the app (allowed, or denied in audit mode).
    pub fn lets_through(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// Decides whether `caller` may reach `port`; `request` is the HTTP method and checked path, or
/// `None` for an opaque connection. An allowed request costs what it did before modes: no
/// allocation, and no more work than finding the first admitting authorization.
pub fn authorize(
    auths: &Authorizations,
    own_namespace: &str,
    port: u16,
    caller: Option<&SpiffeId>,
    request: Option<(&http::Method, CheckedPath<'_>)>,
) -> Decision {
    let mut in_force: Option<Arc<str>> = None;
    let mut enforced = false;
    for auth in auths.list.iter().filter(|a| a.covers(port)) {
        if auth.admits(caller) && auth.allows_request(request) {
            return Decision {
                verdict: Verdict::Allow,
                policy: auth.name.clone(),
                mode: auth.mode,
                default: false,
            };
        }
        enforced |= auth.mode == Mode::Enforce;
        // Only the deny path pays for naming several policies.
        in_force = Some(match in_force {
            None => auth.name.clone(),
            Some(names) => format!("{names},{}", auth.name).into(),
        });
    }
    if let Some(policy) = in_force {
        let (verdict, mode) = if enforced {
            (Verdict::Deny, Mode::Enforce)
        } else {
            (Verdict::WouldDeny, Mode::Audit)
        };
        return Decision {
            verdict,
            policy,
            mode,
            default: false,
        };
    }
    let verdict = if caller.is_some_and(|id| id.namespace() == own_namespace) {
        Verdict::Allow
    } else if auths.default_mode == Mode::Audit {
        Verdict::WouldDeny
    } else {
        Verdict::Deny
    };
    Decision {
        verdict,
        policy: default_policy_name(),
        mode: auths.default_mode,
        default: true,
    }
}

/// [`DEFAULT_SAME_NAMESPACE`] as a decision's policy (built once: most requests are decided by
/// the default, and a decision must not allocate).
fn default_policy_name() -> Arc<str> {
    static NAME: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| DEFAULT_SAME_NAMESPACE.into());
    NAME.clone()
}

#[cfg(test)]
mod tests;
