//! The serving side's rules in mesh.yaml: a Route's `fault` (delays and aborts injected by the
//! inbound proxies behind the route's service) and `kind: RateLimitPolicy` (token buckets on a
//! workload's inbound, in total and per caller).
//!
//! The types are shared by every source (a Route object's `spec.fault` and a RateLimitPolicy
//! object fold into the same ones); the value checks both sources use are the `check_*`
//! functions, each returning the [`Problem`] to report at the field.

use onemesh_identity::SpiffeId;

use super::yaml::{Errors, Map, Node};
use super::{HttpMatch, Meta, Parse, Problem, Resource, dns_name, namespace_known};

/// A route's fault injection: off unless declared. At least one of `abort` and `delay`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fault {
    /// Answer instead of forwarding.
    pub abort: Option<FaultAbort>,
    /// Wait before forwarding.
    pub delay: Option<FaultDelay>,
    /// Only requests with this header (and value, if given).
    pub header: Option<FaultHeader>,
}

/// How an aborted request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    /// An HTTP status, 400-599.
    Http(u16),
    /// A gRPC status code, 1-16, answered as gRPC (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// `fault.abort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percent: Percent,
}

/// `fault.delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultDelay {
    pub duration: std::time::Duration,
    pub percent: Percent,
}

/// `fault.header`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultHeader {
    /// Lower case.
    pub name: String,
    /// `None`: any value.
    pub value: Option<String>,
}

/// A share of requests, 0-100 %, kept in thousandths of a percent (so that it compares exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u32);

impl Percent {
    pub const ALL: Percent = Percent(100_000);

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

/// `kind: RateLimitPolicy`: token buckets on a workload's inbound (optionally one port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub meta: Meta,
    pub target_workload: String,
    /// `None`: every port of the workload.
    pub target_port: Option<u16>,
    /// The requests limited (default: every request).
    pub matches: HttpMatch,
    pub limits: RateLimits,
}

/// The limits of a RateLimitPolicy (at least one of them).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// Every caller together.
    pub total: Option<Rate>,
    /// Each caller identity on its own (unauthenticated callers share one bucket).
    pub identity: Option<Rate>,
    /// Other per-caller rates for named callers (who share the override's bucket).
    pub overrides: Vec<RateOverride>,
}

/// A token bucket's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests_per_second: u32,
    /// Defaults to `requests_per_second`.
    pub burst: u32,
}

/// `overrides[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateOverride {
    pub rate: Rate,
    pub identities: Vec<SpiffeId>,
    pub namespaces: Vec<String>,
}

/// The largest rate or burst accepted.
pub const MAX_RATE: i64 = 1_000_000;

pub fn check_percent(text: &str) -> Result<Percent, Problem> {
    let bad = || Problem::BadPercent(text.into());
    let value: f64 = text.trim().parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&value) {
        return Err(bad());
    }
    // At most three decimals are kept.
    Ok(Percent((value * 1000.0).round() as u32))
}

pub fn check_http_status(value: i64) -> Result<AbortStatus, Problem> {
    match u16::try_from(value) {
        Ok(s @ 400..=599) => Ok(AbortStatus::Http(s)),
        _ => Err(Problem::BadAbortStatus(value)),
    }
}

pub fn check_grpc_status(value: i64) -> Result<AbortStatus, Problem> {
    match u32::try_from(value) {
        Ok(s @ 1..=16) => Ok(AbortStatus::Grpc(s)),
        _ => Err(Problem::BadGrpcStatus(value)),
    }
}

/// A header name (lower-cased); not one of the mesh's own (`onemesh-…`, removed at the inbound).
pub fn check_header_name(name: &str) -> Result<String, Problem> {
    let lower = name.to_ascii_lowercase();
    let token = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token || lower.starts_with("onemesh-") || lower.starts_with(':') {
        return Err(Problem::BadHeaderName(name.into()));
    }
    Ok(lower)
}

pub fn check_header_value(value: &str) -> Result<String, Problem> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        Ok(value.to_string())
    } else {
        Err(Problem::BadHeaderValue(value.into()))
    }
}

pub fn check_rate(value: i64) -> Result<u32, Problem> {
    match u32::try_from(value) {
        Ok(v) if v >= 1 && value <= MAX_RATE => Ok(v),
        _ => Err(Problem::BadRate(value)),
    }
}

/// A fault as a whole: something to inject.
pub fn check_fault(fault: &Fault) -> Result<(), Problem> {
    if fault.abort.is_none() && fault.delay.is_none() {
        return Err(Problem::EmptyFault);
    }
    Ok(())
}

/// Limits as a whole: something to limit.
pub fn check_limits(limits: &RateLimits) -> Result<(), Problem> {
    if limits.total.is_none() && limits.identity.is_none() && limits.overrides.is_empty() {
        return Err(Problem::NoLimit);
    }
    Ok(())
}

fn percent(errors: &mut Errors, map: &Map<'_>) -> Option<Percent> {
    match map.optional("percent") {
        None => Some(Percent::ALL),
        Some(n) => n.scalar_text(errors).and_then(|t| {
            check_percent(&t)
                .map_err(|p| errors.push(n.line(), &n.path, p))
                .ok()
        }),
    }
}

/// `spec.fault` of a Route.
pub(super) fn fault(errors: &mut Errors, node: &Node<'_>) -> Option<Fault> {
    let map = node.map(errors, &["abort", "delay", "header"])?;
    let mut ok = true;
    let abort = match map.optional("abort") {
        None => None,
        Some(n) => {
            let parsed = n
                .map(errors, &["httpStatus", "grpcStatus", "percent"])
                .and_then(|a| {
                    let status = match (a.optional("httpStatus"), a.optional("grpcStatus")) {
                        (Some(h), None) => h.int(errors).and_then(|v| {
                            check_http_status(v)
                                .map_err(|p| errors.push(h.line(), &h.path, p))
                                .ok()
                        }),
                        (None, Some(g)) => g.int(errors).and_then(|v| {
                            check_grpc_status(v)
                                .map_err(|p| errors.push(g.line(), &g.path, p))
                                .ok()
                        }),
                        _ => {
                            errors.push(n.line(), &n.path, Problem::AbortStatusChoice);
                            None
                        }
                    };
                    let percent = percent(errors, &a);
                    Some(FaultAbort {
                        status: status?,
                        percent: percent?,
                    })
                });
            ok &= parsed.is_some();
            parsed
        }
    };
    let delay = match map.optional("delay") {
        None => None,
        Some(n) => {
            let parsed = n.map(errors, &["duration", "percent"]).and_then(|d| {
                let duration = d.required(errors, "duration").and_then(|n| {
                    let s = n.str(errors)?;
                    super::parse_duration(s)
                        .filter(|d| !d.is_zero())
                        .or_else(|| {
                            errors.push(n.line(), &n.path, Problem::BadDuration(s.into()));
                            None
                        })
                });
                let percent = percent(errors, &d);
                Some(FaultDelay {
                    duration: duration?,
                    percent: percent?,
                })
            });
            ok &= parsed.is_some();
            parsed
        }
    };
    let header = match map.optional("header") {
        None => None,
        Some(n) => {
            let parsed = n.map(errors, &["name", "value"]).and_then(|h| {
                let name = h.required(errors, "name").and_then(|n| {
                    let s = n.str(errors)?;
                    check_header_name(s)
                        .map_err(|p| errors.push(n.line(), &n.path, p))
                        .ok()
                });
                let value = match h.optional("value") {
                    None => Some(None),
                    Some(v) => v.scalar_text(errors).and_then(|s| {
                        check_header_value(&s)
                            .map(Some)
                            .map_err(|p| errors.push(v.line(), &v.path, p))
                            .ok()
                    }),
                };
                Some(FaultHeader {
                    name: name?,
                    value: value?,
                })
            });
            ok &= parsed.is_some();
            parsed
        }
    };
    if !ok {
        return None;
    }
    let fault = Fault {
        abort,
        delay,
        header,
    };
    match check_fault(&fault) {
        Ok(()) => Some(fault),
        Err(p) => {
            errors.push(node.line(), &node.path, p);
            None
        }
    }
}

fn rate(errors: &mut Errors, map: &Map<'_>) -> Option<Rate> {
    let per_second = map.required(errors, "requestsPerSecond").and_then(|n| {
        n.int(errors).and_then(|v| {
            check_rate(v)
                .map_err(|p| errors.push(n.line(), &n.path, p))
                .ok()
        })
    })?;
    let burst = match map.optional("burst") {
        None => Some(per_second),
        Some(n) => n.int(errors).and_then(|v| {
            check_rate(v)
                .map_err(|p| errors.push(n.line(), &n.path, p))
                .ok()
        }),
    }?;
    Some(Rate {
        requests_per_second: per_second,
        burst,
    })
}

/// `kind: RateLimitPolicy`.
pub(super) fn rate_limit_policy(errors: &mut Errors, mesh: &mut Parse, r: Resource<'_>) {
    let ns_ok = namespace_known(errors, mesh, &r);
    let Some(spec) = r.spec.as_ref().and_then(|s| {
        s.map(
            errors,
            &["target", "match", "total", "identity", "overrides"],
        )
    }) else {
        return;
    };
    let namespace = r.meta.namespace.clone();
    let mut ok = ns_ok;
    let mut target_workload = None;
    let mut target_port = None;
    match spec
        .required(errors, "target")
        .and_then(|t| t.map(errors, &["workload", "port"]))
    {
        Some(t) => {
            let workload = t.required(errors, "workload").and_then(|n| {
                let name = dns_name(errors, &n)?;
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
                    return None;
                }
                Some(name)
            });
            if let Some(n) = t.optional("port") {
                match n.port(errors) {
                    Some(port) => {
                        let declared = workload
                            .as_ref()
                            .and_then(|w| mesh.workloads.get(&(namespace.clone(), w.clone())))
                            .filter(|w| mesh.complete(w))
                            .map(|w| w.ports.iter().any(|p| p.port == port));
                        if let (Some(false), Some(w)) = (declared, &workload) {
                            errors.push(
                                n.line(),
                                &n.path,
                                Problem::UndeclaredPort {
                                    port,
                                    workload: format!("{namespace}/{w}"),
                                },
                            );
                            ok = false;
                        }
                        target_port = Some(port);
                    }
                    None => ok = false,
                }
            }
            ok &= workload.is_some();
            target_workload = workload;
        }
        None => ok = false,
    }
    let matches = match spec.optional("match") {
        None => HttpMatch::default(),
        Some(n) => match n
            .map(errors, &["methods", "pathPrefix"])
            .and_then(|m| super::http_match(errors, &m))
        {
            Some(m) => m,
            None => {
                ok = false;
                HttpMatch::default()
            }
        },
    };
    let mut limits = RateLimits::default();
    for (key, slot) in [
        ("total", &mut limits.total),
        ("identity", &mut limits.identity),
    ] {
        if let Some(n) = spec.optional(key) {
            match n
                .map(errors, &["requestsPerSecond", "burst"])
                .and_then(|m| rate(errors, &m))
            {
                Some(r) => *slot = Some(r),
                None => ok = false,
            }
        }
    }
    if let Some(n) = spec.optional("overrides") {
        match n.seq(errors) {
            Some(items) => {
                for item in items {
                    match rate_override(errors, mesh, &item) {
                        Some(o) => limits.overrides.push(o),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    if ok && let Err(p) = check_limits(&limits) {
        errors.push(spec.line(), "spec", p);
        ok = false;
    }
    let (true, Some(target_workload)) = (ok, target_workload) else {
        return;
    };
    if let Some(first) = mesh
        .rate_limits
        .iter()
        .find(|x| x.meta.namespace == namespace && x.meta.name == r.meta.name)
    {
        super::duplicate(errors, "RateLimitPolicy", &r, &first.meta.clone());
        return;
    }
    mesh.rate_limits.push(RateLimitPolicy {
        meta: r.meta,
        target_workload,
        target_port,
        matches,
        limits,
    });
}

fn rate_override(errors: &mut Errors, mesh: &Parse, item: &Node<'_>) -> Option<RateOverride> {
    let m = item.map(errors, &["requestsPerSecond", "burst", "from"])?;
    let rate = rate(errors, &m);
    let from = m
        .required(errors, "from")
        .and_then(|f| f.map(errors, &["identities", "namespaces"]))?;
    let mut ok = true;
    let mut identities = Vec::new();
    if let Some(n) = from.optional("identities") {
        match super::spiffe_ids(errors, &n) {
            Some(list) => identities = list,
            None => ok = false,
        }
    }
    let mut namespaces = Vec::new();
    if let Some(n) = from.optional("namespaces") {
        match n.str_list(errors) {
            Some(list) => {
                for (value, node) in list {
                    if mesh.namespaces.contains_key(&value) {
                        namespaces.push(value);
                    } else {
                        errors.push(node.line(), &node.path, Problem::UnknownNamespace(value));
                        ok = false;
                    }
                }
            }
            None => ok = false,
        }
    }
    if ok && identities.is_empty() && namespaces.is_empty() {
        errors.push(from.line(), &format!("{}.from", item.path), Problem::Empty);
        ok = false;
    }
    let rate = rate?;
    ok.then_some(RateOverride {
        rate,
        identities,
        namespaces,
    })
}
