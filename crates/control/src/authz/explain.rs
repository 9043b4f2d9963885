//! The explain relay: an operator's `GET /api/v1/authz/explain?from=…&to=…&port=…&method=…&path=…`
//! becomes one `POST /authz/explain` to the control-only admin listener of an instance of the
//! target workload, whose proxy answers with its own `authorize()` on its live snapshot.
//!
//! Here: `from` is resolved (a SPIFFE id, `ns/workload` → that workload's identity, or
//! `unauthenticated`), `to` and its declared port (default: the workload's first port) are
//! resolved to the instance's real port (local mode: `Instance.ports`), the proxy is reached over
//! mTLS as tap reaches it (the control plane's own leaf; the proxy must prove the target
//! workload's id, so a process squatting on the address cannot answer), its answer is mapped back
//! to the declared port, and a denial gets the smallest policy change that allows it
//! ([`super::suggest`]).
//!
//! The proxy's answer is relayed field by field (never its raw body): decision, policy, the
//! default flag, port and path checks, the default's mode, and each authorization's predicates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use onemesh_identity::{CredentialStore, SpiffeId};
use serde::{Deserialize, Serialize};

use super::suggest::{Denial, Suggestion, suggest};
use super::{Request, Target};
use crate::model::{Mesh, check};

/// How long the whole exchange with one proxy may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from a proxy.
const MAX_ANSWER: usize = 256 << 10;

/// The operator's question, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainQuery {
    pub from: From,
    pub to_namespace: String,
    pub to_workload: String,
    /// A declared port; `None`: the workload's first.
    pub port: Option<u16>,
    /// Method and path (both or neither: an opaque connection).
    pub request: Option<(String, String)>,
}

/// Who calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    Id(SpiffeId),
    Workload { namespace: String, name: String },
    Unauthenticated,
}

/// Why an explain has no answer; [`ExplainError::status`] gives the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    BadQuery(String),
    #[error("no workload {0} in the mesh: see /api/v1/overview for the workloads")]
    UnknownWorkload(String),
    #[error(
        "workload {0} has no running instance with a control-only admin listener to ask: start it (local: onemesh up; Kubernetes: check its pods)"
    )]
    NoInstance(String),
    #[error("no instance of {workload} answered: {errors}")]
    Unreachable { workload: String, errors: String },
    #[error(
        "the proxy of {instance} did not answer within {TIMEOUT:?}: retry, or check that it is running"
    )]
    Timeout { instance: String },
}

impl ExplainError {
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            ExplainError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ExplainError::UnknownWorkload(_) => StatusCode::NOT_FOUND,
            ExplainError::NoInstance(_) | ExplainError::Unreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ExplainError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

fn bad<T>(what: String) -> Result<T, ExplainError> {
    Err(ExplainError::BadQuery(what))
}

/// `ns/name`, both DNS labels.
fn workload_ref(key: &str, value: &str) -> Result<(String, String), ExplainError> {
    match value.split_once('/') {
        Some((ns, name)) if check::is_dns_label(ns) && check::is_dns_label(name) => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => bad(format!(
            "{key}={value:?}: write <namespace>/<workload>, e.g. card/card"
        )),
    }
}

impl ExplainQuery {
    /// Parses the operator's query string.
    pub fn parse(query: &str) -> Result<ExplainQuery, ExplainError> {
        let (mut from, mut to, mut port, mut method, mut path) = (None, None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "from" => {
                    from = Some(if value == "unauthenticated" {
                        From::Unauthenticated
                    } else if value.starts_with("spiffe://") {
                        match value.parse::<SpiffeId>() {
                            Ok(id) => From::Id(id),
                            Err(e) => return bad(format!("from={value:?}: {e}")),
                        }
                    } else {
                        let (namespace, name) = workload_ref("from", &value)?;
                        From::Workload { namespace, name }
                    })
                }
                "to" => {
                    // `ns/workload:port` is accepted too
                    let (w, p) = match value.rsplit_once(':') {
                        Some((w, p)) => (w, Some(p)),
                        None => (&*value, None),
                    };
                    to = Some(workload_ref("to", w)?);
                    if let Some(p) = p {
                        port = Some(parse_port(p)?);
                    }
                }
                "port" if !value.is_empty() => port = Some(parse_port(&value)?),
                "method" if !value.is_empty() => match check::method(&value) {
                    Ok(m) => method = Some(m),
                    Err(e) => return bad(format!("method={value:?}: {e}")),
                },
                "path" if !value.is_empty() => {
                    if !value.starts_with('/') || value.len() > 4096 {
                        return bad(format!(
                            "path={value:?}: give the request's path, starting with / (at most 4096 bytes)"
                        ));
                    }
                    path = Some(value.into_owned());
                }
                "port" | "method" | "path" => {}
                other => {
                    return bad(format!(
                        "unknown parameter {other:?}: use from, to, port, method, path"
                    ));
                }
            }
        }
        let Some(from) = from else {
            return bad(
                "name the caller: from=<spiffe id | namespace/workload | unauthenticated>".into(),
            );
        };
        let Some((to_namespace, to_workload)) = to else {
            return bad("name the target: to=<namespace>/<workload>".into());
        };
        let request = match (method, path) {
            (Some(m), Some(p)) => Some((m, p)),
            (None, None) => None,
            _ => {
                return bad(
                    "give both method and path (an HTTP request), or neither (an opaque connection)"
                        .into(),
                );
            }
        };
        Ok(ExplainQuery {
            from,
            to_namespace,
            to_workload,
            port,
            request,
        })
    }
}

fn parse_port(p: &str) -> Result<u16, ExplainError> {
    match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => bad(format!("port {p:?}: give a declared port, 1-65535")),
    }
}

/// The proxy's answer (docs/proxy.md, `POST /authz/explain`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ProxyAnswer {
    pub decision: String,
    pub policy: String,
    pub default: bool,
    pub port: PortCheck,
    pub path: PathCheck,
    pub default_mode: String,
    pub policies: Vec<PolicyCheck>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PortCheck {
    pub declared: bool,
    pub refusal: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PathCheck {
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PolicyCheck {
    pub name: String,
    pub mode: String,
    pub covers_port: bool,
    pub admits_caller: bool,
    pub matches_request: bool,
    pub route: Option<usize>,
}

/// The operator's answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explained {
    pub from: Caller,
    pub to: To,
    pub request: Option<RequestShown>,
    pub instance: String,
    pub decision: String,
    pub policy: String,
    pub default: bool,
    /// The policy and route that allowed; `None` unless a policy allowed.
    pub rule: Option<Rule>,
    pub port: PortCheck,
    pub path: PathCheck,
    pub default_mode: String,
    pub policies: Vec<PolicyCheck>,
    pub suggestion: Option<Suggestion>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Caller {
    pub id: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct To {
    pub namespace: String,
    pub workload: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RequestShown {
    pub method: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Rule {
    pub policy: String,
    pub route: Option<usize>,
}

/// What the query names in the model.
struct Resolved {
    caller: Caller,
    caller_id: Option<SpiffeId>,
    target_id: SpiffeId,
    port: u16,
    /// `(shown name, control admin, real port)` of each instance to try, in order.
    instances: Vec<(String, SocketAddr, u16)>,
}

fn resolve(mesh: &Mesh, trust_domain: &str, q: &ExplainQuery) -> Result<Resolved, ExplainError> {
    let caller_of = |id: &SpiffeId| {
        mesh.workloads
            .values()
            .find(|w| w.namespace == id.namespace() && w.service_account == id.service_account())
            .map(|w| (w.namespace.clone(), w.name.clone()))
    };
    let (caller, caller_id) = match &q.from {
        From::Unauthenticated => (
            Caller {
                id: None,
                namespace: None,
                workload: None,
            },
            None,
        ),
        From::Id(id) => {
            let w = caller_of(id);
            (
                Caller {
                    id: Some(id.to_string()),
                    namespace: Some(id.namespace().to_string()),
                    workload: w.map(|(_, name)| name),
                },
                Some(id.clone()),
            )
        }
        From::Workload { namespace, name } => {
            let shown = format!("{namespace}/{name}");
            let w = mesh
                .workloads
                .get(&(namespace.clone(), name.clone()))
                .ok_or(ExplainError::UnknownWorkload(shown.clone()))?;
            let id = super::workload_id(trust_domain, namespace, &w.service_account)
                .ok_or(ExplainError::UnknownWorkload(shown))?;
            (
                Caller {
                    id: Some(id.to_string()),
                    namespace: Some(namespace.clone()),
                    workload: Some(name.clone()),
                },
                Some(id),
            )
        }
    };
    let shown = format!("{}/{}", q.to_namespace, q.to_workload);
    let w = mesh
        .workloads
        .get(&(q.to_namespace.clone(), q.to_workload.clone()))
        .ok_or(ExplainError::UnknownWorkload(shown.clone()))?;
    let port = match (q.port, w.ports.first()) {
        (Some(p), _) => p,
        (None, Some(p)) => p.port,
        (None, None) => {
            return bad(format!(
                "workload {shown} declares no port: give port=<port>"
            ));
        }
    };
    let target_id = super::workload_id(trust_domain, &w.namespace, &w.service_account)
        .ok_or(ExplainError::UnknownWorkload(shown.clone()))?;
    let instances: Vec<_> = w
        .instances
        .iter()
        .enumerate()
        .filter_map(|(i, inst)| {
            let addr = inst.control_admin?;
            Some((
                format!("{}-{i} ({addr})", w.name),
                addr,
                inst.real_port(port),
            ))
        })
        .collect();
    if instances.is_empty() {
        return Err(ExplainError::NoInstance(shown));
    }
    Ok(Resolved {
        caller,
        caller_id,
        target_id,
        port,
        instances,
    })
}

/// Answers `q`: asks an instance of the target (the first that answers) and explains its answer.
pub async fn explain(
    mesh: &Mesh,
    trust_domain: &str,
    credentials: &CredentialStore,
    q: &ExplainQuery,
) -> Result<Explained, ExplainError> {
    let r = resolve(mesh, trust_domain, q)?;
    let tls = credentials.client_config(&r.target_id, &[b"http/1.1"]);
    let mut errors = Vec::new();
    for (shown, addr, real_port) in &r.instances {
        let body = serde_json::json!({
            "caller": r.caller_id.as_ref().map(ToString::to_string),
            "port": real_port,
            "method": q.request.as_ref().map(|(m, _)| m),
            "path": q.request.as_ref().map(|(_, p)| p),
        });
        let asked = tokio::time::timeout(TIMEOUT, ask(*addr, tls.clone(), body.to_string()));
        let answer = match asked.await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                errors.push(format!("{shown}: {e}"));
                continue;
            }
            Err(_) if r.instances.len() == 1 => {
                return Err(ExplainError::Timeout {
                    instance: shown.clone(),
                });
            }
            Err(_) => {
                errors.push(format!("{shown}: no answer within {TIMEOUT:?}"));
                continue;
            }
        };
        return Ok(explained(mesh, q, &r, shown.clone(), answer));
    }
    Err(ExplainError::Unreachable {
        workload: format!("{}/{}", q.to_namespace, q.to_workload),
        errors: errors.join("; "),
    })
}

fn explained(
    mesh: &Mesh,
    q: &ExplainQuery,
    r: &Resolved,
    instance: String,
    a: ProxyAnswer,
) -> Explained {
    let target = Target {
        namespace: &q.to_namespace,
        workload: &q.to_workload,
        port: r.port,
    };
    let request = q
        .request
        .as_ref()
        .map(|(m, p)| Request { method: m, path: p });
    let allowed = a.decision == "allow";
    let rule = (allowed && !a.default && !a.policy.is_empty()).then(|| Rule {
        policy: a.policy.clone(),
        route: a
            .policies
            .iter()
            .find(|p| p.name == a.policy)
            .and_then(|p| p.route),
    });
    let suggestion = (!allowed).then(|| {
        suggest(
            mesh,
            &Denial {
                target,
                caller: r.caller_id.as_ref(),
                request,
                default: a.default,
                port_refusal: a.port.refusal.as_deref(),
                path_error: a.path.error.as_deref(),
            },
        )
    });
    Explained {
        from: r.caller.clone(),
        to: To {
            namespace: q.to_namespace.clone(),
            workload: q.to_workload.clone(),
            port: r.port,
        },
        request: q.request.as_ref().map(|(m, p)| RequestShown {
            method: m.clone(),
            path: p.clone(),
        }),
        instance,
        decision: a.decision,
        policy: a.policy,
        default: a.default,
        rule,
        port: a.port,
        path: a.path,
        default_mode: a.default_mode,
        policies: a.policies,
        suggestion,
    }
}

/// One `POST /authz/explain` to a proxy's control-only admin listener.
async fn ask(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: String,
) -> Result<ProxyAnswer, String> {
    let mut sender = crate::observe::tap::connect_control_admin::<Full<Bytes>>(addr, tls).await?;
    let req = hyper::Request::post("/authz/explain")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned();
        return Err(format!(
            "the proxy answered {status}: {} (is it a proxy of this release?)",
            text.trim()
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the proxy's answer is not understood: {e}"))
}
