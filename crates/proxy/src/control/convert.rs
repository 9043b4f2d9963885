//! Pure conversions from the control plane's messages to the data path's types, and the one
//! piece of state a destination stream keeps: the endpoint set that snapshots replace and diffs
//! patch.
//!
//! Bad entries (an unparsable address, SPIFFE id or method) are skipped one by one and reported
//! to the caller, never a reason to drop the whole update: the rest of the set is still good, and
//! a skipped authorization or route only ever denies or defaults more, never allows more.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use onemesh_api::{destination as dst, policy as pol};
use onemesh_identity::SpiffeId;

use crate::discover::{
    Backend, BreakerConfig, Endpoint, EndpointProtocol, RetryPolicy, Route, Service, SuccessRate,
};
use crate::inbound::fault::{AbortWith, FaultRule};
use crate::inbound::limit::{Override, Rate, RateLimit};
use crate::policy::{Authorization, Authorizations, DeclaredPorts, Mode, RouteMatch};

/// One entry of a control-plane message that the proxy cannot use (it is skipped).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An endpoint address is not `ip:port`.
    #[error("endpoint address {0:?} is not ip:port; the endpoint is skipped")]
    BadAddr(String),
    /// An endpoint's or caller's SPIFFE id does not parse.
    #[error("{what} {id:?} is not a spiffe id ({reason}); it is skipped")]
    BadId {
        /// What carried it.
        what: &'static str,
        /// The text.
        id: String,
        /// Why.
        reason: String,
    },
    /// A port is out of range.
    #[error("{what} port {port} is out of range 1-65535; it is skipped")]
    BadPort {
        /// What carried it.
        what: &'static str,
        /// The number.
        port: u32,
    },
    /// A method is not an HTTP method token.
    #[error("http method {0:?} is not a method token; the route is skipped")]
    BadMethod(String),
    /// A retry policy's idempotency header is not a header name.
    #[error("idempotency header {0:?} is not a header name; the route is skipped")]
    BadHeader(String),
    /// A fault's header, status or port cannot be used.
    #[error(
        "the fault of route {0:?} has a bad header, abort status or port; the fault is skipped"
    )]
    BadFault(String),
}

fn port(what: &'static str, port: u32) -> Result<u16, ConvertError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConvertError::BadPort { what, port })
}

fn spiffe_id(what: &'static str, id: &str) -> Result<SpiffeId, ConvertError> {
    SpiffeId::from_str(id).map_err(|e| ConvertError::BadId {
        what,
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn methods(list: &[String]) -> Result<Vec<http::Method>, ConvertError> {
    list.iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ConvertError::BadMethod(m.clone()))
        })
        .collect()
}

/// One endpoint.
pub fn endpoint(e: &dst::Endpoint) -> Result<Endpoint, ConvertError> {
    let addr: SocketAddr = e
        .addr
        .parse()
        .map_err(|_| ConvertError::BadAddr(e.addr.clone()))?;
    let identity = spiffe_id("endpoint identity", &e.identity)?;
    let target_port = port("endpoint target", e.target_port)?;
    let protocol = match dst::ProtocolHint::try_from(e.protocol) {
        Ok(dst::ProtocolHint::Opaque) => EndpointProtocol::Opaque,
        _ => EndpointProtocol::Http,
    };
    let workload: Arc<str> = if e.workload.is_empty() {
        identity.service_account().into()
    } else {
        e.workload.as_str().into()
    };
    let namespace: Arc<str> = if e.namespace.is_empty() {
        identity.namespace().into()
    } else {
        e.namespace.as_str().into()
    };
    Ok(Endpoint {
        addr,
        target_port,
        identity,
        workload,
        namespace,
        weight: e.weight.max(1),
        protocol,
    })
}

/// What a destination stream knows about its service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// Whether the last snapshot said the name is a mesh service.
    pub exists: bool,
    /// `<service>.<namespace>`.
    pub name: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service port.
    pub port: u16,
    /// Endpoints by address.
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
}

impl Destination {
    /// Applies one update: a snapshot replaces everything, a diff patches the endpoints. Returns
    /// the entries it had to skip.
    pub fn apply(&mut self, update: dst::Update) -> Vec<ConvertError> {
        let mut skipped = Vec::new();
        match update.kind {
            Some(dst::update::Kind::Snapshot(s)) => {
                self.exists = s.exists;
                self.name = if s.namespace.is_empty() {
                    s.service.clone()
                } else {
                    format!("{}.{}", s.service, s.namespace)
                };
                self.namespace = s.namespace;
                self.port = u16::try_from(s.port).unwrap_or(0);
                self.endpoints.clear();
                for e in &s.endpoints {
                    match endpoint(e) {
                        Ok(e) => {
                            self.endpoints.insert(e.addr, e);
                        }
                        Err(error) => skipped.push(error),
                    }
                }
            }
            Some(dst::update::Kind::Diff(d)) => {
                for addr in &d.remove {
                    match addr.parse::<SocketAddr>() {
                        Ok(addr) => {
                            self.endpoints.remove(&addr);
                        }
                        Err(_) => skipped.push(ConvertError::BadAddr(addr.clone())),
                    }
                }
                for e in &d.add {
                    match endpoint(e) {
                        Ok(e) => {
                            self.endpoints.insert(e.addr, e);
                        }
                        Err(error) => skipped.push(error),
                    }
                }
            }
            None => {}
        }
        skipped
    }

    /// The service as the data path sees it, with `routes` and `breaker` (from the outbound
    /// policy).
    pub fn service(
        &self,
        fallback_name: &str,
        routes: Vec<Route>,
        breaker: Option<Arc<BreakerConfig>>,
    ) -> Service {
        let name = if self.name.is_empty() {
            fallback_name
        } else {
            &self.name
        };
        Service {
            name: name.into(),
            namespace: self.namespace.as_str().into(),
            port: self.port,
            endpoints: if self.exists {
                self.endpoints.values().cloned().collect()
            } else {
                Vec::new()
            },
            routes,
            breaker,
        }
    }
}

/// A service's outbound routes (empty when the name is not in the mesh).
pub fn routes(p: &pol::OutboundPolicy) -> (Vec<Route>, Vec<ConvertError>) {
    let mut skipped = Vec::new();
    if !p.exists {
        return (Vec::new(), skipped);
    }
    let mut out = Vec::new();
    for r in &p.routes {
        let retry = r.retry.as_ref().map(retry_policy).transpose();
        match (methods(&r.methods), retry) {
            (Ok(methods), Ok(retry)) => out.push(Route {
                name: r.name.as_str().into(),
                methods,
                path_prefix: r.path_prefix.clone(),
                timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
                retryable: r.retryable,
                backends: backends(&r.backends),
                retry: retry.map(Arc::new),
                breaker: r.circuit_breaker.as_ref().and_then(breaker),
            }),
            (Err(error), _) | (_, Err(error)) => skipped.push(error),
        }
    }
    (out, skipped)
}

/// A route's retry policy (out-of-range numbers are clamped: the control plane validated them).
fn retry_policy(p: &pol::RetryPolicy) -> Result<RetryPolicy, ConvertError> {
    let idempotency_header = http::HeaderName::from_bytes(p.idempotency_header.as_bytes())
        .map_err(|_| ConvertError::BadHeader(p.idempotency_header.clone()))?;
    let mut on_statuses = [0u64; 4];
    for code in &p.on_statuses {
        if let Some(bit) = code.checked_sub(400).filter(|b| *b < 200) {
            on_statuses[bit as usize / 64] |= 1 << (bit % 64);
        }
    }
    let on_grpc = p
        .on_grpc
        .iter()
        .filter(|c| **c < 32)
        .fold(0u32, |bits, c| bits | (1 << c));
    Ok(RetryPolicy {
        attempts: p.attempts.clamp(1, 10),
        on_connect_failure: p.on_connect_failure,
        on_statuses,
        on_grpc,
        per_try_timeout: (p.per_try_timeout_ms > 0)
            .then(|| Duration::from_millis(p.per_try_timeout_ms)),
        idempotency_header,
        max_body_bytes: p.max_body_bytes.min(1 << 20),
        budget_percent: p.budget_percent,
        budget_min_per_second: p.budget_min_per_second,
    })
}

/// A route's split (`None` when it has no backends: the service itself). A backend's name is
/// resolved later like any other; a bad one only ever fails the requests drawn to it.
fn backends(list: &[pol::Backend]) -> Option<Arc<[Backend]>> {
    (!list.is_empty()).then(|| {
        list.iter()
            .map(|b| Backend {
                name: b.name.as_str().into(),
                weight: b.weight,
            })
            .collect()
    })
}

/// A circuit breaker's settings, defaults filled in (`None`: no rule is set, so no breaker: it
/// would never trip). Out-of-range values are clamped: a breaker is only ever a little more or
/// less eager, never a reason to drop the route.
pub fn breaker(b: &pol::CircuitBreaker) -> Option<Arc<BreakerConfig>> {
    let success_rate = (b.min_success_permille > 0).then(|| SuccessRate {
        min_permille: u16::try_from(b.min_success_permille.min(1000)).unwrap_or(1000),
        window: Duration::from_millis(b.window_ms.max(1)),
        min_requests: b.min_requests.max(1),
    });
    if b.consecutive_failures == 0 && success_rate.is_none() {
        return None;
    }
    let ms = |v: u64, default: Duration| {
        if v == 0 {
            default
        } else {
            Duration::from_millis(v)
        }
    };
    let base_ejection = ms(b.base_ejection_ms, DEFAULT_BASE_EJECTION);
    Some(Arc::new(BreakerConfig {
        consecutive_failures: b.consecutive_failures,
        success_rate,
        base_ejection,
        max_ejection: ms(b.max_ejection_ms, DEFAULT_MAX_EJECTION).max(base_ejection),
        max_ejection_percent: match b.max_ejection_percent {
            0 => DEFAULT_MAX_EJECTION_PERCENT,
            p => u8::try_from(p.min(100)).unwrap_or(100),
        },
    }))
}

/// A breaker's first ejection when the policy does not say.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(1);
/// A breaker's longest ejection when the policy does not say.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(60);
/// The most endpoints a breaker ejects at once, in percent, when the policy does not say.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 50;

/// A workload's inbound authorizations and declared ports (none when it is not declared: the
/// default applies to authorization, and no port is forwarded). An unusable port is skipped: it
/// is only ever one port fewer forwarded.
pub fn authorizations(p: &pol::InboundPolicy) -> (Authorizations, Vec<ConvertError>) {
    let mut skipped = Vec::new();
    let mut list = Vec::new();
    let mut declared = Vec::new();
    if p.exists {
        for p in &p.ports {
            match port("declared", *p) {
                Ok(p) => declared.push(p),
                Err(error) => skipped.push(error),
            }
        }
        for a in &p.authorizations {
            let mut ports = Vec::new();
            for p in &a.ports {
                match port("authorization", *p) {
                    Ok(p) => ports.push(p),
                    Err(error) => skipped.push(error),
                }
            }
            // An authorization whose every port is unusable would otherwise mean "all ports".
            if ports.is_empty() && !a.ports.is_empty() {
                continue;
            }
            let mut routes = Vec::new();
            for r in &a.routes {
                match methods(&r.methods) {
                    Ok(methods) => routes.push(RouteMatch {
                        methods,
                        path_prefix: r.path_prefix.clone(),
                    }),
                    Err(error) => skipped.push(error),
                }
            }
            let mut identities = Vec::new();
            for id in &a.identities {
                match spiffe_id("caller identity", id) {
                    Ok(id) => identities.push(id),
                    Err(error) => skipped.push(error),
                }
            }
            // Every route unusable must not widen to "every request": the authorization still
            // covers its ports (so the same-namespace default does not come back) but admits
            // nobody.
            let admits_nobody = routes.is_empty() && !a.routes.is_empty();
            list.push(Authorization {
                name: a.name.as_str().into(),
                ports,
                routes,
                identities: if admits_nobody {
                    Vec::new()
                } else {
                    identities
                },
                namespaces: if admits_nobody {
                    Vec::new()
                } else {
                    a.namespaces.clone()
                },
                unauthenticated: a.unauthenticated && !admits_nobody,
                mode: mode(a.mode),
            });
        }
    }
    let ports = DeclaredPorts::new(declared);
    // Rate limits and faults (issue 15): kept together so other additions merge cleanly.
    let (limits, faults) = if p.exists {
        (rate_limits(p, &mut skipped), faults(p, &mut skipped))
    } else {
        (Vec::new(), Vec::new())
    };
    let auths = Authorizations {
        list,
        ports,
        limits,
        faults,
        default_mode: mode(p.default_mode),
    };
    (auths, skipped)
}

/// A proto mode. A value this proxy does not know (a newer control plane) is taken as ENFORCE:
/// failing closed, a denial stays a denial rather than being let through.
fn mode(value: i32) -> Mode {
    match pol::Mode::try_from(value) {
        Ok(pol::Mode::Audit) => Mode::Audit,
        Ok(pol::Mode::Enforce) | Err(_) => Mode::Enforce,
    }
}

fn ports_of(what: &'static str, list: &[u32], skipped: &mut Vec<ConvertError>) -> Vec<u16> {
    let mut ports = Vec::new();
    for p in list {
        match port(what, *p) {
            Ok(p) => ports.push(p),
            Err(error) => skipped.push(error),
        }
    }
    ports
}

fn rate(r: Option<&pol::Rate>) -> Option<Rate> {
    r.map(|r| Rate {
        per_second: r.requests_per_second.max(1),
        burst: r.burst.max(1),
    })
}

/// The rate limits. A limit whose every port is unusable is skipped (it would otherwise cover
/// every port); a bad override identity is skipped alone (its callers keep the identity rate).
fn rate_limits(p: &pol::InboundPolicy, skipped: &mut Vec<ConvertError>) -> Vec<RateLimit> {
    let mut out = Vec::new();
    for l in &p.rate_limits {
        let ports = ports_of("rate limit", &l.ports, skipped);
        if ports.is_empty() && !l.ports.is_empty() {
            continue;
        }
        // (a limit whose methods cannot be read is skipped: read wider, it would refuse requests
        // it was not declared for)
        let Ok(methods) = methods(&l.methods).map_err(|e| skipped.push(e)) else {
            continue;
        };
        let mut overrides = Vec::new();
        for o in &l.overrides {
            let Some(rate) = rate(o.rate.as_ref()) else {
                continue;
            };
            let mut identities = Vec::new();
            for id in &o.identities {
                match spiffe_id("rate limit override identity", id) {
                    Ok(id) => identities.push(id),
                    Err(error) => skipped.push(error),
                }
            }
            overrides.push(Override {
                rate,
                identities,
                namespaces: o.namespaces.clone(),
            });
        }
        out.push(
            RateLimit::new(
                l.name.as_str().into(),
                ports,
                rate(l.total.as_ref()),
                rate(l.identity.as_ref()),
                overrides,
            )
            .matching(RouteMatch {
                methods,
                path_prefix: l.path_prefix.clone(),
            }),
        );
    }
    out
}

/// The faults. A fault that cannot be read exactly (a bad method, header, status or port) is
/// skipped whole: a fault applied to more requests than declared would fail real traffic.
fn faults(p: &pol::InboundPolicy, skipped: &mut Vec<ConvertError>) -> Vec<FaultRule> {
    let mut out = Vec::new();
    for f in &p.faults {
        let before = skipped.len();
        let ports = ports_of("fault", &f.ports, skipped);
        let methods = methods(&f.methods).map_err(|e| skipped.push(e)).ok();
        let header = if f.header_name.is_empty() {
            Some(None)
        } else {
            let name = http::HeaderName::from_bytes(f.header_name.as_bytes()).ok();
            let value = if f.header_value.is_empty() {
                Some(None)
            } else {
                http::HeaderValue::from_str(&f.header_value).ok().map(Some)
            };
            match (name, value) {
                (Some(name), Some(value)) => Some(Some((name, value))),
                _ => {
                    skipped.push(ConvertError::BadFault(f.route.clone()));
                    None
                }
            }
        };
        let abort = match (f.abort_http_status, f.abort_grpc_status) {
            (0, 0) => Some(None),
            (status, 0) => http::StatusCode::from_u16(u16::try_from(status).unwrap_or(0))
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .map(|s| Some((AbortWith::Http(s), f.abort_percent))),
            (0, code @ 1..=16) => Some(Some((AbortWith::Grpc(code), f.abort_percent))),
            _ => None,
        };
        let Some(abort) = abort else {
            skipped.push(ConvertError::BadFault(f.route.clone()));
            continue;
        };
        let (Some(methods), Some(header), false) = (methods, header, skipped.len() > before) else {
            continue;
        };
        out.push(FaultRule {
            route: f.route.as_str().into(),
            ports,
            matches: RouteMatch {
                methods,
                path_prefix: f.path_prefix.clone(),
            },
            header,
            abort,
            delay: (f.delay_ms > 0).then(|| (Duration::from_millis(f.delay_ms), f.delay_percent)),
        });
    }
    out
}
