//! Unit tests of the Kubernetes store's fold: recorded watch events in, mesh and verdicts out.

use std::net::IpAddr;

use serde_json::json;

use super::fold::*;
use crate::model::{Mesh, PolicyMode};

fn ns(name: &str, meshed: bool) -> Object {
    let labels = if meshed {
        json!({"onemesh.dev/mesh": "enabled"})
    } else {
        json!({})
    };
    Object::Namespace(
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
    )
}

/// A pod of Deployment `app` (through ReplicaSet `app-5d9c`), with the proxy beside it.
fn pod(ns: &str, name: &str, ip: Option<&str>) -> Object {
    let mut status = json!({"phase": "Running"});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    Object::Pod(
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "labels": {"app": "app", "pod-template-hash": "5d9c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-5d9c", "uid": "rs", "controller": true}],
            },
            "spec": {
                "serviceAccountName": "app-sa",
                "containers": [
                    {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}]},
                    {"name": "onemesh-proxy", "ports": [{"containerPort": 4143}, {"containerPort": 4191}]},
                ],
            },
            "status": status,
        }))
        .unwrap(),
    )
}

/// The same pod without the proxy: not part of the mesh.
fn without_proxy(pod: Object) -> Object {
    let Object::Pod(mut pod) = pod else {
        unreachable!("without_proxy takes a pod")
    };
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.retain(|c| c.name != "onemesh-proxy");
    }
    Object::Pod(pod)
}

fn service(ns: &str, name: &str) -> Object {
    Object::Service(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": "svc"},
            "spec": {"selector": {"app": "app"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }))
        .unwrap(),
    )
}

/// A slice of service `svc` with one endpoint per `(pod, ip, ready)`.
fn slice(ns: &str, name: &str, endpoints: &[(&str, &str, bool)]) -> Object {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            })
        })
        .collect();
    Object::EndpointSlice(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap(),
    )
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Object {
    Object::AuthorizationPolicy(
        serde_json::from_value(json!({
            "apiVersion": "onemesh.dev/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 2},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn route(ns: &str, name: &str, service: &str) -> Object {
    Object::Route(
        serde_json::from_value(json!({
            "apiVersion": "onemesh.dev/v1", "kind": "Route",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"service": service, "timeout": "2s"},
        }))
        .unwrap(),
    )
}

/// Lists every kind once: the given objects, nothing else.
fn listed(objects: Vec<Object>) -> Cache {
    let mut cache = Cache::default();
    for kind in Kind::ALL {
        cache.apply(Event::Init(kind));
    }
    for o in objects {
        cache.apply(Event::InitApply(o));
    }
    for kind in Kind::ALL {
        assert!(!cache.ready() || kind == Kind::Namespace);
        cache.apply(Event::InitDone(kind));
    }
    assert!(cache.ready());
    cache
}

fn mesh(cache: &Cache) -> Mesh {
    build(cache).0
}

fn endpoints(m: &Mesh) -> Vec<String> {
    m.services
        .get(&("shop".to_string(), "svc".to_string()))
        .map(|s| {
            s.ports[0]
                .endpoints
                .iter()
                .map(|e| format!("{}>{}", e.addr, e.target_port))
                .collect()
        })
        .unwrap_or_default()
}

fn base() -> Vec<Object> {
    vec![
        ns("shop", true),
        pod("shop", "app-5d9c-a", Some("10.0.0.1")),
        pod("shop", "app-5d9c-b", Some("10.0.0.2")),
        service("shop", "svc"),
        slice(
            "shop",
            "svc-x",
            &[
                ("app-5d9c-a", "10.0.0.1", true),
                ("app-5d9c-b", "10.0.0.2", true),
            ],
        ),
    ]
}

#[test]
fn nothing_is_ready_before_every_kind_is_listed() {
    let mut cache = Cache::default();
    let (last, first) = Kind::ALL.split_last().expect("kinds");
    for kind in first {
        cache.apply(Event::Init(*kind));
        cache.apply(Event::InitDone(*kind));
    }
    assert!(!cache.ready());
    cache.apply(Event::Init(*last));
    assert!(!cache.ready());
    cache.apply(Event::InitDone(*last));
    assert!(cache.ready());
}

#[test]
fn onemesh_routes_match_before_http_routes_of_the_same_service() {
    let mut objects = base();
    let http_route: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "h", "namespace": "shop", "uid": "uid-h", "generation": 1,
                     "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "svc"}],
            "rules": [{"matches": [{"path": {"value": "/long/prefix"}}], "timeouts": {"request": "5s"}}],
        },
    }))
    .unwrap();
    // Created first, but an HTTPRoute: after the onemesh Route.
    objects.push(Object::HttpRoute(http_route));
    objects.push(route("shop", "r1", "svc"));
    let (m, _, statuses) = build_all(&listed(objects));
    let names: Vec<_> = m.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r1", "h/0"]);
    assert_eq!(m.routes[1].origin.to_string(), "HTTPRoute shop/h");
    assert!(statuses[0].parents[0].accepted.ok);
}

#[test]
fn pods_become_one_workload_and_slices_its_endpoints() {
    let m = mesh(&listed(base()));
    let w = &m.workloads[&("shop".to_string(), "app".to_string())];
    assert_eq!(w.service_account, "app-sa");
    assert_eq!(
        w.ports.len(),
        1,
        "the proxy's ports are not the app's: {:?}",
        w.ports
    );
    assert_eq!(w.ports[0].port, 8080);
    assert_eq!(w.instances.len(), 2);
    assert!(!w.labels.contains_key("pod-template-hash"));
    assert_eq!(endpoints(&m), ["10.0.0.1:4143>8080", "10.0.0.2:4143>8080"]);
    assert!(m.runs_as("shop", "app-sa"));
    let ips: Vec<IpAddr> = m
        .services
        .values()
        .flat_map(|s| s.cluster_ips.clone())
        .collect();
    assert_eq!(ips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
}

#[test]
fn adds_updates_and_deletes_reach_the_mesh() {
    let mut cache = listed(base());
    // b stops being ready: its endpoint goes.
    assert!(cache.apply(Event::Apply(slice(
        "shop",
        "svc-x",
        &[
            ("app-5d9c-a", "10.0.0.1", true),
            ("app-5d9c-b", "10.0.0.2", false)
        ],
    ))));
    assert_eq!(endpoints(&mesh(&cache)), ["10.0.0.1:4143>8080"]);
    // A third pod and a second slice.
    cache.apply(Event::Apply(pod("shop", "app-5d9c-c", Some("10.0.0.3"))));
    cache.apply(Event::Apply(slice(
        "shop",
        "svc-y",
        &[("app-5d9c-c", "10.0.0.3", true)],
    )));
    assert_eq!(
        endpoints(&mesh(&cache)),
        ["10.0.0.1:4143>8080", "10.0.0.3:4143>8080"]
    );
    // The service is deleted.
    assert!(cache.apply(Event::Delete(service("shop", "svc"))));
    assert!(mesh(&cache).services.is_empty());
    // Deleting what is not there changes nothing.
    assert!(!cache.apply(Event::Delete(service("shop", "svc"))));
}

#[test]
fn a_relist_drops_what_it_no_longer_lists() {
    let mut cache = listed(base());
    cache.apply(Event::Init(Kind::Pod));
    cache.apply(Event::InitApply(pod(
        "shop",
        "app-5d9c-a",
        Some("10.0.0.1"),
    )));
    cache.apply(Event::InitDone(Kind::Pod));
    let m = mesh(&cache);
    assert_eq!(
        m.workloads[&("shop".to_string(), "app".to_string())]
            .instances
            .len(),
        1
    );
    // b's endpoint still in the slice, but b is gone: no identity for it, so no endpoint.
    assert_eq!(endpoints(&m), ["10.0.0.1:4143>8080"]);
}

#[test]
fn a_relist_in_progress_changes_nothing() {
    let mut cache = listed(base());
    let before = mesh(&cache);
    // A 410 Gone: the watcher lists again. Until InitDone the old objects stay in force.
    for kind in Kind::ALL {
        assert!(!cache.apply(Event::Init(kind)));
    }
    assert!(!cache.apply(Event::InitApply(ns("shop", true))));
    assert_eq!(mesh(&cache), before);
    assert!(cache.ready());
    // The relist ends with the same objects: the same mesh.
    for o in base() {
        cache.apply(Event::InitApply(o));
    }
    for kind in Kind::ALL {
        cache.apply(Event::InitDone(kind));
    }
    assert_eq!(mesh(&cache), before);
}

#[test]
fn unmeshed_namespaces_and_pods_without_an_ip_are_left_out() {
    let mut objects = base();
    objects.push(ns("other", false));
    objects.push(without_proxy(pod("other", "app-5d9c-z", Some("10.0.1.1"))));
    objects.push(pod("shop", "app-5d9c-p", None));
    objects.push(ns(crate::pki::CONTROL_NAMESPACE, true));
    objects.push(pod(
        crate::pki::CONTROL_NAMESPACE,
        "control-7f-a",
        Some("10.0.2.1"),
    ));
    let m = mesh(&listed(objects.clone()));
    assert_eq!(m.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
    assert_eq!(m.workloads.len(), 1);
    assert_eq!(m.workloads.values().next().unwrap().instances.len(), 2);

    // A pod that runs the proxy (opted in by its own label) meshes its unlabelled namespace.
    objects.push(pod("other", "app-5d9c-y", Some("10.0.1.2")));
    let m = mesh(&listed(objects));
    assert_eq!(m.namespaces.keys().collect::<Vec<_>>(), ["other", "shop"]);
    assert_eq!(m.workloads.len(), 2);
}

#[test]
fn an_invalid_policy_is_left_out_with_its_reasons_and_the_rest_works() {
    let mut objects = base();
    objects.push(policy(
        "shop",
        "good",
        json!({"target": {"workload": "app", "port": 8080}, "from": {"namespaces": ["bank"]}}),
    ));
    objects.push(policy(
        "shop",
        "bad",
        json!({"target": {"port": 70000}, "routes": [{"methods": ["FETCH"], "pathPrefix": "v1"}], "from": {"identities": ["spiffe://x/y"]}}),
    ));
    objects.push(policy("shop", "nofrom", json!({"target": {"port": 80}})));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.policies.len(), 1);
    assert_eq!(m.policies[0].name, "good");
    let bad = verdicts.iter().find(|v| v.name == "bad").unwrap();
    let problems = bad.accepted.clone().unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(
        problems[0].starts_with("AuthorizationPolicy shop/bad: spec.target.port: 70000"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.routes[0].methods[0]"))
    );
    assert_eq!(bad.reason, "Invalid");
    assert_eq!(bad.generation, Some(2));
    let nofrom = verdicts.iter().find(|v| v.name == "nofrom").unwrap();
    assert!(nofrom.accepted.as_ref().unwrap_err()[0].contains("missing field `from`"));
    let good = verdicts.iter().find(|v| v.name == "good").unwrap();
    assert_eq!(good.accepted, Ok(()));
    assert_eq!(endpoints(&m).len(), 2);
}

#[test]
fn a_route_to_a_missing_service_is_refused() {
    let mut objects = base();
    objects.push(route("shop", "r1", "svc"));
    objects.push(route("shop", "r2", "vault"));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.routes.len(), 1);
    assert_eq!(
        m.routes[0].rules.timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let r2 = verdicts.iter().find(|v| v.name == "r2").unwrap();
    assert_eq!(r2.reason, "UnknownReference");
}

#[test]
fn workloads_are_named_by_their_controller() {
    let Object::Pod(mut p) = pod("shop", "app-5d9c-a", None) else {
        unreachable!()
    };
    assert_eq!(workload_of(&p), ("Deployment", "app".to_string()));
    p.metadata.owner_references.as_mut().unwrap()[0].kind = "StatefulSet".into();
    p.metadata.owner_references.as_mut().unwrap()[0].name = "db".into();
    assert_eq!(workload_of(&p), ("StatefulSet", "db".to_string()));
    p.metadata.owner_references = None;
    assert_eq!(workload_of(&p), ("Pod", "app-5d9c-a".to_string()));
}

#[test]
fn a_condition_is_written_only_when_it_changes() {
    let objects = {
        let mut o = base();
        o.push(route("shop", "r2", "vault"));
        o
    };
    let (_, verdicts) = build(&listed(objects));
    let v = verdicts.iter().find(|v| v.name == "r2").unwrap();
    let first = condition_update(None, v, "2026-12-03T09:00:00Z").unwrap();
    assert_eq!(first.status, "False");
    assert_eq!(first.reason, "UnknownReference");
    assert_eq!(first.observed_generation, Some(1));
    assert!(
        first
            .message
            .contains("spec.service: unknown service shop/vault")
    );
    // The object now carries it: nothing to write.
    assert_eq!(
        condition_update(Some(&first), v, "2026-12-03T09:05:00Z"),
        None
    );
    // A new generation with the same problem: rewritten, the transition time kept.
    let mut newer = v.clone();
    newer.generation = Some(2);
    let second = condition_update(Some(&first), &newer, "2026-12-03T09:05:00Z").unwrap();
    assert_eq!(second.observed_generation, Some(2));
    assert_eq!(
        second.last_transition_time.as_deref(),
        Some("2026-12-03T09:00:00Z")
    );
    // Accepted: a transition, with the new time.
    let mut fixed = newer.clone();
    fixed.accepted = Ok(());
    fixed.reason = "Accepted";
    let third = condition_update(Some(&second), &fixed, "2026-12-03T09:06:00Z").unwrap();
    assert_eq!(
        (third.status.as_str(), third.message.as_str()),
        ("True", "")
    );
    assert_eq!(
        third.last_transition_time.as_deref(),
        Some("2026-12-03T09:06:00Z")
    );
}

#[test]
fn a_pod_without_the_proxy_is_not_in_the_mesh_and_a_native_sidecar_counts() {
    let Object::Pod(plain) = without_proxy(pod("shop", "app-5d9c-c", Some("10.0.0.3"))) else {
        unreachable!()
    };
    assert!(!has_proxy(&plain));
    let mut sidecar = plain.clone();
    sidecar.metadata.name = Some("app-5d9c-d".into());
    sidecar.status.as_mut().unwrap().pod_ip = Some("10.0.0.4".into());
    sidecar.spec.as_mut().unwrap().init_containers =
        Some(vec![serde_json::from_value(json!({
        "name": "onemesh-proxy", "restartPolicy": "Always", "ports": [{"containerPort": 4143}],
    }))
    .unwrap()]);
    assert!(has_proxy(&sidecar));
    let mut objects = base();
    objects.push(Object::Pod(plain));
    objects.push(Object::Pod(sidecar));
    objects.push(slice(
        "shop",
        "svc-y",
        &[
            ("app-5d9c-c", "10.0.0.3", true),
            ("app-5d9c-d", "10.0.0.4", true),
        ],
    ));
    let m = mesh(&listed(objects));
    let w = &m.workloads[&("shop".to_string(), "app".to_string())];
    assert_eq!(w.instances.len(), 3, "a, b and the native-sidecar pod d");
    assert_eq!(w.ports.len(), 1, "{:?}", w.ports);
    assert_eq!(
        endpoints(&m),
        [
            "10.0.0.1:4143>8080",
            "10.0.0.2:4143>8080",
            "10.0.0.4:4143>8080"
        ]
    );
}

fn route_with(ns: &str, name: &str, spec: serde_json::Value) -> Object {
    Object::Route(
        serde_json::from_value(json!({
            "apiVersion": "onemesh.dev/v1", "kind": "Route",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1},
            "spec": spec,
        }))
        .unwrap(),
    )
}

#[test]
fn a_route_fault_folds_with_the_checks_of_mesh_yaml() {
    use crate::config::{AbortStatus, Percent};
    let mut objects = base();
    objects.push(route_with(
        "shop",
        "flaky",
        json!({"service": "svc", "fault": {
            "abort": {"grpcStatus": 14, "percent": 30},
            "delay": {"duration": "3s"},
            "header": {"name": "X-Fault", "value": "on"},
        }}),
    ));
    objects.push(route_with(
        "shop",
        "both-statuses",
        json!({"service": "svc", "fault": {"abort": {"httpStatus": 503, "grpcStatus": 14}}}),
    ));
    objects.push(route_with(
        "shop",
        "nothing-to-inject",
        json!({"service": "svc", "fault": {"header": {"name": "x-fault"}}}),
    ));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.routes.len(), 1, "{verdicts:?}");
    let fault = m.routes[0].rules.fault.clone().expect("a fault");
    let abort = fault.abort.expect("an abort");
    assert_eq!(
        (abort.status, abort.percent),
        (AbortStatus::Grpc(14), Percent(30_000))
    );
    let delay = fault.delay.expect("a delay");
    assert_eq!(
        (delay.duration, delay.percent),
        (std::time::Duration::from_secs(3), Percent::ALL)
    );
    assert_eq!(fault.header.map(|h| h.name), Some("x-fault".to_string()));
    for (name, needle) in [
        (
            "both-statuses",
            "spec.fault.abort: give exactly one of httpStatus and grpcStatus",
        ),
        (
            "nothing-to-inject",
            "spec.fault: a fault needs something to inject",
        ),
    ] {
        let v = verdicts.iter().find(|v| v.name == name).unwrap();
        let problems = v.accepted.as_ref().expect_err("refused").join("\n");
        assert!(problems.contains(needle), "{name}: {problems}");
    }
}

fn rate_limit_policy(ns: &str, name: &str, spec: serde_json::Value) -> Object {
    Object::RateLimitPolicy(
        serde_json::from_value(json!({
            "apiVersion": "onemesh.dev/v1", "kind": "RateLimitPolicy",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1},
            "spec": spec,
        }))
        .unwrap(),
    )
}

#[test]
fn a_rate_limit_policy_folds_with_the_checks_of_mesh_yaml() {
    use crate::config::Rate;
    let mut objects = base();
    objects.push(rate_limit_policy(
        "shop",
        "per-caller",
        json!({"target": {"workload": "web", "port": 8080},
               "match": {"methods": ["POST"], "pathPrefix": "/pay"},
               "identity": {"requestsPerSecond": 10},
               "overrides": [{"requestsPerSecond": 50, "burst": 100,
                              "from": {"identities": ["spiffe://cluster.local/ns/pg/sa/pg"]}}]}),
    ));
    objects.push(rate_limit_policy(
        "shop",
        "no-limit",
        json!({"target": {"workload": "web"}}),
    ));
    objects.push(rate_limit_policy(
        "shop",
        "bad-match",
        json!({"target": {"workload": "web"}, "match": {"pathPrefix": "pay"},
               "total": {"requestsPerSecond": 1}}),
    ));
    objects.push(rate_limit_policy(
        "shop",
        "bad-override",
        json!({"target": {"workload": "web"},
               "overrides": [{"requestsPerSecond": 0, "from": {}}]}),
    ));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.rate_limits.len(), 1, "{verdicts:?}");
    let l = &m.rate_limits[0];
    assert_eq!(
        (l.target_workload.as_str(), l.target_port),
        ("web", Some(8080))
    );
    let rate = |requests_per_second, burst| Rate {
        requests_per_second,
        burst,
    };
    assert_eq!(l.limits.identity, Some(rate(10, 10)));
    assert_eq!(l.limits.overrides[0].rate, rate(50, 100));
    assert_eq!(
        (
            l.matches.methods.as_slice(),
            l.matches.path_prefix.as_deref()
        ),
        (&["POST".to_string()][..], Some("/pay"))
    );
    for (name, needles) in [
        ("bad-match", &["spec.match.pathPrefix"][..]),
        ("no-limit", &["spec: a rate limit policy needs a limit"][..]),
        (
            "bad-override",
            &[
                "spec.overrides[0].requestsPerSecond: 0 is out of range",
                "spec.overrides[0].from: empty list",
            ][..],
        ),
    ] {
        let v = verdicts.iter().find(|v| v.name == name).unwrap();
        assert_eq!(v.kind, Kind::RateLimitPolicy);
        let problems = v.accepted.as_ref().expect_err("refused").join("\n");
        for needle in needles {
            assert!(problems.contains(needle), "{name}: {problems}");
        }
    }
}

/// `service("shop", "svc")` with the circuit-breaker annotation set to `annotation`.
fn annotated(annotation: &str) -> Object {
    let Object::Service(mut svc) = service("shop", "svc") else {
        unreachable!("service gives a Service")
    };
    svc.metadata.annotations = Some(
        [(
            onemesh_crds::CIRCUIT_BREAKER_ANNOTATION.to_string(),
            annotation.to_string(),
        )]
        .into(),
    );
    Object::Service(svc)
}

#[test]
fn a_service_annotation_gives_it_a_circuit_breaker() {
    let mut objects = base();
    objects.retain(|o| !matches!(o, Object::Service(_)));
    objects.push(annotated(
        r#"{"consecutiveFailures": 5, "successRate": {"minPercent": 99.5}, "maxEjection": "30s"}"#,
    ));
    let m = mesh(&listed(objects));
    let svc = m.services.values().next().unwrap();
    let b = svc.circuit_breaker.clone().expect("the breaker was read");
    assert_eq!(b.consecutive_failures, 5);
    assert_eq!(b.max_ejection, std::time::Duration::from_secs(30));
    assert_eq!(b.success_rate.unwrap().min_permille, 995);
}

#[test]
fn a_bad_breaker_annotation_is_refused_naming_the_field_and_the_service_stays() {
    for (text, says) in [
        ("five", "not JSON"),
        (
            r#"{"consecutivefailures": 5}"#,
            "unknown field \"consecutivefailures\"",
        ),
        (
            r#"{"consecutiveFailures": 0}"#,
            "consecutiveFailures: 0 is out of range",
        ),
        (
            r#"{"successRate": {"minPercent": 150}}"#,
            "successRate.minPercent",
        ),
        ("{}", "needs a rule"),
        (r#"{"consecutiveFailures": "5"}"#, "invalid type"),
    ] {
        let Object::Service(svc) = annotated(text) else {
            unreachable!()
        };
        let problems = service_breaker(&svc).expect_err(text);
        assert!(problems[0].contains(says), "{text}: {problems:?}");
        assert!(
            problems[0].contains("onemesh.dev/circuit-breaker"),
            "{problems:?}"
        );
        // the service itself stays in the mesh, without a breaker
        let mut objects = base();
        objects.retain(|o| !matches!(o, Object::Service(_)));
        objects.push(Object::Service(svc));
        let m = mesh(&listed(objects));
        let s = m.services.values().next().expect("the service stays");
        assert_eq!(s.circuit_breaker, None);
    }
}

#[test]
fn a_route_circuit_breaker_is_checked_like_mesh_yaml() {
    let with = |name: &str, breaker: serde_json::Value| {
        Object::Route(
            serde_json::from_value(json!({
                "apiVersion": "onemesh.dev/v1", "kind": "Route",
                "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 1},
                "spec": {"service": "svc", "circuitBreaker": breaker},
            }))
            .unwrap(),
        )
    };
    let mut objects = base();
    objects.push(with("good", json!({"consecutiveFailures": 3})));
    objects.push(with(
        "bad",
        json!({"consecutiveFailures": 3, "baseEjection": "10s", "maxEjection": "1s"}),
    ));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.routes.len(), 1);
    let b = m.routes[0].rules.circuit_breaker.clone().unwrap();
    assert_eq!(b.consecutive_failures, 3);
    let bad = verdicts.iter().find(|v| v.name == "bad").unwrap();
    let problems = bad.accepted.clone().unwrap_err();
    assert!(
        problems[0].contains("spec.circuitBreaker.maxEjection"),
        "{problems:?}"
    );
}

fn annotated_ns(name: &str, mode: &str) -> Object {
    Object::Namespace(
        serde_json::from_value(json!({"metadata": {
            "name": name,
            "labels": {"onemesh.dev/mesh": "enabled"},
            "annotations": {"onemesh.dev/default-policy-mode": mode},
        }}))
        .unwrap(),
    )
}

#[test]
fn a_namespace_annotation_sets_its_default_mode_and_a_bad_one_keeps_enforce() {
    let mut objects = base();
    objects.push(annotated_ns("audited", "audit"));
    objects.push(annotated_ns("typo", "audti"));
    objects.push(ns("plain", true));
    let m = mesh(&listed(objects));
    assert_eq!(m.namespaces["audited"].default_mode, PolicyMode::Audit);
    assert_eq!(m.namespaces["typo"].default_mode, PolicyMode::Enforce);
    assert_eq!(m.namespaces["plain"].default_mode, PolicyMode::Enforce);
    assert_eq!(m.namespaces["shop"].default_mode, PolicyMode::Enforce);
}

#[test]
fn a_policy_mode_and_grpc_routes_fold_like_mesh_yaml() {
    let mut objects = base();
    objects.push(policy(
        "shop",
        "grpc",
        json!({"mode": "audit", "routes": [{"grpc": {"service": "pay.v1.Payments", "method": "Pay"}}, {"grpc": {"service": "pay.v1.Refunds"}}], "from": {"namespaces": ["bank"]}}),
    ));
    objects.push(policy(
        "shop",
        "mixed",
        json!({"routes": [{"grpc": {"service": "pay.v1.Payments"}, "methods": ["GET"]}], "from": {"namespaces": ["bank"]}}),
    ));
    objects.push(policy(
        "shop",
        "badmode",
        json!({"mode": "dry-run", "routes": [{"grpc": {"service": "pay.v1.Payments", "method": "a/b"}}], "from": {}}),
    ));
    let (m, verdicts) = build(&listed(objects));
    assert_eq!(m.policies.len(), 1, "{verdicts:?}");
    let p = &m.policies[0];
    assert_eq!(p.mode, PolicyMode::Audit);
    assert_eq!(p.routes[0].methods, vec!["POST"]);
    assert_eq!(
        p.routes[0].path_prefix.as_deref(),
        Some("/pay.v1.Payments/Pay")
    );
    assert_eq!(p.routes[1].path_prefix.as_deref(), Some("/pay.v1.Refunds/"));
    let mixed = verdicts.iter().find(|v| v.name == "mixed").unwrap();
    let problems = mixed.accepted.clone().unwrap_err();
    assert!(
        problems[0].contains("spec.routes[0].grpc: grpc cannot be combined"),
        "{problems:?}"
    );
    let bad = verdicts.iter().find(|v| v.name == "badmode").unwrap();
    let problems = bad.accepted.clone().unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.mode: \"dry-run\" is not a policy mode"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.routes[0].grpc.method"))
    );
}
