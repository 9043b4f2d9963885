//! Unit tests of the HTTPRoute fold: HTTPRoute objects and a mesh in, routes and statuses out.

use std::time::Duration;

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::model::{Namespace, Service, ServicePort};

/// A mesh with namespace `shop` and Services `bank`, `bank-v1`, `bank-v2` (port 80 each), and
/// `multi` (ports 80 and 9090).
fn mesh() -> Mesh {
    let mut m = Mesh::default();
    m.namespaces.insert(
        "shop".into(),
        Namespace {
            name: "shop".into(),
            default_mode: Default::default(),
            origin: Origin::Derived,
        },
    );
    for (name, ports) in [
        ("bank", vec![80]),
        ("bank-v1", vec![80]),
        ("bank-v2", vec![80]),
        ("multi", vec![80, 9090]),
    ] {
        m.services.insert(
            ("shop".into(), name.into()),
            Service {
                namespace: "shop".into(),
                name: name.into(),
                cluster_ips: Vec::new(),
                ports: ports
                    .into_iter()
                    .map(|port| ServicePort {
                        name: None,
                        port,
                        endpoints: Vec::new(),
                    })
                    .collect(),
                origin: Origin::Derived,
                circuit_breaker: None,
            },
        );
    }
    m
}

fn service_parent(name: &str) -> Value {
    json!({"group": "", "kind": "Service", "name": name})
}

fn http_route(ns: &str, name: &str, created: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 3,
            "creationTimestamp": created, "resourceVersion": "7",
        },
        "spec": spec,
    }))
    .unwrap()
}

/// A canary: `bank` split 90/10 between bank-v1 and bank-v2 under `/pay`, with a timeout.
fn canary(name: &str) -> DynamicObject {
    http_route(
        "shop",
        name,
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [service_parent("bank")],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/pay"}, "method": "POST"}],
                "backendRefs": [
                    {"name": "bank-v1", "port": 80, "weight": 90},
                    {"name": "bank-v2", "port": 80, "weight": 10},
                ],
                "timeouts": {"request": "3s"},
            }],
        }),
    )
}

fn run(objects: &[DynamicObject]) -> (Vec<Route>, Vec<RouteStatus>) {
    fold(objects.iter(), &mesh())
}

fn backends(r: &Route) -> Vec<(&str, u32)> {
    r.rules
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect()
}

#[test]
fn a_service_parent_becomes_routes_with_weighted_backends() {
    let (routes, statuses) = run(&[canary("canary")]);
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!((r.namespace.as_str(), r.service.as_str()), ("shop", "bank"));
    assert_eq!(r.name, "canary/0");
    assert_eq!(r.matches.path_prefix.as_deref(), Some("/pay"));
    assert_eq!(r.matches.methods, vec!["POST".to_string()]);
    assert_eq!(backends(r), vec![("bank-v1", 90), ("bank-v2", 10)]);
    assert_eq!(r.rules.timeout, Some(Duration::from_secs(3)));
    assert_eq!(statuses.len(), 1);
    let p = &statuses[0].parents[0];
    assert_eq!(p.parent_ref, service_parent("bank"));
    assert_eq!((p.accepted.ok, p.accepted.reason), (true, "Accepted"));
    assert_eq!(
        (p.resolved_refs.ok, p.resolved_refs.reason),
        (true, "ResolvedRefs")
    );
}

#[test]
fn each_rule_and_match_is_a_route_and_defaults_match_everything() {
    let obj = http_route(
        "shop",
        "many",
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [service_parent("bank")],
            "rules": [
                {"name": "reads", "matches": [{"method": "GET"}, {"method": "HEAD", "path": {"value": "/docs/"}}]},
                {"backendRefs": [{"name": "bank-v2", "port": 80}]},
            ],
        }),
    );
    let (routes, _) = run(&[obj]);
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["many/reads", "many/reads", "many/1"]);
    assert!(routes[0].rules.backends.is_empty()); // no backendRefs: the parent Service
    // A trailing `/` is ignored, as in Gateway API: `/docs` matches `/docs` and `/docs/x`; the
    // longer prefix first.
    assert_eq!(routes[0].matches.path_prefix.as_deref(), Some("/docs"));
    assert_eq!(routes[1].matches.methods, vec!["GET".to_string()]);
    assert_eq!(routes[2].matches, HttpMatch::default()); // no matches: every request
    assert_eq!(backends(&routes[2]), vec![("bank-v2", 1)]); // weight defaults to 1
}

#[test]
fn an_unsupported_field_refuses_the_whole_route_and_names_the_field() {
    let cases = [
        (
            json!([{"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}]}]),
            "spec.rules[1].matches[0].headers",
        ),
        (
            json!([{"matches": [{"queryParams": [{"name": "a", "value": "1"}]}]}]),
            "spec.rules[1].matches[0].queryParams",
        ),
        (
            json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}]}]),
            "spec.rules[1].matches[0].path.type",
        ),
        (
            json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]}]),
            "spec.rules[1].matches[0].path.type",
        ),
        (
            json!([{"filters": [{"type": "RequestHeaderModifier"}]}]),
            "spec.rules[1].filters",
        ),
        (
            json!([{"backendRefs": [{"name": "bank-v1", "filters": [{"type": "RequestMirror"}]}]}]),
            "spec.rules[1].backendRefs[0].filters",
        ),
        (
            json!([{"timeouts": {"backendRequest": "1s"}}]),
            "spec.rules[1].timeouts.backendRequest",
        ),
        (
            json!([{"sessionPersistence": {"type": "Cookie"}}]),
            "spec.rules[1].sessionPersistence",
        ),
    ];
    for (rules, field) in cases {
        // A good rule first: nothing of the route may be applied.
        let mut all = vec![json!({"backendRefs": [{"name": "bank-v1", "port": 80}]})];
        all.extend(rules.as_array().unwrap().iter().cloned());
        let obj = http_route(
            "shop",
            "bad",
            "2026-12-01T10:00:00Z",
            json!({"parentRefs": [service_parent("bank")], "rules": all}),
        );
        let (routes, statuses) = run(&[obj]);
        assert!(routes.is_empty(), "{field}: applied partially: {routes:?}");
        let accepted = &statuses[0].parents[0].accepted;
        assert!(!accepted.ok, "{field}");
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert!(
            accepted.message.contains(field),
            "{field} not named in {:?}",
            accepted.message
        );
    }
    // hostnames, on the route itself.
    let obj = http_route(
        "shop",
        "hosts",
        "2026-12-01T10:00:00Z",
        json!({"parentRefs": [service_parent("bank")], "hostnames": ["bank.example"]}),
    );
    let (routes, statuses) = run(&[obj]);
    assert!(routes.is_empty());
    assert!(
        statuses[0].parents[0]
            .accepted
            .message
            .contains("spec.hostnames")
    );
}

#[test]
fn a_missing_backend_is_unresolved_and_left_out_of_the_split() {
    let obj = http_route(
        "shop",
        "ghost",
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [service_parent("bank")],
            "rules": [{"backendRefs": [
                {"name": "bank-v1", "port": 80, "weight": 90},
                {"name": "bank-v3", "port": 80, "weight": 10},
            ]}],
        }),
    );
    let (routes, statuses) = run(&[obj]);
    let p = &statuses[0].parents[0];
    assert!(p.accepted.ok);
    assert!(!p.resolved_refs.ok);
    assert_eq!(p.resolved_refs.reason, "BackendNotFound");
    assert!(
        p.resolved_refs
            .message
            .contains("spec.rules[0].backendRefs[1]: Service shop/bank-v3 does not exist"),
        "{}",
        p.resolved_refs.message
    );
    assert_eq!(backends(&routes[0]), vec![("bank-v1", 90)]);

    // Another namespace or kind: not permitted, not a Service.
    let obj = http_route(
        "shop",
        "far",
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [service_parent("bank")],
            "rules": [{"backendRefs": [
                {"name": "bank-v1", "namespace": "vault", "port": 80},
                {"group": "example.com", "kind": "Bucket", "name": "b"},
                {"name": "bank-v2", "port": 80},
            ]}],
        }),
    );
    let (routes, statuses) = run(&[obj]);
    let p = &statuses[0].parents[0];
    assert_eq!(p.resolved_refs.reason, "RefNotPermitted");
    assert!(
        p.resolved_refs
            .message
            .contains("backendRefs[1]: only a core Service")
    );
    assert_eq!(backends(&routes[0]), vec![("bank-v2", 1)]);
}

#[test]
fn only_service_parents_count_and_gateway_parents_are_left_alone() {
    let obj = http_route(
        "shop",
        "edge",
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [{"name": "public-gw"}, {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw2"}],
            "rules": [{"backendRefs": [{"name": "bank", "port": 80}]}],
        }),
    );
    let (routes, statuses) = run(&[obj]);
    assert!(routes.is_empty());
    assert!(statuses[0].parents.is_empty());

    // A route in an unmeshed namespace is not looked at.
    let (routes, statuses) = run(&[http_route(
        "elsewhere",
        "x",
        "2026-12-01T10:00:00Z",
        json!({"parentRefs": [service_parent("bank")]}),
    )]);
    assert!(routes.is_empty() && statuses.is_empty());
}

#[test]
fn parents_that_onemesh_cannot_serve_are_refused_one_by_one() {
    let obj = http_route(
        "shop",
        "parents",
        "2026-12-01T10:00:00Z",
        json!({
            "parentRefs": [
                service_parent("bank"),
                {"group": "", "kind": "Service", "name": "vault"},
                {"group": "", "kind": "Service", "name": "bank-v1", "namespace": "other"},
                {"group": "", "kind": "Service", "name": "multi", "port": 80},
                {"group": "", "kind": "Service", "name": "bank-v2", "port": 80},
            ],
        }),
    );
    let (routes, statuses) = run(&[obj]);
    let reasons: Vec<_> = statuses[0]
        .parents
        .iter()
        .map(|p| p.accepted.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "Accepted",
            "NoMatchingParent",
            "UnsupportedValue",
            "UnsupportedValue",
            "Accepted"
        ]
    );
    let services: Vec<_> = routes.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(services, ["bank", "bank-v2"]);
}

#[test]
fn a_backend_port_other_than_the_addressed_one_is_refused() {
    let obj = |backend_port: u16, parent: Value| {
        http_route(
            "shop",
            "ports",
            "2026-12-01T10:00:00Z",
            json!({
                "parentRefs": [parent],
                "rules": [{"backendRefs": [{"name": "bank-v1", "port": backend_port}]}],
            }),
        )
    };
    // bank has one port, 80: a backend on 8080 would be sent 80 by onemesh.
    let (routes, statuses) = run(&[obj(8080, service_parent("bank"))]);
    assert!(routes.is_empty());
    let accepted = &statuses[0].parents[0].accepted;
    assert_eq!(accepted.reason, "UnsupportedValue");
    assert!(
        accepted
            .message
            .contains("spec.rules[0].backendRefs[0].port: 8080 is not the port"),
        "{}",
        accepted.message
    );
    assert_eq!(run(&[obj(80, service_parent("bank"))]).0.len(), 1);
    // Several ports and no parentRef port: no backend port fits every one.
    let (routes, statuses) = run(&[obj(80, service_parent("multi"))]);
    assert!(routes.is_empty());
    assert!(
        statuses[0].parents[0]
            .accepted
            .message
            .contains("any of the ports")
    );
}

#[test]
fn routes_follow_gateway_api_precedence() {
    let spec = |prefix: &str, method: Option<&str>| {
        let mut m = json!({"path": {"type": "PathPrefix", "value": prefix}});
        if let Some(method) = method {
            m["method"] = json!(method);
        }
        json!({"parentRefs": [service_parent("bank")], "rules": [{"matches": [m]}]})
    };
    let objects = [
        http_route("shop", "root", "2026-12-01T09:00:00Z", spec("/", None)),
        http_route("shop", "short", "2026-12-01T09:00:00Z", spec("/a", None)),
        http_route("shop", "long", "2026-12-01T11:00:00Z", spec("/a/b", None)),
        http_route(
            "shop",
            "method",
            "2026-12-01T12:00:00Z",
            spec("/a", Some("GET")),
        ),
        // Same match as `short`, created later: after it; `b-same` after `a-same` (same time).
        http_route("shop", "later", "2026-12-01T10:00:00Z", spec("/a", None)),
        http_route("shop", "b-same", "2026-12-01T10:00:00Z", spec("/a", None)),
    ];
    let (routes, _) = run(&objects);
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "long/0", "method/0", "short/0", "b-same/0", "later/0", "root/0"
        ]
    );
}

fn status(accepted: bool) -> RouteStatus {
    RouteStatus {
        namespace: "shop".into(),
        name: "canary".into(),
        generation: Some(3),
        parents: vec![ParentStatus {
            parent_ref: service_parent("bank"),
            accepted: if accepted {
                Cond::ok("Accepted")
            } else {
                Cond::refused("UnsupportedValue", &["spec.rules[0].filters: x".into()])
            },
            resolved_refs: Cond::ok("ResolvedRefs"),
        }],
    }
}

#[test]
fn status_parents_keep_other_controllers_and_change_only_when_needed() {
    let other = json!({
        "parentRef": {"name": "public-gw"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 3, "lastTransitionTime": "2026-12-01T00:00:00Z"}],
    });
    let first = parents_update(
        std::slice::from_ref(&other),
        &status(true),
        "2026-12-03T09:00:00Z",
    )
    .unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], other);
    assert_eq!(first[1]["controllerName"], CONTROLLER_NAME);
    assert_eq!(first[1]["conditions"][0]["status"], "True");
    assert_eq!(first[1]["conditions"][1]["type"], "ResolvedRefs");
    // Already written: nothing to do.
    assert_eq!(
        parents_update(&first, &status(true), "2026-12-03T09:05:00Z"),
        None
    );
    // Refused now: a transition with the new time; the other controller's entry unchanged.
    let second = parents_update(&first, &status(false), "2026-12-03T09:06:00Z").unwrap();
    assert_eq!(second[0], other);
    let accepted = &second[1]["conditions"][0];
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "UnsupportedValue");
    assert_eq!(accepted["lastTransitionTime"], "2026-12-03T09:06:00Z");
    // ResolvedRefs stayed True: its time is kept.
    assert_eq!(
        second[1]["conditions"][1]["lastTransitionTime"],
        "2026-12-03T09:00:00Z"
    );
    // No Service parent any more: our entry goes, the other stays.
    let mut gone = status(true);
    gone.parents.clear();
    assert_eq!(
        parents_update(&second, &gone, "2026-12-03T09:07:00Z").unwrap(),
        vec![other]
    );
}
