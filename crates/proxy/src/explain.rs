//! Why would this proxy allow or deny a request? The answer of `POST /authz/explain` on the
//! control-only admin listener ([`crate::control_admin`]), which the control plane relays to
//! `onemesh authz explain`.
//!
//! It is not a second evaluator: [`explain`] runs the request path's own checks, in the request
//! path's order, on the snapshot the inbound uses at that moment (the same
//! `watch::Receiver<Arc<Authorizations>>`): [`check_port`] (once per connection on the inbound),
//! [`crate::path::check`] (HTTP only), then [`authorize`]. `decision` and `policy` are what those
//! return; a refusal before policy (an undeclared or proxy port, an ambiguous path) is a `deny`
//! with policy `""` and its reason in `port.refusal` / `path.error`, exactly as the inbound refuses
//! it before policy. The per-authorization detail (`policies`) evaluates the same predicates as
//! `authorize` ([`crate::policy::Authorization::evaluate`]) for every authorization the proxy
//! holds, so an operator sees why each one did or did not apply.
//!
//! What it does not do: rate limits and faults (they apply after authorization and do not make a
//! decision), and mapping ports back to declared ones (the control plane does that).

use onemesh_identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::policy::{Authorizations, Verdict, authorize, check_port};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The question, as JSON: `caller` null = unauthenticated; `method` and `path` null = an opaque
/// TCP connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The caller's SPIFFE id, or null.
    pub caller: Option<String>,
    /// The target port as this proxy sees it.
    pub port: u16,
    /// The HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// The HTTP path (a query string after `?` is ignored, as policy ignores it).
    #[serde(default)]
    pub path: Option<String>,
}

/// Why a question could not be answered (400).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The body is not the JSON of a [`Query`].
    #[error(
        "the body is not an explain request: {0}; send JSON like {{\"caller\": \
         \"spiffe://cluster.local/ns/pg/sa/pg\", \"port\": 8080, \"method\": \"GET\", \"path\": \
         \"/\"}} (caller null = unauthenticated, method and path null = an opaque connection)"
    )]
    Json(#[from] serde_json::Error),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the body is larger than {MAX_BODY_BYTES} bytes; send one small JSON object")]
    TooLarge,
    /// `caller` is not a SPIFFE id.
    #[error(
        "caller {0:?} is not a SPIFFE id (spiffe://<trust domain>/ns/<ns>/sa/<sa>); use null for an unauthenticated caller"
    )]
    Caller(String),
    /// `method` is not an HTTP method.
    #[error("method {0:?} is not an HTTP method")]
    Method(String),
    /// Only one of `method` and `path` was given.
    #[error("give both method and path (an HTTP request), or neither (an opaque connection)")]
    HalfRequest,
}

/// The answer (see the module doc and docs/proxy.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// `allow`, `deny` or `would_deny`.
    pub decision: &'static str,
    /// The policy that allowed, the policies in force that denied (joined by `,`), the default's
    /// name, or `""` for a refusal before policy.
    pub policy: String,
    /// Whether the default decided (no authorization covers the port).
    pub default: bool,
    /// The port check.
    pub port: PortAnswer,
    /// The path check.
    pub path: PathAnswer,
    /// The mode of the default.
    pub default_mode: &'static str,
    /// Every authorization the proxy holds, in order, with its predicates for this request.
    pub policies: Vec<PolicyAnswer>,
}

/// Whether the inbound forwards to the port at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortAnswer {
    /// The port is one of the workload's declared ports.
    pub declared: bool,
    /// The refusal's reason (`undeclared_port`, `proxy_port`, `awaiting_policy`), when refused.
    pub refusal: Option<&'static str>,
}

/// Whether the path passes [`crate::path::check`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathAnswer {
    /// It does (always for an opaque connection).
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

/// One authorization's predicates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyAnswer {
    /// Its name.
    pub name: String,
    /// `enforce` or `audit`.
    pub mode: &'static str,
    /// It covers the port.
    pub covers_port: bool,
    /// It admits the caller.
    pub admits_caller: bool,
    /// It allows the request (method and path, or the opaque connection).
    pub matches_request: bool,
    /// The index of its first route matching the request.
    pub route: Option<usize>,
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Query, ExplainError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ExplainError::TooLarge);
    }
    Ok(serde_json::from_slice(body)?)
}

/// Answers `query` against `auths`, for a workload of `namespace` whose proxy listens on
/// `proxy_ports`.
pub fn explain(
    auths: &Authorizations,
    namespace: &str,
    proxy_ports: &[u16],
    query: &Query,
) -> Result<Answer, ExplainError> {
    let caller = match &query.caller {
        Some(c) => Some(
            c.parse::<SpiffeId>()
                .map_err(|_| ExplainError::Caller(c.clone()))?,
        ),
        None => None,
    };
    let request = match (&query.method, &query.path) {
        (Some(m), Some(p)) => {
            let method = http::Method::from_bytes(m.as_bytes())
                .map_err(|_| ExplainError::Method(m.clone()))?;
            let path = p.split_once('?').map_or(p.as_str(), |(path, _)| path);
            Some((method, path))
        }
        (None, None) => None,
        _ => return Err(ExplainError::HalfRequest),
    };
    let port = query.port;
    let refusal = check_port(&auths.ports, proxy_ports, port).err();
    let checked = match &request {
        Some((method, path)) => match crate::path::check(path) {
            Ok(checked) => Ok(Some((method, checked))),
            Err(e) => Err(e.to_string()),
        },
        None => Ok(None),
    };
    let policies = auths
        .list
        .iter()
        .map(|a| {
            let e = a.evaluate(
                port,
                caller.as_ref(),
                checked.as_ref().ok().copied().flatten(),
            );
            PolicyAnswer {
                name: a.name.to_string(),
                mode: a.mode.as_str(),
                covers_port: e.covers_port,
                admits_caller: e.admits_caller,
                // Without a usable path no route can match.
                matches_request: e.matches_request && checked.is_ok(),
                route: e.route,
            }
        })
        .collect();
    let decided = match (&refusal, &checked) {
        (None, Ok(request)) => {
            let d = authorize(auths, namespace, port, caller.as_ref(), *request);
            (d.verdict, d.policy.to_string(), d.default)
        }
        // Refused before policy, as the inbound refuses it.
        _ => (Verdict::Deny, String::new(), false),
    };
    Ok(Answer {
        decision: decided.0.as_str(),
        policy: decided.1,
        default: decided.2,
        port: PortAnswer {
            declared: auths.ports.contains(port),
            refusal: refusal.map(|r| r.reason()),
        },
        path: PathAnswer {
            ok: checked.is_ok(),
            error: checked.err(),
        },
        default_mode: auths.default_mode.as_str(),
        policies,
    })
}

#[cfg(test)]
mod tests;
