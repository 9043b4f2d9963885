//! What a policy change would break: `POST /api/v1/authz/diff` compares the model's decisions
//! before and after, for every edge, and joins the traffic each edge carried in the window.
//!
//! The body is YAML read by the mesh.yaml parser ([`proposed`]): either a whole mesh.yaml (its
//! AuthorizationPolicies replace all current ones, its Namespaces' `defaultPolicyMode` replace
//! theirs), or only AuthorizationPolicy documents (each replaces the current policy of its
//! namespace and name, or is added). Policy-only documents are checked against the current
//! model's namespaces and workloads (the parser sees them as declared after the body, so the
//! lines of its errors are the body's own).
//!
//! [`diff`] evaluates, with the model evaluator ([`super::decide`]), every (caller workload,
//! target workload, declared port) as an opaque connection or request outside every route
//! (`route: null`), and for each distinct route of a policy covering that port in either version
//! one request standing for it (its first method, `GET` when it names none, at its path prefix,
//! `/` when none). An entry is reported when the verdict differs. Callers are the mesh's
//! workloads (by their SPIFFE id); unauthenticated callers are not enumerated.
//!
//! Rates: the window's edges (the caller's outbound view) from the caller workload to the target
//! workload, over the query's window, whatever the port (the window does not split edges by
//! port). `live_denials` counts the changes to an enforced `deny` on an edge with traffic.

use std::collections::BTreeMap;
use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use serde::Serialize;

use super::{Request, Target, Verdict, decide, workload_id};
use crate::config::{self, ConfigError, Protocol};
use crate::model::{HttpMatch, Mesh, Origin, Policy};

/// Why the body cannot be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{0}: holds no document: send a mesh.yaml or AuthorizationPolicy documents (see docs/mesh-yaml.md)"
    )]
    Empty(String),
}

/// The mesh the body would make (see the module docs).
pub fn proposed(current: &Mesh, file: &Path, text: &str) -> Result<Mesh, DiffError> {
    let kinds = match MarkedYamlOwned::load_from_str(text) {
        Ok(docs) => docs.iter().filter_map(kind_of).collect::<Vec<_>>(),
        // the parser reports the syntax error with its line
        Err(_) => {
            return Err(config::parse(file, text).err().map_or_else(
                || DiffError::Empty(file.display().to_string()),
                DiffError::Config,
            ));
        }
    };
    if kinds.is_empty() {
        return Err(DiffError::Empty(file.display().to_string()));
    }
    let mut mesh = current.clone();
    if kinds.iter().all(|k| k == "AuthorizationPolicy") {
        let text = format!("{text}\n---\n{}", declared(current));
        let parsed = config::parse(file, &text)?;
        for p in &parsed.policies {
            let policy = policy_of(p);
            match mesh
                .policies
                .iter_mut()
                .find(|x| x.namespace == policy.namespace && x.name == policy.name)
            {
                Some(slot) => *slot = policy,
                None => mesh.policies.push(policy),
            }
        }
    } else {
        let parsed = config::parse(file, text)?;
        mesh.policies = parsed.policies.iter().map(policy_of).collect();
        for (name, ns) in &parsed.namespaces {
            if let Some(current) = mesh.namespaces.get_mut(name) {
                current.default_mode = ns.default_mode;
            }
        }
    }
    Ok(mesh)
}

/// The `kind` of a document (empty when it has none: the parser reports it); `None` for an
/// empty document.
fn kind_of(doc: &MarkedYamlOwned) -> Option<String> {
    let entries = match &doc.data {
        YamlDataOwned::Value(ScalarOwned::Null) => return None,
        YamlDataOwned::Mapping(entries) => entries,
        _ => return Some(String::new()),
    };
    let kind = entries.iter().find_map(|(k, v)| match (&k.data, &v.data) {
        (
            YamlDataOwned::Value(ScalarOwned::String(k)),
            YamlDataOwned::Value(ScalarOwned::String(v)),
        ) if k == "kind" => Some(v.to_string()),
        _ => None,
    });
    Some(kind.unwrap_or_default())
}

fn policy_of(p: &config::AuthorizationPolicy) -> Policy {
    Policy {
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
    }
}

/// The current namespaces and workloads as mesh.yaml documents, for policy-only bodies: what a
/// policy may name (workload names that are no DNS label cannot be named by a policy, and the
/// service account plays no part in checking one).
fn declared(mesh: &Mesh) -> String {
    let mut out = Vec::new();
    for ns in mesh.namespaces.values() {
        out.push(format!(
            "apiVersion: onemesh.dev/v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
            ns.name
        ));
    }
    for w in mesh
        .workloads
        .values()
        .filter(|w| crate::model::check::is_dns_label(&w.name))
    {
        let ports: Vec<String> = w
            .ports
            .iter()
            .map(|p| {
                let protocol = match p.protocol {
                    Protocol::Http => "http",
                    Protocol::Opaque => "opaque",
                };
                format!("{{port: {}, protocol: {protocol}}}", p.port)
            })
            .collect();
        out.push(format!(
            "apiVersion: onemesh.dev/v1\nkind: Workload\nmetadata: {{name: {}, namespace: {}}}\nspec: {{serviceAccount: sa, ports: [{}]}}\n",
            w.name,
            w.namespace,
            ports.join(", ")
        ));
    }
    out.join("---\n")
}

/// Requests per caller workload → target workload in the window.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    edges: BTreeMap<(String, String, String, String), (f64, u64)>,
}

impl Rates {
    /// From the window's edges (those whose caller is a known workload).
    pub fn from_edges(edges: &[onemesh_window::api::EdgeStats]) -> Rates {
        let mut rates = Rates::default();
        for e in edges {
            let (Some(ns), Some(w)) = (&e.src_namespace, &e.src_workload) else {
                continue;
            };
            let key = (
                ns.clone(),
                w.clone(),
                e.dst_namespace.clone(),
                e.dst_workload.clone(),
            );
            let slot = rates.edges.entry(key).or_default();
            slot.0 += e.rps;
            slot.1 += e.requests;
        }
        rates
    }

    fn of(&self, from: (&str, &str), to: (&str, &str)) -> (f64, u64) {
        let key = (
            from.0.to_string(),
            from.1.to_string(),
            to.0.to_string(),
            to.1.to_string(),
        );
        self.edges.get(&key).copied().unwrap_or_default()
    }
}

/// The answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub live_denials: usize,
}

/// One edge whose decision changes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Change {
    pub from: Caller,
    pub to: To,
    /// `None`: the whole port (an opaque connection, or a request outside every route).
    pub route: Option<RouteShown>,
    pub before: Side,
    pub after: Side,
    pub rps: f64,
    pub requests: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub namespace: String,
    pub workload: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct To {
    pub namespace: String,
    pub workload: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RouteShown {
    pub methods: Vec<String>,
    pub path_prefix: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    pub decision: Verdict,
    pub policy: String,
}

/// Every edge whose verdict differs between `before` and `after` (same workloads), with rates.
pub fn diff(before: &Mesh, after: &Mesh, trust_domain: &str, rates: &Rates) -> Diff {
    let mut changes = Vec::new();
    for caller in before.workloads.values() {
        let Some(id) = workload_id(trust_domain, &caller.namespace, &caller.service_account) else {
            continue;
        };
        for target in before.workloads.values() {
            let (rps, requests) = rates.of(
                (&caller.namespace, &caller.name),
                (&target.namespace, &target.name),
            );
            for port in &target.ports {
                let t = Target {
                    namespace: &target.namespace,
                    workload: &target.name,
                    port: port.port,
                };
                let mut routes: Vec<&HttpMatch> = Vec::new();
                for p in super::in_force(before, t).chain(super::in_force(after, t)) {
                    for r in &p.routes {
                        if !routes.contains(&r) {
                            routes.push(r);
                        }
                    }
                }
                let cases = std::iter::once(None).chain(routes.into_iter().map(Some));
                for case in cases {
                    // the route's methods one by one (GET when it names none): the first whose
                    // verdict changes is reported
                    let methods: Vec<&str> = match case {
                        Some(m) if !m.methods.is_empty() => {
                            m.methods.iter().map(String::as_str).collect()
                        }
                        _ => vec!["GET"],
                    };
                    let changed = methods.into_iter().find_map(|method| {
                        let request = case.map(|m| Request {
                            method,
                            path: m.path_prefix.as_deref().unwrap_or("/"),
                        });
                        let b = decide(before, Some(&id), t, request);
                        let a = decide(after, Some(&id), t, request);
                        (a.verdict != b.verdict).then_some((b, a))
                    });
                    let Some((b, a)) = changed else {
                        continue;
                    };
                    changes.push(Change {
                        from: Caller {
                            id: id.to_string(),
                            namespace: caller.namespace.clone(),
                            workload: caller.name.clone(),
                        },
                        to: To {
                            namespace: target.namespace.clone(),
                            workload: target.name.clone(),
                            port: port.port,
                        },
                        route: case.map(|m| RouteShown {
                            methods: m.methods.clone(),
                            path_prefix: m.path_prefix.clone(),
                        }),
                        before: Side {
                            decision: b.verdict,
                            policy: b.policy,
                        },
                        after: Side {
                            decision: a.verdict,
                            policy: a.policy,
                        },
                        rps,
                        requests,
                    });
                }
            }
        }
    }
    let live_denials = changes
        .iter()
        .filter(|c| c.after.decision == Verdict::Deny && c.requests > 0)
        .count();
    Diff {
        changes,
        live_denials,
    }
}
