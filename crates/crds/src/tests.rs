use super::*;

#[test]
fn committed_crds_are_the_generated_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for (name, yaml) in crd_files().unwrap() {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} differs from the CRD the Rust types generate: regenerate it with \
             `cargo run -p onemesh-crds --bin crdgen -- deploy/crds` and commit the result",
            path.display()
        );
    }
}

fn schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    serde_json::to_value(&crd.spec.versions[0].schema).unwrap()["openAPIV3Schema"].clone()
}

#[test]
fn policy_schema_carries_the_mesh_yaml_validation() {
    let crd = AuthorizationPolicy::crd();
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, VERSION);
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let s = schema(&crd);
    let spec = &s["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["from"]));
    let port = &spec["properties"]["target"]["properties"]["port"];
    assert_eq!(port["minimum"].as_f64(), Some(1.0));
    assert_eq!(port["maximum"].as_f64(), Some(65535.0));
    let route = &spec["properties"]["routes"]["items"]["properties"];
    assert_eq!(
        route["methods"]["items"]["enum"].as_array().unwrap().len(),
        9
    );
    assert_eq!(route["pathPrefix"]["pattern"], "^/");
    let ids = &spec["properties"]["from"]["properties"]["identities"]["items"];
    assert_eq!(ids["pattern"], SPIFFE_ID_PATTERN);
    let rules = serde_json::to_string(&s["x-kubernetes-validations"]).unwrap();
    assert!(rules.contains("self.metadata.name.size() <= 63"), "{rules}");
}

#[test]
fn route_schema_checks_durations_and_names() {
    let s = schema(&Route::crd());
    let spec = &s["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["service"]));
    assert_eq!(spec["properties"]["timeout"]["pattern"], DURATION_PATTERN);
    assert_eq!(spec["properties"]["service"]["maxLength"], 63);
}

#[test]
fn a_policy_decodes_from_the_mesh_yaml_shape() {
    let policy: AuthorizationPolicySpec = serde_json::from_value(serde_json::json!({
        "target": {"workload": "bank", "port": 8080},
        "routes": [{"methods": ["POST"], "pathPrefix": "/v1/"}],
        "from": {"identities": ["spiffe://cluster.local/ns/card/sa/card"], "namespaces": ["card"]},
    }))
    .unwrap();
    assert_eq!(policy.target.unwrap().port, Some(8080));
    let route: RouteSpec = serde_json::from_value(serde_json::json!({
        "service": "bank", "match": {"methods": ["GET"], "pathPrefix": "/"}, "timeout": "2s", "retryable": true,
    }))
    .unwrap();
    assert_eq!(route.matches.unwrap().path_prefix.as_deref(), Some("/"));
}

#[test]
fn policy_schema_has_modes_and_grpc_routes() {
    let s = schema(&AuthorizationPolicy::crd());
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(
        spec["mode"]["enum"],
        serde_json::json!(["enforce", "audit"])
    );
    let route = &spec["routes"]["items"];
    let grpc = &route["properties"]["grpc"];
    assert_eq!(grpc["required"], serde_json::json!(["service"]));
    assert_eq!(
        grpc["properties"]["service"]["pattern"],
        GRPC_SERVICE_PATTERN
    );
    let rules = serde_json::to_string(&route["x-kubernetes-validations"]).unwrap();
    assert!(rules.contains("!has(self.grpc)"), "{rules}");
    let policy: AuthorizationPolicySpec = serde_json::from_value(serde_json::json!({
        "mode": "audit",
        "routes": [{"grpc": {"service": "pay.v1.Payments", "method": "Pay"}}],
        "from": {"namespaces": ["pg"]},
    }))
    .unwrap();
    assert_eq!(policy.mode.as_deref(), Some("audit"));
    let grpc = policy.routes.unwrap()[0].grpc.clone().unwrap();
    assert_eq!(grpc.method.as_deref(), Some("Pay"));
}
