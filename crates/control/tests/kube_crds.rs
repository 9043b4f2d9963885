//! The CRDs against the real API server: applied with server-side apply, they make it refuse the
//! values mesh.yaml refuses and accept a good policy and route.

mod kube_common;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use onemesh_crds::{AuthorizationPolicy, Route};

use kube_common::{HOW, TestNamespace, apply_crds, client};

/// An object as a user could write it: not necessarily one the Rust type can hold.
fn policy(ns: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "onemesh.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("policy json")
}

fn policies(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<AuthorizationPolicy>(&());
    Api::namespaced_with(client.clone(), ns, &ar)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_crds_refuse_bad_policies_and_accept_good_ones() {
    let client = client().await;
    apply_crds(&client).await;
    let ns = TestNamespace::new(&client, "crds", true).await;
    let api = policies(&client, &ns.name);
    let pp = PostParams::default();

    let good = serde_json::json!({
        "target": {"workload": "bank", "port": 8080},
        "routes": [{"methods": ["POST"], "pathPrefix": "/v1/"}],
        "from": {"identities": ["spiffe://cluster.local/ns/card/sa/card"], "namespaces": ["card"]},
    });
    api.create(&pp, &policy(&ns.name, "good", good.clone()))
        .await
        .unwrap_or_else(|e| panic!("a good policy was refused: {e}"));

    let bad = [
        (
            "port",
            serde_json::json!({"target": {"port": 70000}, "from": {}}),
            "65535",
        ),
        (
            "method",
            serde_json::json!({"routes": [{"methods": ["FETCH"]}], "from": {}}),
            "FETCH",
        ),
        (
            "prefix",
            serde_json::json!({"routes": [{"pathPrefix": "v1"}], "from": {}}),
            "pathPrefix",
        ),
        (
            "spiffe",
            serde_json::json!({"from": {"identities": ["spiffe://cluster.local/card"]}}),
            "identities",
        ),
        (
            "nofrom",
            serde_json::json!({"target": {"port": 80}}),
            "from",
        ),
    ];
    for (name, spec, expect) in bad {
        match api.create(&pp, &policy(&ns.name, name, spec)).await {
            Ok(_) => panic!("the API server accepted the bad policy {name:?}"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {status:?}");
                assert!(
                    status.message.contains(expect),
                    "{name}: {}",
                    status.message
                );
            }
            Err(e) => panic!("{name}: unexpected error {e}; {HOW}"),
        }
    }
    // A name longer than 63 characters (the CEL rule).
    let long = "a".repeat(70);
    let err = api
        .create(&pp, &policy(&ns.name, &long, good))
        .await
        .expect_err("a 70-character name was accepted");
    assert!(format!("{err:?}").contains("63"), "{err:?}");

    let routes: Api<Route> = Api::namespaced(client.clone(), &ns.name);
    let route = |name: &str, timeout: &str| -> Route {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "onemesh.dev/v1", "kind": "Route",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {"service": "bank", "match": {"methods": ["GET"], "pathPrefix": "/"}, "timeout": timeout, "retryable": true},
        }))
        .expect("route json")
    };
    routes
        .create(&pp, &route("reads", "1m30s"))
        .await
        .unwrap_or_else(|e| panic!("a good route was refused: {e}"));
    let err = routes
        .create(&pp, &route("slow", "2 seconds"))
        .await
        .expect_err("a bad duration was accepted");
    assert!(format!("{err:?}").contains("timeout"), "{err:?}");
}
