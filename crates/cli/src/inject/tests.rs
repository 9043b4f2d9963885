//! `onemesh inject` / `uninject` on YAML: each pod-bearing kind, pass-through of the rest,
//! re-injection identical, the round trip, errors naming the document, and the output for a Pod
//! equal to the control plane webhook's patch applied to the same Pod.

use super::*;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: example/web:1
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /ready, port: http}
"#;

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  ports:
    - {name: http, port: 80, targetPort: http}
"#;

fn config() -> InjectConfig {
    InjectConfig::default()
}

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn template_of(kind: &str) -> String {
    let spec_body = r#"
      metadata:
        labels: {app: x}
      spec:
        containers:
          - name: x
            image: x
            livenessProbe:
              tcpSocket: {port: 8080}
"#;
    match kind {
        "Pod" => "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - {name: x, image: x}\n".to_string(),
        "CronJob" => format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: x\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:{}",
            spec_body.replace("\n      ", "\n          ")
        ),
        _ => format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: x\nspec:\n  template:{spec_body}"
        ),
    }
}

#[test]
fn every_pod_bearing_kind_is_injected_and_the_rest_passes_through() {
    for (kind, pointer) in [
        ("Pod", ""),
        ("Deployment", "/spec/template"),
        ("StatefulSet", "/spec/template"),
        ("DaemonSet", "/spec/template"),
        ("ReplicaSet", "/spec/template"),
        ("Job", "/spec/template"),
        ("CronJob", "/spec/jobTemplate/spec/template"),
    ] {
        let input = format!("{}---\n{SERVICE}", template_of(kind));
        let (out, notes) = transform(&input, Direction::Inject, &config()).unwrap();
        let out = docs(&out);
        assert_eq!(out.len(), 2, "{kind}");
        let template = out[0].pointer(pointer).unwrap();
        let init: Vec<&str> = template["spec"]["initContainers"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}: no init containers in {template}"))
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["onemesh-init", "onemesh-proxy"], "{kind}");
        assert_eq!(
            template["metadata"]["annotations"]["onemesh.dev/injected"],
            env!("CARGO_PKG_VERSION"),
            "{kind}"
        );
        assert_eq!(out[1], docs(SERVICE)[0], "the Service is unchanged");
        assert_eq!(notes, [format!("{}/x injected", kind.to_lowercase())]);
    }
}

#[test]
fn a_list_injects_its_items() {
    let input = r#"
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: [{name: a, image: a}]}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}, data: {k: v}}
"#;
    let (out, _) = transform(input, Direction::Inject, &config()).unwrap();
    let out = docs(&out);
    assert_eq!(
        out[0]["items"][0]["spec"]["initContainers"][1]["name"],
        "onemesh-proxy"
    );
    assert_eq!(out[0]["items"][1], docs(input)[0]["items"][1]);
}

#[test]
fn reinjecting_gives_identical_output_and_uninject_restores_the_input() {
    let input = format!("{DEPLOYMENT}---\n{SERVICE}");
    let (once, _) = transform(&input, Direction::Inject, &config()).unwrap();
    let (twice, notes) = transform(&once, Direction::Inject, &config()).unwrap();
    assert_eq!(once, twice);
    assert_eq!(notes, ["deployment/web already injected"]);
    // The probe went to the proxy and comes back, named port and all.
    let injected = docs(&once);
    assert_eq!(
        injected[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/app-probe/web/readiness", "port": 4191})
    );
    let (back, notes) = transform(&once, Direction::Uninject, &config()).unwrap();
    assert_eq!(docs(&back), docs(&input));
    assert_eq!(notes, ["deployment/web uninjected"]);
}

#[test]
fn the_workload_is_the_objects_name() {
    let (out, _) = transform(DEPLOYMENT, Direction::Inject, &config()).unwrap();
    let out = docs(&out);
    let env = out[0]["spec"]["template"]["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .clone();
    let workload = env
        .iter()
        .find(|e| e["name"] == "ONEMESH_PROXY_WORKLOAD")
        .unwrap();
    assert_eq!(workload["value"], "web");
    // A Deployment's ReplicaSet: the Deployment's name.
    let rs = DEPLOYMENT
        .replace("kind: Deployment", "kind: ReplicaSet")
        .replace("name: web\n  namespace", "name: web-5d9c\n  namespace")
        .replace(
            "labels: {app: web}",
            "labels: {app: web, pod-template-hash: 5d9c}",
        );
    let (out, _) = transform(&rs, Direction::Inject, &config()).unwrap();
    assert!(out.contains("value: web\n"), "{out}");
}

#[test]
fn a_bad_annotation_fails_the_command_naming_the_document() {
    let bad = DEPLOYMENT.replace(
        "      labels: {app: web}",
        "      labels: {app: web}\n      annotations: {onemesh.dev/skip-inbound-ports: \"ssh\"}",
    );
    let input = format!("{SERVICE}---\n{bad}");
    let err = transform(&input, Direction::Inject, &config()).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("document 2 (deployment/web)"), "{text}");
    assert!(text.contains("onemesh.dev/skip-inbound-ports"), "{text}");
}

#[test]
fn garbage_is_an_error() {
    assert!(transform("a: [", Direction::Inject, &config()).is_err());
    let no_template = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n";
    let err = transform(no_template, Direction::Inject, &config()).unwrap_err();
    assert!(format!("{err:#}").contains("no pod template"), "{err:#}");
}

#[test]
fn the_output_equals_the_webhooks_patch_applied_to_the_same_pod() {
    let pod_yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-5d9c-x7k2p
  namespace: shop
  labels: {app: web, pod-template-hash: 5d9c}
  annotations: {onemesh.dev/opaque-ports: "9000"}
  ownerReferences:
    - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5d9c, uid: rs, controller: true}
spec:
  serviceAccountName: web
  containers:
    - name: web
      image: example/web:1
      ports:
        - {name: http, containerPort: 8080}
      livenessProbe:
        httpGet: {path: /live, port: http}
      readinessProbe:
        tcpSocket: {port: 8080}
"#;
    let (out, _) = transform(pod_yaml, Direction::Inject, &config()).unwrap();
    let cli: Pod = serde_json::from_value(docs(&out).remove(0)).unwrap();

    let pod: Pod = serde_json::from_value(docs(pod_yaml).remove(0)).unwrap();
    let (outcome, ops) = onemesh_control::inject::patch(&pod, &config()).unwrap();
    assert_eq!(outcome, Outcome::Injected);
    let mut doc = serde_json::to_value(&pod).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let webhook: Pod = serde_json::from_value(doc).unwrap();
    assert_eq!(cli, webhook);
}
