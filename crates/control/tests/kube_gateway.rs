//! Gateway API HTTPRoutes (GAMMA: a Service as parent) against the real API server: the store
//! runs without the Gateway API CRDs, picks them up once `scripts/k8s-testenv gateway-crds`
//! installs them from the `sigs.k8s.io/gateway-api` module, and the policy API then serves a
//! canary HTTPRoute's weighted backends to a proxy; `status.parents` says `Accepted`/`ResolvedRefs`
//! beside another controller's entry, a header match is refused naming the field, a missing
//! backend is unresolved, and a live edit of the weights reaches the proxy.

mod kube_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use onemesh_api::identity::CertifyRequest;
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_api::policy::policy_client::PolicyClient;
use onemesh_api::policy::{OutboundPolicy, OutboundRequest};
use onemesh_control::kubestore::gateway::{CONTROLLER_NAME, http_route_resource};
use onemesh_control::kubestore::{KubeSettings, KubeStore, ca_files};
use onemesh_control::{Settings, start};
use onemesh_identity::{CredentialStore, Issued, SpiffeId, WorkloadKey, bootstrap_client_config};
use serde_json::{Value, json};
use tonic::Streaming;

use kube_common::{
    TestNamespace, apply_crds, channel, client, create, issuer_secret_dir, pod_json, temp_dir,
    token,
};

const WAIT: Duration = Duration::from_secs(20);
const CRD: &str = "httproutes.gateway.networking.k8s.io";

/// Deletes the HTTPRoute CRD if a previous run left it, and waits until it is gone.
async fn without_gateway_api(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let _ = crds.delete(CRD, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while crds.get_opt(CRD).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "CRD {CRD} not deleted in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `scripts/k8s-testenv gateway-crds`: the CRD from the Go module, applied and established.
fn install_gateway_api() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-testenv");
    let mut cmd = std::process::Command::new(&script);
    cmd.arg("gateway-crds");
    if let Some(dir) = std::env::var_os("ONEMESH_K8S_WORKDIR") {
        cmd.env("ONEMESH_K8S_TESTENV_DIR", dir);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{script:?}: {e}"));
    assert!(
        out.status.success(),
        "gateway-crds failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the next pushed policy that satisfies `pred`.
async fn until_policy(
    stream: &mut Streaming<OutboundPolicy>,
    what: &str,
    pred: impl Fn(&OutboundPolicy) -> bool,
) -> OutboundPolicy {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: not pushed within {WAIT:?}"))
            .expect("the stream stays open")
            .expect("a policy");
        if pred(&next) {
            return next;
        }
    }
}

fn backends(p: &OutboundPolicy, route: &str) -> Vec<(String, u32)> {
    p.routes
        .iter()
        .find(|r| r.name == route)
        .map(|r| {
            r.backends
                .iter()
                .map(|b| (b.name.clone(), b.weight))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the HTTPRoute's `status.parents` satisfies `pred`; returns them.
async fn until_status(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let obj = api.get(name).await.unwrap();
        let parents = obj
            .data
            .pointer("/status/parents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if pred(&parents) {
            return parents;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: HTTPRoute {name} status.parents is {parents:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Our entry's condition `type_`: `(status, reason, message)`.
fn condition(parents: &[Value], type_: &str) -> Option<(String, String, String)> {
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)?;
    let c = ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn service_json(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_gateway_http_routes_reach_the_policy_api_with_status() {
    let client = client().await;
    apply_crds(&client).await;
    without_gateway_api(&client).await;
    let shop = TestNamespace::new(&client, "gw", true).await;
    let ns = shop.name.clone();

    // A meshed pod (the caller), and the Services: bank and its two versions.
    create(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        json!({"metadata": {"name": "web"}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = create(&pods, pod_json("web", "web")).await;
    pods.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.9.2", "podIPs": [{"ip": "10.244.9.2"}]}})),
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for name in ["bank", "bank-v1", "bank-v2"] {
        create(&services, service_json(name)).await;
    }

    // Without the Gateway API CRDs the store lists everything and serves.
    let state = temp_dir("state");
    ca_files(&issuer_secret_dir(), &state).unwrap();
    let settings = KubeSettings {
        gateway_api_poll: Duration::from_millis(500),
        ..KubeSettings::default()
    };
    let store = KubeStore::start(client.clone(), settings);
    store
        .wait_ready(WAIT)
        .await
        .expect("ready without Gateway API");
    let mut settings = Settings::new(state.clone());
    for addr in [
        &mut settings.identity_addr,
        &mut settings.destination_addr,
        &mut settings.policy_addr,
    ] {
        *addr = "127.0.0.1:0".parse().unwrap();
    }
    let control = start(&settings, Arc::new(store.clone())).await.unwrap();

    // The pod's proxy: a certificate for its token, then the outbound policy of bank.
    let me: SpiffeId = format!("spiffe://cluster.local/ns/{ns}/sa/web")
        .parse()
        .unwrap();
    let mut rx = onemesh_control::store::Store::subscribe(&store);
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.mesh.workloads.contains_key(&(ns.clone(), "web".into()))),
    )
    .await
    .unwrap()
    .unwrap();
    let bootstrap = bootstrap_client_config(&control.bundle, &control.id, &[b"h2"]);
    let mut identity =
        IdentityClient::new(channel(control.identity_addr, bootstrap, &control.id).await);
    let key = WorkloadKey::generate().unwrap();
    let response = identity
        .certify(CertifyRequest {
            csr: key.csr_der(&me).unwrap(),
            token: token(&client, &ns, "web", &pod, "onemesh").await,
        })
        .await
        .unwrap()
        .into_inner();
    let issued = Issued::from_chain_pem(&response.chain_pem).unwrap();
    let leaf = CredentialStore::new(me.clone(), key, issued, control.bundle.clone()).unwrap();
    let config = leaf.client_config(&control.id, &[b"h2"]);
    let mut policy = PolicyClient::new(channel(control.policy_addr, config, &control.id).await);
    let mut stream = policy
        .watch_outbound(OutboundRequest {
            name: format!("bank.{ns}.svc.cluster.local:80"),
            caller_namespace: ns.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = until_policy(&mut stream, "bank's policy", |p| p.exists).await;
    assert!(first.routes.is_empty(), "{first:?}");

    // Gateway API installed now, from the module: the store picks it up by itself.
    let t_install = Instant::now();
    install_gateway_api();
    eprintln!(
        "gateway-crds (module download or cache, apply, established): {} ms",
        t_install.elapsed().as_millis()
    );
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &http_route_resource());
    let route_json = |name: &str, rules: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "bank", "port": 80}, {"name": "edge"}],
                "rules": rules,
            },
        }))
        .unwrap()
    };
    let canary = |v1: u32, v2: u32| {
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/pay"}}],
            "backendRefs": [
                {"name": "bank-v1", "port": 80, "weight": v1},
                {"name": "bank-v2", "port": 80, "weight": v2},
            ],
            "timeouts": {"request": "3s"},
        }])
    };
    // The CRD may take a moment to be served after Established.
    let t_created = Instant::now();
    loop {
        match routes
            .create(&Default::default(), &route_json("canary", canary(90, 10)))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(t_created.elapsed() < WAIT, "creating the HTTPRoute: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!(
        "HTTPRoute accepted by the API server after the CRD was established: {} ms",
        t_created.elapsed().as_millis()
    );
    let t_created = Instant::now();
    // Another controller owns the Gateway parent's entry: ours must be written beside it.
    let other = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    routes
        .patch_status(
            "canary",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"parents": [other.clone()]}})),
        )
        .await
        .unwrap();

    let bank_v = |v: &str| format!("bank-{v}.{ns}");
    let served = until_policy(&mut stream, "the canary HTTPRoute", |p| {
        !backends(p, "canary/0").is_empty()
    })
    .await;
    eprintln!(
        "HTTPRoute created -> served to the proxy (the CRD installed after the store started): {} ms",
        t_created.elapsed().as_millis()
    );
    assert_eq!(
        backends(&served, "canary/0"),
        vec![(bank_v("v1"), 90), (bank_v("v2"), 10)]
    );
    let r = served.routes.iter().find(|r| r.name == "canary/0").unwrap();
    assert_eq!((r.path_prefix.as_str(), r.timeout_ms), ("/pay", 3000));

    let parents = until_status(&routes, "canary", "Accepted", |ps| {
        condition(ps, "Accepted").is_some() && ps.contains(&other)
    })
    .await;
    assert_eq!(
        condition(&parents, "Accepted").unwrap().0,
        "True",
        "{parents:#?}"
    );
    assert_eq!(
        condition(&parents, "ResolvedRefs").unwrap().1,
        "ResolvedRefs"
    );
    assert_eq!(parents.len(), 2, "{parents:#?}");

    // A header match: refused, the field named, nothing of it served.
    routes
        .create(
            &Default::default(),
            &route_json(
                "by-header",
                json!([{
                    "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                    "backendRefs": [{"name": "bank-v2", "port": 80}],
                }]),
            ),
        )
        .await
        .unwrap();
    let parents = until_status(&routes, "by-header", "refused", |ps| {
        condition(ps, "Accepted").is_some()
    })
    .await;
    let (status, reason, message) = condition(&parents, "Accepted").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedValue")
    );
    assert!(
        message.contains("spec.rules[0].matches[0].headers"),
        "{message}"
    );

    // A backend that does not exist: ResolvedRefs=False, BackendNotFound.
    routes
        .create(
            &Default::default(),
            &route_json(
                "ghost",
                json!([{"matches": [{"path": {"value": "/ghost"}}], "backendRefs": [{"name": "bank-v3", "port": 80}]}]),
            ),
        )
        .await
        .unwrap();
    let parents = until_status(&routes, "ghost", "unresolved", |ps| {
        condition(ps, "ResolvedRefs").is_some()
    })
    .await;
    let (status, reason, message) = condition(&parents, "ResolvedRefs").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert!(message.contains("bank-v3"), "{message}");

    // A live edit of the weights reaches the proxy.
    let t_edit = Instant::now();
    routes
        .patch(
            "canary",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": canary(0, 100)}})),
        )
        .await
        .unwrap();
    let edited = until_policy(&mut stream, "the edited weights", |p| {
        backends(p, "canary/0") == vec![(bank_v("v1"), 0), (bank_v("v2"), 100)]
    })
    .await;
    eprintln!(
        "HTTPRoute weights edited -> served to the proxy: {} ms",
        t_edit.elapsed().as_millis()
    );
    assert!(
        edited.routes.iter().all(|r| r.name != "by-header/0"),
        "a refused HTTPRoute must not be served: {edited:?}"
    );
    // Its observedGeneration follows.
    until_status(&routes, "canary", "observedGeneration 2", |ps| {
        ps.iter().any(|p| {
            p["controllerName"] == CONTROLLER_NAME && p["conditions"][0]["observedGeneration"] == 2
        })
    })
    .await;

    control.shutdown().await;
    store.stop();
    let _ = std::fs::remove_dir_all(&state);
}
