//! The smallest policy change that allows a denied call, as AuthorizationPolicy documents an
//! operator appends to mesh.yaml or gives to `kubectl apply`.
//!
//! For a denial by policy (or a `would_deny`): one policy scoped to the target workload and its
//! declared port, from the caller's identity (or `unauthenticated: true`), and for HTTP the
//! request's method and its path as `pathPrefix` (whole segments: the path and what is below it).
//! When the default decided (no policy covered the port), the first policy on the port ends the
//! same-namespace default there, so a second document keeps it (`namespaces: [<target ns>]` on
//! that port). A refusal before policy (undeclared port, ambiguous path, no policy yet) cannot
//! be fixed by a policy: the YAML is `None` and the summary says what to do instead.
//!
//! Names are `allow-<caller ns>-<caller sa>-<workload>` and `keep-<ns>-<workload>-<port>`, cut
//! to a DNS label, with `-2`, `-3`… when the namespace already has a policy of that name.

use onemesh_identity::SpiffeId;
use serde::Serialize;

use super::{Request, Target};
use crate::model::{Mesh, check};

/// A suggestion: what to do, and the YAML to apply when a policy can fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub summary: String,
    pub yaml: Option<String>,
}

/// Why a call was denied, as the proxy (or the model) said.
#[derive(Clone, Debug)]
pub struct Denial<'a> {
    pub target: Target<'a>,
    pub caller: Option<&'a SpiffeId>,
    pub request: Option<Request<'a>>,
    /// The default decided (no policy covered the port).
    pub default: bool,
    /// The port refusal's reason (`undeclared_port`, `proxy_port`, `awaiting_policy`, …).
    pub port_refusal: Option<&'a str>,
    /// Why the path was refused.
    pub path_error: Option<&'a str>,
}

/// The suggestion for `denial` on `mesh` (whose policy names it avoids).
pub fn suggest(mesh: &Mesh, denial: &Denial<'_>) -> Suggestion {
    let t = denial.target;
    let shown = format!("{}/{}", t.namespace, t.workload);
    if let Some(reason) = denial.port_refusal {
        let summary = match reason {
            "awaiting_policy" => format!(
                "the proxy of {shown} has not received its policy yet: retry in a few seconds; no policy change is needed"
            ),
            "undeclared_port" => format!(
                "port {} is not a declared port of {shown}, so the proxy forwards nothing there whatever the policy: declare the port (mesh.yaml spec.ports, or a containerPort) or call a declared port",
                t.port
            ),
            other => format!(
                "the proxy of {shown} refuses port {} before any policy ({other}): call one of the workload's declared ports",
                t.port
            ),
        };
        return Suggestion {
            summary,
            yaml: None,
        };
    }
    if let Some(error) = denial.path_error {
        return Suggestion {
            summary: format!(
                "the path is refused before any policy ({error}): no policy can allow it; send the resolved path"
            ),
            yaml: None,
        };
    }
    let mut taken: Vec<String> = mesh
        .policies
        .iter()
        .filter(|p| p.namespace == t.namespace)
        .map(|p| p.name.clone())
        .collect();
    let who = match denial.caller {
        Some(id) => format!("{}-{}", id.namespace(), id.service_account()),
        None => "unauthenticated".to_string(),
    };
    let allow_name = free_name(&mut taken, &format!("allow-{who}-{}", t.workload));
    let mut yaml = String::new();
    let from = match denial.caller {
        Some(id) => format!("  from: {{identities: [{}]}}\n", quote(&id.to_string())),
        None => "  from: {unauthenticated: true}\n".to_string(),
    };
    let (routes, what) = match denial.request {
        Some(r) => {
            let path = r.path.split(['?', '#']).next().unwrap_or("/");
            let method = check::method(r.method).ok();
            let routes = match &method {
                Some(m) => format!(
                    "  routes: [{{methods: [{m}], pathPrefix: {}}}]\n",
                    quote(path)
                ),
                None => format!("  routes: [{{pathPrefix: {}}}]\n", quote(path)),
            };
            (routes, format!(" for {} {path}", r.method))
        }
        None => (String::new(), String::new()),
    };
    document(&mut yaml, &allow_name, t, &routes, &from);
    let caller_shown = denial
        .caller
        .map_or("unauthenticated callers".to_string(), ToString::to_string);
    let mut summary = format!(
        "add AuthorizationPolicy {allow_name} ({}): lets {caller_shown} call {shown} on port {}{what}",
        t.namespace, t.port
    );
    if denial.default {
        let keep_name = free_name(
            &mut taken,
            &format!("keep-{}-{}-{}", t.namespace, t.workload, t.port),
        );
        let from = format!("  from: {{namespaces: [{}]}}\n", t.namespace);
        yaml.push_str("---\n");
        document(&mut yaml, &keep_name, t, "", &from);
        summary.push_str(&format!(
            "; and {keep_name}, which keeps allowing namespace {} there (the first policy on a port ends its same-namespace default)",
            t.namespace
        ));
    }
    Suggestion {
        summary,
        yaml: Some(yaml),
    }
}

fn document(out: &mut String, name: &str, t: Target<'_>, routes: &str, from: &str) {
    out.push_str(&format!(
        "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  target: {{workload: {}, port: {}}}\n{routes}{from}",
        t.namespace, t.workload, t.port
    ));
}

/// A YAML double-quoted scalar (JSON's escapes are YAML's).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `base` cut to a DNS label, made unique among `taken` (and added to it).
fn free_name(taken: &mut Vec<String>, base: &str) -> String {
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut = |s: &str, max: usize| s[..s.len().min(max)].trim_end_matches('-').to_string();
    let mut name = cut(&clean, 63);
    let mut n = 2;
    while taken.contains(&name) {
        let suffix = format!("-{n}");
        name = format!("{}{suffix}", cut(&clean, 63 - suffix.len()));
        n += 1;
    }
    taken.push(name.clone());
    name
}
