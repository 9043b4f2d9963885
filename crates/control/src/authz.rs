//! Authorization on the model: what the destination's proxy would decide for a caller, a
//! workload's declared port and (HTTP) a method and path, from the mesh the control plane holds.
//!
//! [`decide`] mirrors the proxy's `authorize()` (`crates/proxy/src/policy.rs`; the control plane
//! never imports the proxy, so the rules are written twice and `authz/tests.rs` pins them):
//!
//! - a policy of the workload's namespace **covers** the port when it targets the whole namespace
//!   or this workload, and every port or this one;
//! - when policies cover the port, the first that admits the caller (a listed SPIFFE id, a listed
//!   namespace for a meshed caller, `unauthenticated` for a caller without identity) and allows
//!   the request (no routes; or, for HTTP, a route whose methods include the method and whose
//!   path prefix matches the path in whole segments) allows it; otherwise the policies covering
//!   the port deny it, named together (`a,b`);
//! - when none covers the port, the default allows meshed callers of the same namespace only;
//! - a denial is `would_deny` (let through, counted) when every policy covering the port is in
//!   audit mode, or, for the default, when the namespace's default mode is audit;
//! - a path the proxy refuses as ambiguous (`..`, `%2f`, `;`, double encoding) is denied before
//!   any policy, and an undeclared port is refused before any policy: neither is ever audit.
//!
//! The live decision is the proxy's own (see [`explain`]: the control plane asks the
//! destination's proxy); this evaluator answers where no proxy can be asked: what a policy change
//! would do ([`diff`]), and whether a suggested change allows a call ([`suggest`]).

pub mod diff;
pub mod explain;
pub mod suggest;

use onemesh_identity::SpiffeId;
use serde::Serialize;

use crate::config::PolicyMode;
use crate::model::{HttpMatch, Mesh, Policy};

/// The policy name of the default (no policy covers the port), as the proxy names it.
pub const DEFAULT_SAME_NAMESPACE: &str = "default:same-namespace";

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Denied by policies all in audit mode (or by an audit default): let through and counted.
    WouldDeny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// Why a call is refused before any policy is looked at (never audit).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no workload {0} in the mesh")]
    UnknownWorkload(String),
    #[error("port {port} is not a declared port of {workload}: declare it in the workload's ports")]
    UndeclaredPort { port: u16, workload: String },
    #[error(
        "the path {0:?} is ambiguous (dot segments, encoded separators or dots, ';', double \
         encoding): the proxy refuses it whatever the policy; send the resolved path"
    )]
    AmbiguousPath(String),
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The policy that allowed, the policies on the port that denied (joined by `,`),
    /// [`DEFAULT_SAME_NAMESPACE`], or empty for a refusal.
    pub policy: String,
    /// Decided by the default (no policy covers the port).
    pub default: bool,
    /// The index of the allowing policy's first matching route (`None`: it has no routes).
    pub route: Option<usize>,
    /// Refused before any policy.
    pub refusal: Option<Refusal>,
}

/// An HTTP request (a query after `?` is ignored, as the proxy ignores it); `None` in [`decide`]
/// is an opaque TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// The target of a call: a workload and one of its declared ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub workload: &'a str,
    pub port: u16,
}

/// Whether `policy` covers `target`'s port (its namespace, workload and port).
pub fn covers(policy: &Policy, target: Target<'_>) -> bool {
    policy.namespace == target.namespace
        && policy
            .target_workload
            .as_deref()
            .is_none_or(|w| w == target.workload)
        && policy.target_port.is_none_or(|p| p == target.port)
}

/// Whether `policy` admits the caller (`None`: unauthenticated).
pub fn admits(policy: &Policy, caller: Option<&SpiffeId>) -> bool {
    match caller {
        Some(id) => {
            policy.from_identities.contains(id)
                || policy.from_namespaces.iter().any(|n| n == id.namespace())
        }
        None => policy.from_unauthenticated,
    }
}

/// Whether `m` matches the request: methods (any if empty), path prefix in whole segments.
pub fn route_matches(m: &HttpMatch, request: Request<'_>) -> bool {
    let method_ok = m.methods.is_empty() || m.methods.iter().any(|x| x == request.method);
    let path_ok = match m.path_prefix.as_deref() {
        None => true,
        Some(prefix) => match request.path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        },
    };
    method_ok && path_ok
}

/// Whether `policy` allows the request: `Some(None)` when it has no routes, `Some(Some(i))` by
/// its route `i`, `None` when no route matches (an opaque connection never matches a route).
pub fn matching_route(policy: &Policy, request: Option<Request<'_>>) -> Option<Option<usize>> {
    if policy.routes.is_empty() {
        return Some(None);
    }
    let request = request?;
    policy
        .routes
        .iter()
        .position(|r| route_matches(r, request))
        .map(Some)
}

/// The policies covering the target's port, in the order the proxy holds them.
pub fn in_force<'m>(mesh: &'m Mesh, target: Target<'_>) -> impl Iterator<Item = &'m Policy> {
    mesh.policies.iter().filter(move |p| covers(p, target))
}

/// What the target's proxy would decide for `caller` and `request` (see the module docs).
pub fn decide(
    mesh: &Mesh,
    caller: Option<&SpiffeId>,
    target: Target<'_>,
    request: Option<Request<'_>>,
) -> Decision {
    let refused = |refusal| Decision {
        verdict: Verdict::Deny,
        policy: String::new(),
        default: false,
        route: None,
        refusal: Some(refusal),
    };
    let shown = format!("{}/{}", target.namespace, target.workload);
    let key = (target.namespace.to_string(), target.workload.to_string());
    let Some(workload) = mesh.workloads.get(&key) else {
        return refused(Refusal::UnknownWorkload(shown));
    };
    if !workload.ports.iter().any(|p| p.port == target.port) {
        return refused(Refusal::UndeclaredPort {
            port: target.port,
            workload: shown,
        });
    }
    // the query is not part of what policy matches (the proxy matches the URI's path)
    let request = request.map(|r| Request {
        method: r.method,
        path: r.path.split('?').next().unwrap_or_default(),
    });
    if let Some(r) = request
        && ambiguous_path(r.path)
    {
        return refused(Refusal::AmbiguousPath(r.path.to_string()));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut all_audit = true;
    for policy in in_force(mesh, target) {
        if admits(policy, caller)
            && let Some(route) = matching_route(policy, request)
        {
            return Decision {
                verdict: Verdict::Allow,
                policy: policy.name.clone(),
                default: false,
                route,
                refusal: None,
            };
        }
        names.push(&policy.name);
        all_audit &= policy.mode == PolicyMode::Audit;
    }
    let (allowed, audit, policy, default) = if names.is_empty() {
        let same_namespace = caller.is_some_and(|id| id.namespace() == target.namespace);
        let audit = mesh
            .namespaces
            .get(target.namespace)
            .is_some_and(|ns| ns.default_mode == PolicyMode::Audit);
        (
            same_namespace,
            audit,
            DEFAULT_SAME_NAMESPACE.to_string(),
            true,
        )
    } else {
        (false, all_audit, names.join(","), false)
    };
    let verdict = match (allowed, audit) {
        (true, _) => Verdict::Allow,
        (false, true) => Verdict::WouldDeny,
        (false, false) => Verdict::Deny,
    };
    Decision {
        verdict,
        policy,
        default,
        route: None,
        refusal: None,
    }
}

/// The paths the proxy refuses before any policy (`crates/proxy/src/path.rs`): a backslash, a
/// `;`, a `.` or `..` segment, an encoded separator or dot, a double encoding, a bad
/// percent-encoding (`%00`, `%c0`, `%c1`, `%` without two hex digits).
pub fn ambiguous_path(path: &str) -> bool {
    let b = path.as_bytes();
    let hex = |at: usize| -> Option<u8> {
        let digit = |c: u8| (c as char).to_digit(16);
        let hi = digit(*b.get(at)?)?;
        let lo = digit(*b.get(at + 1)?)?;
        u8::try_from(hi << 4 | lo).ok()
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' | b';' => return true,
            b'%' => match hex(i + 1) {
                None | Some(b'/' | b'\\' | b'.' | 0x00 | 0xc0 | 0xc1) => return true,
                Some(b'%') if hex(i + 3).is_some() => return true,
                Some(_) => {
                    i += 3;
                    continue;
                }
            },
            b'.' if i == 0 || b[i - 1] == b'/' => {
                let len = if b.get(i + 1) == Some(&b'.') { 2 } else { 1 };
                if matches!(b.get(i + len), None | Some(b'/')) {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The SPIFFE id of a workload of the mesh.
pub fn workload_id(trust_domain: &str, namespace: &str, service_account: &str) -> Option<SpiffeId> {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
        .parse()
        .ok()
}

#[cfg(test)]
pub(crate) mod tests;
