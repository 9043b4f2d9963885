//! Table tests of injection: the namespace/label rule, annotations and their invalid values,
//! re-injection, a hand-written sidecar, the proxy's uid, probe rewriting, workload names,
//! uninject's round trip, and the webhook's patch equal to `inject` on the same pod.

use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A pod of Deployment `web` (ReplicaSet `web-5d9c`), with an HTTP probe on a named port, a TCP
/// probe, an exec probe, and an init container of its own.
fn pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-5d9c-x7k2p",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d9c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c", "uid": "rs", "controller": true}],
        },
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "migrate", "image": "app", "args": ["migrate"]}],
            "containers": [{
                "name": "app",
                "image": "app",
                "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 2},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"exec": {"command": ["true"]}},
            }, {
                "name": "side",
                "image": "side",
                "livenessProbe": {"httpGet": {"path": "/", "port": 9000, "scheme": "HTTPS"}},
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }))
    .unwrap()
}

fn annotate(pod: &mut Pod, key: &str, value: &str) {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
}

fn label(pod: &mut Pod, key: &str, value: &str) {
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
}

fn run(pod: &mut Pod) -> Result<Outcome, InjectError> {
    let workload = Workload::of_pod(pod);
    let spec = pod.spec.as_mut().unwrap();
    inject(&mut pod.metadata, spec, &workload, &InjectConfig::default())
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn proxy(pod: &Pod) -> &Container {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn init_args(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
        .args
        .clone()
        .unwrap()
}

#[test]
fn namespace_and_label_decide_who_is_injected() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let meshed = labels(&[("onemesh.dev/mesh", "enabled")]);
    let plain = labels(&[("team", "a")]);
    let table = [
        (&meshed, labels(&[]), true),
        (&meshed, labels(&[("onemesh.dev/inject", "enabled")]), true),
        (
            &meshed,
            labels(&[("onemesh.dev/inject", "disabled")]),
            false,
        ),
        (&plain, labels(&[]), false),
        (&plain, labels(&[("onemesh.dev/inject", "enabled")]), true),
        (&plain, labels(&[("onemesh.dev/inject", "disabled")]), false),
        (&plain, labels(&[("onemesh.dev/inject", "yes")]), false),
    ];
    for (ns, pod, want) in table {
        assert_eq!(wanted(ns, &pod), want, "namespace {ns:?}, pod {pod:?}");
    }
}

#[test]
fn a_pod_labeled_disabled_is_skipped_even_when_sent() {
    let mut p = pod();
    label(&mut p, INJECT_LABEL, "disabled");
    let before = p.clone();
    assert!(matches!(run(&mut p).unwrap(), Outcome::Skipped(why) if why.contains("disabled")));
    assert_eq!(p, before);
}

#[test]
fn injects_init_then_proxy_in_front_of_the_pods_own_init_containers() {
    let mut p = pod();
    assert_eq!(run(&mut p).unwrap(), Outcome::Injected);
    assert_eq!(init_names(&p), ["onemesh-init", "onemesh-proxy", "migrate"]);
    let spec = p.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init_args(&p), ["init", "--proxy-uid", "2102"]);
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let proxy = proxy(&p);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        env(proxy, "ONEMESH_PROXY_IDENTITY"),
        Some(
            "spiffe://cluster.local/ns/$(ONEMESH_POD_NAMESPACE)/sa/$(ONEMESH_POD_SERVICE_ACCOUNT)"
        )
    );
    // The variables the identity expands are defined before it.
    let names: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        &names[..3],
        [
            "ONEMESH_POD_NAMESPACE",
            "ONEMESH_POD_SERVICE_ACCOUNT",
            "ONEMESH_PROXY_IDENTITY"
        ]
    );
    assert!(!names.iter().any(|n| n.contains("HTTP_PROXY")));
    assert_eq!(env(proxy, "ONEMESH_PROXY_WORKLOAD"), Some("web"));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (
            sc.run_as_user,
            sc.run_as_non_root,
            sc.read_only_root_filesystem
        ),
        (Some(2102), Some(true), Some(true))
    );
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (startup.path.as_deref(), &startup.port),
        (Some("/ready"), &IntOrString::Int(4191))
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "data",
            "onemesh-token",
            "onemesh-anchors",
            "onemesh-proxy-state"
        ]
    );
    let state = spec.volumes.as_ref().unwrap()[3]
        .empty_dir
        .as_ref()
        .unwrap();
    assert_eq!(state.medium.as_deref(), Some("Memory"));
    let token = &spec.volumes.as_ref().unwrap()[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        token
            .service_account_token
            .as_ref()
            .unwrap()
            .audience
            .as_deref(),
        Some("onemesh")
    );
    assert_eq!(
        p.metadata.annotations.as_ref().unwrap()[INJECTED_ANNOTATION],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn injecting_again_is_a_no_op() {
    let mut p = pod();
    run(&mut p).unwrap();
    let once = p.clone();
    assert_eq!(run(&mut p).unwrap(), Outcome::AlreadyInjected);
    assert_eq!(p, once);
    let (outcome, ops) = patch(&p, &InjectConfig::default()).unwrap();
    assert_eq!((outcome, ops.len()), (Outcome::AlreadyInjected, 0));
}

#[test]
fn a_hand_written_sidecar_is_left_alone() {
    for in_init in [true, false] {
        let mut p = pod();
        let sidecar: Container =
            serde_json::from_value(json!({"name": "onemesh-proxy", "image": "mine"})).unwrap();
        let spec = p.spec.as_mut().unwrap();
        if in_init {
            spec.init_containers.as_mut().unwrap().push(sidecar);
        } else {
            spec.containers.push(sidecar);
        }
        let before = p.clone();
        let outcome = run(&mut p).unwrap();
        assert!(
            matches!(&outcome, Outcome::Skipped(why) if why.contains("by hand")),
            "{outcome:?}"
        );
        assert_eq!(p, before);
        // And uninject does not remove it (no marker).
        let spec = p.spec.as_mut().unwrap();
        assert!(!uninject(&mut p.metadata, spec).unwrap());
        assert_eq!(p, before);
    }
}

#[test]
fn an_app_running_as_the_proxys_uid_is_refused() {
    // In a container, in an init container, and inherited from the pod.
    let cases: [fn(&mut PodSpec); 3] = [
        |s| {
            s.containers[1].security_context =
                Some(serde_json::from_value(json!({"runAsUser": 2102})).unwrap())
        },
        |s| {
            s.init_containers.as_mut().unwrap()[0].security_context =
                Some(serde_json::from_value(json!({"runAsUser": 2102})).unwrap())
        },
        |s| s.security_context = Some(serde_json::from_value(json!({"runAsUser": 2102})).unwrap()),
    ];
    for set in cases {
        let mut p = pod();
        set(p.spec.as_mut().unwrap());
        let before = p.clone();
        let err = run(&mut p).unwrap_err();
        assert!(
            matches!(err, InjectError::ProxyUid { uid: 2102, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("bypass"), "{err}");
        assert_eq!(p, before);
    }
    // A container overriding the pod's 2102 with its own uid is fine only if all do.
    let mut p = pod();
    let spec = p.spec.as_mut().unwrap();
    spec.security_context = Some(serde_json::from_value(json!({"runAsUser": 2102})).unwrap());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.security_context = Some(serde_json::from_value(json!({"runAsUser": 1000})).unwrap());
    }
    assert_eq!(run(&mut p).unwrap(), Outcome::Injected);
}

#[test]
fn annotations_reach_the_init_step_and_the_proxy() {
    let mut p = pod();
    annotate(&mut p, SKIP_INBOUND_PORTS, "22, 8000-8010");
    annotate(&mut p, SKIP_OUTBOUND_PORTS, "5432");
    annotate(&mut p, SKIP_OUTBOUND_CIDRS, "10.0.0.0/8,fd00::/8");
    annotate(&mut p, OPAQUE_PORTS, "9000,9001");
    annotate(&mut p, PROXY_CPU_REQUEST, "100m");
    annotate(&mut p, PROXY_MEMORY_REQUEST, "32Mi");
    annotate(&mut p, PROXY_MEMORY_LIMIT, "1Gi");
    annotate(&mut p, ACCESS_LOG, "json");
    run(&mut p).unwrap();
    assert_eq!(
        init_args(&p),
        [
            "init",
            "--proxy-uid",
            "2102",
            "--skip-inbound-ports",
            "22,8000-8010",
            "--skip-outbound-ports",
            "5432",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,fd00::/8"
        ]
    );
    let proxy = proxy(&p);
    assert_eq!(env(proxy, "ONEMESH_PROXY_OPAQUE_PORTS"), Some("9000,9001"));
    assert_eq!(env(proxy, "ONEMESH_PROXY_ACCESS_LOG"), Some("json"));
    let resources = proxy.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "32Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
}

#[test]
fn a_bad_annotation_is_refused_with_its_name() {
    let table = [
        (SKIP_INBOUND_PORTS, "22,http"),
        (SKIP_INBOUND_PORTS, "0"),
        (SKIP_INBOUND_PORTS, "9000-8000"),
        (SKIP_INBOUND_PORTS, "70000"),
        (SKIP_INBOUND_PORTS, " , "),
        (SKIP_OUTBOUND_PORTS, "5432-"),
        (SKIP_OUTBOUND_CIDRS, "10.0.0.0"),
        (SKIP_OUTBOUND_CIDRS, "10.0.0.0/33"),
        (SKIP_OUTBOUND_CIDRS, "fd00::/129"),
        (SKIP_OUTBOUND_CIDRS, "example.com/8"),
        (OPAQUE_PORTS, "9000-9010"),
        (PROXY_CPU_REQUEST, "lots"),
        (PROXY_MEMORY_REQUEST, "64MB"),
        (PROXY_MEMORY_LIMIT, ""),
        (PROXY_MEMORY_LIMIT, "1.2.3Mi"),
        (ACCESS_LOG, "yes"),
    ];
    for (annotation, value) in table {
        let mut p = pod();
        annotate(&mut p, annotation, value);
        let before = p.clone();
        let err = run(&mut p).unwrap_err();
        assert!(
            matches!(&err, InjectError::BadAnnotation { annotation: a, .. } if *a == annotation),
            "{annotation}={value:?}: {err}"
        );
        assert!(err.to_string().contains(annotation), "{err}");
        assert_eq!(p, before, "{annotation}={value:?}");
    }
}

#[test]
fn http_and_tcp_probes_go_through_the_proxys_admin_port() {
    let mut p = pod();
    run(&mut p).unwrap();
    let app = &p.spec.as_ref().unwrap().containers[0];
    let live = app.liveness_probe.as_ref().unwrap();
    let get = live.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-probe/app/liveness"));
    assert_eq!(get.port, IntOrString::Int(4191));
    assert!(get.http_headers.is_none());
    assert_eq!(
        live.timeout_seconds,
        Some(2),
        "the probe's own settings stay"
    );
    let ready = app.readiness_probe.as_ref().unwrap();
    assert!(ready.tcp_socket.is_none());
    assert_eq!(
        ready.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-probe/app/readiness")
    );
    // exec and HTTPS probes are left alone.
    assert!(app.startup_probe.as_ref().unwrap().exec.is_some());
    let side = &p.spec.as_ref().unwrap().containers[1];
    assert_eq!(
        side.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port,
        IntOrString::Int(9000)
    );
    // The originals, named port resolved, in the proxy's variable (the format the proxy reads).
    let probes: serde_json::Value =
        serde_json::from_str(env(proxy(&p), APP_PROBES_ENV).unwrap()).unwrap();
    assert_eq!(
        probes["app/liveness"]["http"],
        json!({"port": 8080, "path": "/healthz", "headers": [["X-Probe", "1"]]})
    );
    assert_eq!(probes["app/liveness"]["timeoutSeconds"], 2);
    assert_eq!(probes["app/readiness"]["tcp"], json!({"port": 8080}));
    assert_eq!(probes["app/readiness"]["timeoutSeconds"], 1);
    assert_eq!(probes.as_object().unwrap().len(), 2);
}

#[test]
fn a_probe_on_an_unknown_named_port_is_refused() {
    let mut p = pod();
    p.spec.as_mut().unwrap().containers[0]
        .readiness_probe
        .as_mut()
        .unwrap()
        .tcp_socket
        .as_mut()
        .unwrap()
        .port = IntOrString::String("grpc".into());
    let err = run(&mut p).unwrap_err();
    assert!(
        matches!(&err, InjectError::ProbePort { port, kind: "readiness", .. } if port == "grpc"),
        "{err}"
    );
}

#[test]
fn a_pod_without_probes_gets_no_probe_variable() {
    let mut p = pod();
    for c in &mut p.spec.as_mut().unwrap().containers {
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
    }
    run(&mut p).unwrap();
    assert_eq!(env(proxy(&p), APP_PROBES_ENV), None);
}

#[test]
fn the_workload_is_the_owning_controller() {
    let owned = |kind: &str, name: &str| {
        let mut p = pod();
        p.metadata.owner_references.as_mut().unwrap()[0].kind = kind.into();
        p.metadata.owner_references.as_mut().unwrap()[0].name = name.into();
        Workload::of_pod(&p)
    };
    let name = |s: &str| Workload::Name(s.to_string());
    assert_eq!(owned("ReplicaSet", "web-5d9c"), name("web"));
    assert_eq!(owned("ReplicaSet", "bare-rs"), name("bare-rs"));
    assert_eq!(owned("StatefulSet", "db"), name("db"));
    assert_eq!(owned("DaemonSet", "agent"), name("agent"));
    assert_eq!(owned("Job", "backup-28391"), name("backup-28391"));
    let mut bare = pod();
    bare.metadata.owner_references = None;
    assert_eq!(Workload::of_pod(&bare), name("web-5d9c-x7k2p"));
    bare.metadata.name = None;
    bare.metadata.generate_name = Some("runner-".into());
    assert_eq!(Workload::of_pod(&bare), name("runner"));

    // A CronJob's pods read their Job's name from their label.
    let mut p = pod();
    let spec = p.spec.as_mut().unwrap();
    inject(
        &mut p.metadata,
        spec,
        &Workload::JobNameLabel,
        &InjectConfig::default(),
    )
    .unwrap();
    let var = proxy(&p)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ONEMESH_PROXY_WORKLOAD")
        .unwrap();
    assert_eq!(
        var.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.labels['batch.kubernetes.io/job-name']"
    );
}

#[test]
fn uninject_restores_the_pod_exactly() {
    let mut variants = vec![pod()];
    // No init containers, volumes or annotations of its own.
    let mut bare = pod();
    let spec = bare.spec.as_mut().unwrap();
    spec.init_containers = None;
    spec.volumes = None;
    variants.push(bare);
    let mut annotated = pod();
    annotate(&mut annotated, SKIP_INBOUND_PORTS, "22");
    variants.push(annotated);
    for original in variants {
        let mut p = original.clone();
        run(&mut p).unwrap();
        assert_ne!(p, original);
        let spec = p.spec.as_mut().unwrap();
        assert!(uninject(&mut p.metadata, spec).unwrap());
        assert_eq!(p, original);
        // Uninjecting what is not injected changes nothing.
        let spec = p.spec.as_mut().unwrap();
        assert!(!uninject(&mut p.metadata, spec).unwrap());
        assert_eq!(p, original);
    }
}

#[test]
fn the_webhooks_patch_gives_the_same_pod_as_inject() {
    for annotated in [false, true] {
        let mut original = pod();
        if annotated {
            annotate(&mut original, OPAQUE_PORTS, "9000");
        }
        let (outcome, ops) = patch(&original, &InjectConfig::default()).unwrap();
        assert_eq!(outcome, Outcome::Injected);
        assert!(ops.iter().all(|op| op["op"] == "add"));
        let mut doc = serde_json::to_value(&original).unwrap();
        let p: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        let patched: Pod = serde_json::from_value(doc).unwrap();

        let mut injected = original.clone();
        run(&mut injected).unwrap();
        assert_eq!(patched, injected);
    }
    // A pod with no annotations, init containers or volumes at all: `add` creates them.
    let mut bare = pod();
    bare.metadata.annotations = None;
    let spec = bare.spec.as_mut().unwrap();
    spec.init_containers = None;
    spec.volumes = None;
    let (_, ops) = patch(&bare, &InjectConfig::default()).unwrap();
    let mut doc = serde_json::to_value(&bare).unwrap();
    let p: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    run(&mut bare).unwrap();
    assert_eq!(serde_json::from_value::<Pod>(doc).unwrap(), bare);
}

#[test]
fn a_pod_without_spec_is_an_error_not_a_panic() {
    let mut p = pod();
    p.spec = None;
    assert!(matches!(
        patch(&p, &InjectConfig::default()),
        Err(InjectError::NoSpec)
    ));
}

#[test]
fn a_volume_named_like_ours_is_refused() {
    let mut p = pod();
    p.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].name = STATE_VOLUME.into();
    let err = run(&mut p).unwrap_err();
    assert!(
        matches!(err, InjectError::NameTaken { what: "volume", .. }),
        "{err}"
    );
}

#[test]
fn other_ports_are_passed_to_the_init_step() {
    let mut p = pod();
    let config = InjectConfig {
        admin_port: 5191,
        ..InjectConfig::default()
    };
    let spec = p.spec.as_mut().unwrap();
    inject(
        &mut p.metadata,
        spec,
        &Workload::Name("web".into()),
        &config,
    )
    .unwrap();
    assert_eq!(
        init_args(&p),
        ["init", "--proxy-uid", "2102", "--admin-port", "5191"]
    );
    let app = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        app.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port,
        IntOrString::Int(5191)
    );
}
