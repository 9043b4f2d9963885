//! Proxy injection on the test cluster: `onemesh install` registers the control plane's
//! webhook, the API server calls it over TLS (the caBundle is the mesh's anchors), and the STORED
//! pod spec of a pod in a meshed namespace has the init step, the proxy and the marker annotation;
//! a pod labeled `onemesh.dev/inject: disabled` is not injected, a pod elsewhere only when
//! labeled `enabled`; a pod running as the proxy's uid is refused with the reason. (The pods
//! themselves need `onemesh-proxy init` to run; this test reads the stored spec only.)

mod kube;

use std::time::{Duration, Instant};

use kube::{NEEDS_CLUSTER, apply, eventually, kubectl, kubectl_in, onemesh, uninstall};
use serde_json::Value;

fn namespace(name: &str, meshed: bool) {
    let labels = if meshed {
        "\n  labels: {onemesh.dev/mesh: enabled}"
    } else {
        ""
    };
    apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"
    ));
}

/// A pod manifest: busybox sleeping, with these labels and an HTTP readiness probe.
fn pod(ns: &str, name: &str, labels: &str, uid: Option<i64>) -> String {
    let security = uid
        .map(|u| format!("\n      securityContext: {{runAsUser: {u}}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n  containers:\n    - name: app\n      image: busybox\n      command: [sleep, '3600']\n      ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        httpGet: {{path: /ready, port: http}}{security}\n"
    )
}

/// `kubectl create` of `manifest`: (success, output, how long it took).
fn create(manifest: &str) -> (bool, String, Duration) {
    let start = Instant::now();
    let (ok, out) = kubectl_in(&["create", "-f", "-"], manifest);
    (ok, out, start.elapsed())
}

fn stored(ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl(&["-n", ns, "get", "pod", name, "-o", "json"]))
        .expect("the pod as JSON")
}

fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\""]
fn kube_inject_by_the_webhook() {
    let _ = NEEDS_CLUSTER;
    let _ = kube::kubeconfig();
    uninstall();
    let _clean_on_panic = kube::CleanOnPanic(uninstall);
    let (ok, manifests) = onemesh(&["install", "--replicas", "1"]);
    assert!(ok, "onemesh install failed: {manifests}");
    apply(&manifests);
    kubectl(&[
        "-n",
        "onemesh",
        "rollout",
        "status",
        "statefulset/onemesh-control",
        "--timeout=120s",
    ]);
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let (meshed, plain) = (format!("inj-m-{tag}"), format!("inj-p-{tag}"));
    namespace(&meshed, true);
    namespace(&plain, false);

    // The first meshed pod: the webhook may need a moment behind its Service.
    let took = eventually(
        "a pod in a meshed namespace is admitted",
        Duration::from_secs(60),
        || {
            let (ok, out, took) = create(&pod(&meshed, "web", "app: web", None));
            if !ok {
                println!("not yet: {out}");
            }
            ok.then_some(took)
        },
    );
    println!("first meshed pod admitted in {took:?}");
    let web = stored(&meshed, "web");
    assert_eq!(init_names(&web), ["onemesh-init", "onemesh-proxy"], "{web}");
    assert_eq!(
        web["metadata"]["annotations"]["onemesh.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    let proxy = &web["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    let env = proxy["env"].as_array().expect("the proxy's env");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {env:?}"))
    };
    assert_eq!(var("ONEMESH_PROXY_WORKLOAD")["value"], "web");
    assert!(
        var("ONEMESH_PROXY_APP_PROBES")["value"]
            .as_str()
            .unwrap()
            .contains(r#""port":8080"#)
    );
    assert_eq!(
        web["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-probe/app/readiness"
    );
    let volumes: Vec<&str> = web["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["onemesh-token", "onemesh-anchors", "onemesh-proxy-state"] {
        assert!(volumes.contains(&v), "{volumes:?}");
    }

    // Opted out by label: stored as written.
    let (ok, out, _) = create(&pod(
        &meshed,
        "out",
        "app: out, onemesh.dev/inject: disabled",
        None,
    ));
    assert!(ok, "{out}");
    let out = stored(&meshed, "out");
    assert!(init_names(&out).is_empty(), "{out}");
    assert!(out["metadata"]["annotations"]["onemesh.dev/injected"].is_null());

    // Elsewhere: only a pod that asks.
    let (ok, out, _) = create(&pod(
        &plain,
        "asks",
        "app: asks, onemesh.dev/inject: enabled",
        None,
    ));
    assert!(ok, "{out}");
    assert_eq!(
        init_names(&stored(&plain, "asks")),
        ["onemesh-init", "onemesh-proxy"]
    );
    let (ok, out, _) = create(&pod(&plain, "quiet", "app: quiet", None));
    assert!(ok, "{out}");
    assert!(init_names(&stored(&plain, "quiet")).is_empty());
    // The anchors it mounts are published there too.
    eventually(
        "the trust anchors are published in an unmeshed namespace",
        Duration::from_secs(10),
        || {
            kubectl_in(
                &["-n", &plain, "get", "configmap", "onemesh-trust-anchors"],
                "",
            )
            .0
            .then_some(())
        },
    );

    // Running as the proxy's uid: refused, saying why.
    let (ok, out, _) = create(&pod(&meshed, "sneaky", "app: sneaky", Some(2102)));
    assert!(!ok, "a pod running as the proxy's uid was admitted");
    assert!(out.contains("2102") && out.contains("bypass"), "{out}");

    // Admission time: meshed (webhook) against unmeshed (no webhook call).
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..5 {
        let (ok, out, took) = create(&pod(&meshed, &format!("m{i}"), "app: m", None));
        assert!(ok, "{out}");
        with.push(took);
        let (ok, out, took) = create(&pod(&plain, &format!("p{i}"), "app: p", None));
        assert!(ok, "{out}");
        without.push(took);
    }
    with.sort();
    without.sort();
    println!(
        "kubectl create, median of 5: meshed (webhook) {:?}, unmeshed {:?}",
        with[2], without[2]
    );

    let (_, check) = onemesh(&["check", "--kubernetes"]);
    assert!(
        check
            .contains("√ proxy-injection webhook onemesh-proxy-injector trusts the mesh's anchors"),
        "{check}"
    );

    for ns in [&meshed, &plain] {
        let _ = kubectl_in(&["delete", "namespace", ns, "--wait=false"], "");
    }
    uninstall();
}
