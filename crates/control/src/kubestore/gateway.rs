//! Gateway API `HTTPRoute`s with a Service as parent (the GAMMA mesh profile) folded into the
//! model's [`Route`]s, and the `status.parents[]` entries the control plane writes on them.
//!
//! Pure, like [`super::fold`]: the store lists and watches `httproutes.gateway.networking.k8s.io`
//! (when that CRD is installed) and hands the objects here with the mesh folded so far.
//!
//! What an HTTPRoute becomes:
//!
//! - Only `parentRefs` naming a Service (`group: ""` or `core`, `kind: Service`) count; Gateway
//!   parents are another controller's and left alone. A Service parent must be in the route's own
//!   namespace (ReferenceGrant and consumer routes are not implemented: refused with the reason),
//!   and must be a Service of the mesh.
//! - Each rule × match is one [`Route`] for each accepted parent: `path` `PathPrefix` → the path
//!   prefix (onemesh's prefixes match whole segments, as Gateway API's; a trailing `/` is dropped), `method` → the method, `backendRefs` (Services of the route's namespace, with their
//!   weights) → the backends, `timeouts.request` → the timeout. A rule without matches matches
//!   every request; a rule without `backendRefs` sends to the parent Service itself. A backend is
//!   sent the port the request was addressed to, so a `backendRef`'s `port` must be that port
//!   (else the parent is refused: onemesh would send elsewhere than the route says).
//! - Anything else the route uses (header or query matches, `Exact` or regular-expression paths,
//!   filters, `hostnames`, `timeouts.backendRequest`, a field this version does not know) makes the
//!   whole route refused: `Accepted=False`, reason `UnsupportedValue`, the message naming each
//!   field; nothing of it is applied (never a partial route).
//! - A `backendRef` to a Service that does not exist is left out of the split (`ResolvedRefs=False`,
//!   `BackendNotFound`); one of another kind or namespace likewise (`InvalidKind`,
//!   `RefNotPermitted`). The rest of the rule stays in force; with no backend left, the rule sends
//!   to the parent Service.
//!
//! Order ([`Gateway API precedence`](https://gateway-api.sigs.k8s.io/reference/spec/#httprouterule)
//! mapped onto onemesh's first match): longer path prefix first, then a match with a method before
//! one without, then the older HTTPRoute, then namespace/name, then rule order. onemesh `Route`
//! objects of the same Service come before every HTTPRoute ([`super::fold::build`]).
//!
//! Route names (the `route` metric label): `<httproute>/<rule name>`, or `<httproute>/<index>` for
//! a rule without a name.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Map, Value};

use crate::config::HttpMatch;
use crate::model::{Backend, Mesh, Origin, Route, RouteRules, check};

/// The `controllerName` of the control plane's entries in `status.parents[]`.
pub const CONTROLLER_NAME: &str = "onemesh.dev/mesh";
/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The API resource of `httproutes.gateway.networking.k8s.io/v1`.
pub fn http_route_resource() -> ApiResource {
    ApiResource {
        group: GROUP.to_string(),
        version: "v1".to_string(),
        api_version: format!("{GROUP}/v1"),
        kind: "HTTPRoute".to_string(),
        plural: "httproutes".to_string(),
    }
}

/// One condition of a parent's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    fn ok(reason: &'static str) -> Cond {
        Cond {
            ok: true,
            reason,
            message: String::new(),
        }
    }

    fn refused(reason: &'static str, problems: &[String]) -> Cond {
        Cond {
            ok: false,
            reason,
            message: problems.join("; "),
        }
    }
}

/// What the control plane says about one Service parent of an HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    /// The `parentRefs[]` entry, as written in the spec.
    pub parent_ref: Value,
    pub accepted: Cond,
    pub resolved_refs: Cond,
}

/// The control plane's entries for one HTTPRoute's `status.parents[]` (empty: it has no Service
/// parent, and any entry of ours must go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub parents: Vec<ParentStatus>,
}

/// The routes every HTTPRoute of a meshed namespace gives (in precedence order), and the status
/// of each. `mesh` must already hold the namespaces and Services.
pub fn fold<'a>(
    objects: impl Iterator<Item = &'a DynamicObject>,
    mesh: &Mesh,
) -> (Vec<Route>, Vec<RouteStatus>) {
    let mut keyed: Vec<(SortKey, Route)> = Vec::new();
    let mut statuses = Vec::new();
    for obj in objects {
        let namespace = obj.namespace().unwrap_or_default();
        if !mesh.namespaces.contains_key(&namespace) {
            continue;
        }
        let (routes, status) = one(obj, &namespace, mesh);
        keyed.extend(routes);
        statuses.push(status);
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    (keyed.into_iter().map(|(_, r)| r).collect(), statuses)
}

/// Gateway API precedence as a sort key: smaller first.
type SortKey = (
    Reverse<usize>, // path prefix length
    Reverse<bool>,  // has a method
    Option<String>, // creation time (RFC 3339 sorts as time)
    String,         // namespace
    String,         // name
    usize,          // rule index
    usize,          // match index
    String,         // parent service
);

/// A rule as onemesh can apply it.
struct Rule {
    name: String,
    matches: Vec<HttpMatch>,
    timeout: Option<std::time::Duration>,
    /// Each Service backendRef of the route's namespace.
    backends: Vec<BackendRef>,
}

/// A usable `backendRefs[]` entry.
struct BackendRef {
    /// Where it is written, for messages.
    field: String,
    service: String,
    weight: u32,
    port: Option<i64>,
}

fn one(obj: &DynamicObject, namespace: &str, mesh: &Mesh) -> (Vec<(SortKey, Route)>, RouteStatus) {
    let name = obj.name_any();
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let mut status = RouteStatus {
        namespace: namespace.to_string(),
        name: name.clone(),
        generation: obj.metadata.generation,
        parents: Vec::new(),
    };
    let service_parents: Vec<(usize, &Value)> = spec
        .get("parentRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, p)| is_service_ref(p, "Gateway", GROUP))
        .collect();
    if service_parents.is_empty() {
        return (Vec::new(), status);
    }

    let mut unsupported = Vec::new();
    let mut unresolved: Vec<(&'static str, String)> = Vec::new();
    let rules = rules(&spec, namespace, &mut unsupported, &mut unresolved);

    // Backends that do not exist are left out of the split.
    let exists = |svc: &str| {
        mesh.services
            .contains_key(&(namespace.to_string(), svc.to_string()))
    };
    for r in &rules {
        for BackendRef {
            field,
            service: svc,
            ..
        } in &r.backends
        {
            if !exists(svc) {
                unresolved.push((
                    "BackendNotFound",
                    format!("{field}: Service {namespace}/{svc} does not exist in the mesh: create it or fix the name (left out of the split)"),
                ));
            }
        }
    }
    let resolved_refs = match unresolved.first() {
        None => Cond::ok("ResolvedRefs"),
        Some((reason, _)) => {
            let messages: Vec<String> = unresolved.iter().map(|(_, m)| m.clone()).collect();
            Cond::refused(reason, &messages)
        }
    };

    let created = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string());
    let origin = Origin::Object {
        kind: "HTTPRoute",
        namespace: namespace.to_string(),
        name: name.clone(),
        uid: obj.uid().unwrap_or_default(),
        generation: obj.metadata.generation,
    };
    let mut routes = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, parent) in service_parents {
        let field = format!("spec.parentRefs[{i}]");
        let service = parent.get("name").and_then(Value::as_str).unwrap_or("");
        if !seen.insert(parent.to_string()) {
            continue;
        }
        let accepted = if !unsupported.is_empty() {
            Cond::refused("UnsupportedValue", &unsupported)
        } else {
            match parent_problem(parent, &field, namespace, service, mesh)
                .or_else(|| port_problem(parent, namespace, service, mesh, &rules))
            {
                Some((reason, message)) => Cond::refused(reason, &[message]),
                None => Cond::ok("Accepted"),
            }
        };
        if accepted.ok {
            for (ri, rule) in rules.iter().enumerate() {
                let backends: Vec<Backend> = rule
                    .backends
                    .iter()
                    .filter(|b| exists(&b.service))
                    .map(|b| Backend {
                        service: b.service.clone(),
                        weight: b.weight,
                    })
                    .collect();
                // Only weight-0 backends left (the others missing): the parent Service itself.
                let backends = if backends.iter().all(|b| b.weight == 0) {
                    Vec::new()
                } else {
                    backends
                };
                for (mi, m) in rule.matches.iter().enumerate() {
                    let key = (
                        Reverse(m.path_prefix.as_deref().map_or(1, str::len)),
                        Reverse(!m.methods.is_empty()),
                        created.clone(),
                        namespace.to_string(),
                        name.clone(),
                        ri,
                        mi,
                        service.to_string(),
                    );
                    routes.push((
                        key,
                        Route {
                            namespace: namespace.to_string(),
                            name: format!("{name}/{}", rule.name),
                            service: service.to_string(),
                            matches: m.clone(),
                            rules: RouteRules {
                                timeout: rule.timeout,
                                retryable: false,
                                backends: backends.clone(),
                                // (the default policy: an HTTPRoute's retry is not supported)
                                retry: None,
                                fault: None,
                                // (the Service's breaker, from its annotation, covers it)
                                circuit_breaker: None,
                            },
                            origin: origin.clone(),
                        },
                    ));
                }
            }
        }
        status.parents.push(ParentStatus {
            parent_ref: parent.clone(),
            accepted,
            resolved_refs: resolved_refs.clone(),
        });
    }
    (routes, status)
}

/// Whether a reference names a core Service (`default_kind`/`default_group` apply when unset:
/// a parentRef defaults to a Gateway, a backendRef to a Service).
fn is_service_ref(r: &Value, default_kind: &str, default_group: &str) -> bool {
    let group = r
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or(default_group);
    let kind = r
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or(default_kind);
    matches!(group, "" | "core") && kind == "Service"
}

/// Why onemesh cannot attach to this Service parent, if it cannot.
fn parent_problem(
    parent: &Value,
    field: &str,
    namespace: &str,
    service: &str,
    mesh: &Mesh,
) -> Option<(&'static str, String)> {
    if let Some(ns) = parent.get("namespace").and_then(Value::as_str)
        && ns != namespace
    {
        return Some((
            "UnsupportedValue",
            format!(
                "{field}.namespace: a Service of another namespace ({ns}) is not supported (no consumer routes or ReferenceGrant): put the HTTPRoute in namespace {ns}"
            ),
        ));
    }
    if parent.get("sectionName").is_some() {
        return Some((
            "UnsupportedValue",
            format!(
                "{field}.sectionName: not supported (onemesh routes apply to every port of a Service): remove it"
            ),
        ));
    }
    let Some(svc) = mesh
        .services
        .get(&(namespace.to_string(), service.to_string()))
    else {
        return Some((
            "NoMatchingParent",
            format!(
                "{field}: Service {namespace}/{service} does not exist in the mesh: create it, or mesh its namespace"
            ),
        ));
    };
    if let Some(port) = parent.get("port").and_then(Value::as_i64) {
        if !svc.ports.iter().any(|p| i64::from(p.port) == port) {
            return Some((
                "NoMatchingParent",
                format!("{field}.port: Service {namespace}/{service} has no port {port}"),
            ));
        }
        if svc.ports.len() > 1 {
            return Some((
                "UnsupportedValue",
                format!(
                    "{field}.port: Service {namespace}/{service} has other ports, and onemesh routes apply to every port of a Service: remove the port, or route a Service of one port"
                ),
            ));
        }
    }
    None
}

/// Why the backends' ports cannot be honoured for this parent, if they cannot: onemesh sends a
/// request to the chosen backend on the port it was addressed to, so a `backendRef`'s port must
/// be that port (the parentRef's, or the parent Service's only one).
fn port_problem(
    parent: &Value,
    namespace: &str,
    service: &str,
    mesh: &Mesh,
    rules: &[Rule],
) -> Option<(&'static str, String)> {
    let svc = mesh
        .services
        .get(&(namespace.to_string(), service.to_string()))?;
    let addressed =
        parent
            .get("port")
            .and_then(Value::as_i64)
            .or_else(|| match svc.ports.as_slice() {
                [only] => Some(i64::from(only.port)),
                _ => None,
            });
    for b in rules.iter().flat_map(|r| &r.backends) {
        let Some(port) = b.port else { continue };
        if addressed != Some(port) {
            let to = addressed.map_or_else(
                || format!("any of the ports of Service {namespace}/{service}"),
                |p| format!("port {p}"),
            );
            return Some((
                "UnsupportedValue",
                format!(
                    "{}.port: {port} is not the port requests are addressed to ({to}); onemesh sends to a backend on that same port: use it, or route a Service of one port",
                    b.field
                ),
            ));
        }
    }
    None
}

/// Records a field onemesh does not implement.
fn refuse(unsupported: &mut Vec<String>, field: &str, what: &str) {
    unsupported.push(format!("{field}: {what} is not supported by onemesh"));
}

/// Each key of `obj` not in `known`, or in `must_be_empty` with a non-empty value, is refused.
fn only_keys(
    obj: &Map<String, Value>,
    field: &str,
    known: &[&str],
    must_be_empty: &[&str],
    unsupported: &mut Vec<String>,
) {
    for (k, v) in obj {
        let empty = v.is_null()
            || v.as_array().is_some_and(Vec::is_empty)
            || v.as_object().is_some_and(Map::is_empty);
        if must_be_empty.contains(&k.as_str()) {
            if !empty {
                refuse(unsupported, &format!("{field}.{k}"), k);
            }
        } else if !known.contains(&k.as_str()) {
            refuse(unsupported, &format!("{field}.{k}"), "this field");
        }
    }
}

fn rules(
    spec: &Value,
    namespace: &str,
    unsupported: &mut Vec<String>,
    unresolved: &mut Vec<(&'static str, String)>,
) -> Vec<Rule> {
    if let Some(spec) = spec.as_object() {
        only_keys(
            spec,
            "spec",
            &["parentRefs", "rules"],
            &["hostnames"],
            unsupported,
        );
    }
    let given = spec.get("rules").and_then(Value::as_array);
    let default = [Value::Object(Map::new())];
    let list: &[Value] = match given {
        Some(l) if !l.is_empty() => l,
        _ => &default,
    };
    let mut out = Vec::new();
    for (ri, rule) in list.iter().enumerate() {
        let field = format!("spec.rules[{ri}]");
        let empty = Map::new();
        let r = rule.as_object().unwrap_or(&empty);
        only_keys(
            r,
            &field,
            &["name", "matches", "backendRefs", "timeouts"],
            &["filters"],
            unsupported,
        );
        let name = r
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| ri.to_string(), str::to_string);

        let mut matches = Vec::new();
        let given = r.get("matches").and_then(Value::as_array);
        let default = [Value::Object(Map::new())];
        let list: &[Value] = match given {
            Some(l) if !l.is_empty() => l,
            _ => &default,
        };
        for (mi, m) in list.iter().enumerate() {
            let field = format!("{field}.matches[{mi}]");
            let m = m.as_object().unwrap_or(&empty);
            only_keys(
                m,
                &field,
                &["path", "method"],
                &["headers", "queryParams"],
                unsupported,
            );
            let mut out = HttpMatch::default();
            if let Some(method) = m.get("method").and_then(Value::as_str) {
                match check::method(method) {
                    Ok(method) => out.methods.push(method),
                    Err(e) => unsupported.push(format!("{field}.method: {e}")),
                }
            }
            if let Some(path) = m.get("path").and_then(Value::as_object) {
                only_keys(
                    path,
                    &format!("{field}.path"),
                    &["type", "value"],
                    &[],
                    unsupported,
                );
                match path
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("PathPrefix")
                {
                    "PathPrefix" => {}
                    other => refuse(
                        unsupported,
                        &format!("{field}.path.type"),
                        &format!("{other} (only PathPrefix)"),
                    ),
                }
                let value = path.get("value").and_then(Value::as_str).unwrap_or("/");
                // Gateway API ignores a trailing `/` (`/abc/` matches `/abc`); onemesh's prefix
                // matches whole segments, so `/abc` is the same match.
                match check::path_prefix(value) {
                    Ok(p) if p.trim_end_matches('/').is_empty() => {}
                    Ok(p) => out.path_prefix = Some(p.trim_end_matches('/').to_string()),
                    Err(e) => unsupported.push(format!("{field}.path.value: {e}")),
                }
            }
            matches.push(out);
        }

        let mut timeout = None;
        if let Some(t) = r.get("timeouts").and_then(Value::as_object) {
            only_keys(
                t,
                &format!("{field}.timeouts"),
                &["request"],
                &["backendRequest"],
                unsupported,
            );
            if let Some(request) = t.get("request").and_then(Value::as_str) {
                match check::duration(request) {
                    Ok(d) => timeout = Some(d).filter(|d| !d.is_zero()),
                    Err(e) => unsupported.push(format!("{field}.timeouts.request: {e}")),
                }
            }
        }

        let mut backends: Vec<BackendRef> = Vec::new();
        for (bi, b) in r
            .get("backendRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{field}.backendRefs[{bi}]");
            let bo = b.as_object().unwrap_or(&empty);
            only_keys(
                bo,
                &field,
                &["group", "kind", "name", "namespace", "port", "weight"],
                &["filters"],
                unsupported,
            );
            let weight = match check::weight(b.get("weight").and_then(Value::as_i64).unwrap_or(1)) {
                Ok(w) => w,
                Err(e) => {
                    unsupported.push(format!("{field}.weight: {e}"));
                    continue;
                }
            };
            let svc = b.get("name").and_then(Value::as_str).unwrap_or("");
            if !is_service_ref(b, "Service", "") {
                unresolved.push((
                    "InvalidKind",
                    format!(
                        "{field}: only a core Service can be a backend (left out of the split)"
                    ),
                ));
                continue;
            }
            if let Some(ns) = b.get("namespace").and_then(Value::as_str)
                && ns != namespace
            {
                unresolved.push((
                    "RefNotPermitted",
                    format!("{field}.namespace: a backend in another namespace ({ns}) is not supported (no ReferenceGrant): use a Service of {namespace} (left out of the split)"),
                ));
                continue;
            }
            if backends.iter().any(|b| b.service == svc) {
                refuse(
                    unsupported,
                    &field,
                    &format!("a second backendRef to Service {svc}"),
                );
                continue;
            }
            backends.push(BackendRef {
                field,
                service: svc.to_string(),
                weight,
                port: b.get("port").and_then(Value::as_i64),
            });
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            refuse(
                unsupported,
                &format!("{field}.backendRefs"),
                "every backendRef at weight 0 (Gateway API answers 500)",
            );
        }
        out.push(Rule {
            name,
            matches,
            timeout,
            backends,
        });
    }
    out
}

/// The `status.parents` list to write on an HTTPRoute that carries `current` (its whole
/// `status.parents`, other controllers' entries included), or `None` when it already says what
/// `wanted` says. Other controllers' entries are kept as they are; a condition keeps its
/// transition time while its status stays. `now` is RFC 3339.
pub fn parents_update(current: &[Value], wanted: &RouteStatus, now: &str) -> Option<Vec<Value>> {
    let ours =
        |p: &&Value| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let current_ours: Vec<&Value> = current.iter().filter(ours).collect();
    let mut mine = Vec::new();
    for p in &wanted.parents {
        let before = current_ours
            .iter()
            .find(|c| c.get("parentRef") == Some(&p.parent_ref));
        let condition = |type_: &str, c: &Cond| {
            let status = if c.ok { "True" } else { "False" };
            let old = before
                .and_then(|b| b.get("conditions"))
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|x| x.get("type").and_then(Value::as_str) == Some(type_))
                });
            let time = old
                .filter(|o| o.get("status").and_then(Value::as_str) == Some(status))
                .and_then(|o| o.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| Value::String(now.to_string()));
            let mut message = c.message.clone();
            if message.len() > 32_000 {
                let mut end = 32_000;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            serde_json::json!({
                "type": type_,
                "status": status,
                "reason": c.reason,
                "message": message,
                "observedGeneration": wanted.generation.unwrap_or(0),
                "lastTransitionTime": time,
            })
        };
        mine.push(serde_json::json!({
            "parentRef": p.parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [condition("Accepted", &p.accepted), condition("ResolvedRefs", &p.resolved_refs)],
        }));
    }
    if mine.len() == current_ours.len() && mine.iter().zip(&current_ours).all(|(a, b)| a == *b) {
        return None;
    }
    let mut all: Vec<Value> = current.iter().filter(|p| !ours(p)).cloned().collect();
    all.extend(mine);
    Some(all)
}

#[cfg(test)]
mod tests;
