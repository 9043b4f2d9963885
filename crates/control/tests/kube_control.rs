//! The control plane in Kubernetes mode, end to end against the real API server: a proxy's
//! ServiceAccount token gets it a certificate for its SPIFFE id (and a token for another audience
//! is refused with the reason), its certificate then watches a Service's endpoints as the
//! EndpointSlices say; and the `onemesh-control --store kubernetes` binary reads its CA from
//! `--ca-dir` instead of making one.

mod kube_common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use onemesh_api::destination::destination_client::DestinationClient;
use onemesh_api::destination::{WatchRequest, update};
use onemesh_api::identity::CertifyRequest;
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_control::kubestore::{KubeSettings, KubeStore, ca_files};
use onemesh_control::store::Store;
use onemesh_control::{Settings, start};
use onemesh_identity::{CredentialStore, Issued, SpiffeId, WorkloadKey, bootstrap_client_config};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use kube_common::{
    TestNamespace, apply_crds, channel, client, create, issuer_secret_dir, pod_json, temp_dir,
    token,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_control_certifies_by_service_account_token_and_serves_endpoints() {
    let client = client().await;
    apply_crds(&client).await;
    let shop = TestNamespace::new(&client, "ctl", true).await;
    let ns = shop.name.clone();

    let state = temp_dir("state");
    ca_files(&issuer_secret_dir(), &state).unwrap();
    let store = KubeStore::start(client.clone(), KubeSettings::default());
    store.wait_ready(WAIT).await.unwrap();
    let mut settings = Settings::new(state.clone());
    for addr in [
        &mut settings.identity_addr,
        &mut settings.destination_addr,
        &mut settings.policy_addr,
    ] {
        *addr = "127.0.0.1:0".parse().unwrap();
    }
    let control = start(&settings, Arc::new(store.clone())).await.unwrap();
    assert!(
        !state.join("trust-anchor.key").exists(),
        "Kubernetes mode holds no anchor key"
    );

    // A pod of the mesh, its service and its slice.
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
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.9.1", "podIPs": [{"ip": "10.244.9.1"}]}})),
    )
    .await
    .unwrap();
    create(
        &Api::<Service>::namespaced(client.clone(), &ns),
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    create(
        &Api::<EndpointSlice>::namespaced(client.clone(), &ns),
        json!({
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "onemesh-tests"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.9.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }),
    )
    .await;
    let mut rx = store.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.mesh.workloads.contains_key(&(ns.clone(), "web".into()))),
    )
    .await
    .unwrap()
    .unwrap();

    // Certify with the pod's token.
    let want: SpiffeId = format!("spiffe://cluster.local/ns/{ns}/sa/web")
        .parse()
        .unwrap();
    let bootstrap = bootstrap_client_config(&control.bundle, &control.id, &[b"h2"]);
    let mut identity =
        IdentityClient::new(channel(control.identity_addr, bootstrap, &control.id).await);
    let key = WorkloadKey::generate().unwrap();
    let wrong = token(&client, &ns, "web", &pod, "vault").await;
    let refused = identity
        .certify(CertifyRequest {
            csr: key.csr_der(&want).unwrap(),
            token: wrong,
        })
        .await
        .expect_err("a token for another audience");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused
            .message()
            .contains("refused the service account token"),
        "{}",
        refused.message()
    );
    let good = token(&client, &ns, "web", &pod, "onemesh").await;
    let started = std::time::Instant::now();
    let response = identity
        .certify(CertifyRequest {
            csr: key.csr_der(&want).unwrap(),
            token: good,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.identity, want.to_string());
    eprintln!(
        "certify with a ServiceAccount token (TokenReview included): {} ms",
        started.elapsed().as_millis()
    );

    // With that certificate, watch the service: its endpoint is the pod's inbound proxy.
    let issued = Issued::from_chain_pem(&response.chain_pem).unwrap();
    let leaf = CredentialStore::new(want.clone(), key, issued, control.bundle.clone()).unwrap();
    let config = leaf.client_config(&control.id, &[b"h2"]);
    let mut destination =
        DestinationClient::new(channel(control.destination_addr, config, &control.id).await);
    let mut stream = destination
        .watch(WatchRequest {
            name: format!("web.{ns}.svc.cluster.local:80"),
            caller_namespace: ns.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(update::Kind::Snapshot(snapshot)) = first.kind else {
        panic!("first message must be a snapshot: {first:?}");
    };
    assert!(snapshot.exists);
    assert_eq!(snapshot.endpoints.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot.endpoints[0].addr, "10.244.9.1:4143");
    assert_eq!(snapshot.endpoints[0].target_port, 8080);
    assert_eq!(snapshot.endpoints[0].identity, want.to_string());
    assert_eq!(snapshot.endpoints[0].workload, "web");

    control.shutdown().await;
    store.stop();
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_control_binary_reads_its_ca_from_the_secret_dir() {
    let client = client().await;
    // The store lists the onemesh CRDs before it is ready: they must exist (another test may
    // have uninstalled them).
    apply_crds(&client).await;
    let home = TestNamespace::new(&client, "home", false).await;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let state = temp_dir("bin-state");
    let base = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_onemesh-control"));
        cmd.args(["--store", "kubernetes", "--kubeconfig", &kubeconfig])
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen-identity", "127.0.0.1:0"])
            .args(["--listen-destination", "127.0.0.1:0"])
            .args(["--listen-policy", "127.0.0.1:0"])
            .args(["--listen-dashboard", "127.0.0.1:0"])
            .args(["--listen-webhook", "127.0.0.1:0"])
            .args(["--namespace", &home.name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    // Without --ca-dir: refused with what to do.
    let out = tokio::time::timeout(WAIT, base(&[]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --ca-dir"), "{stderr}");

    let secret = issuer_secret_dir();
    let mut child = base(&["--ca-dir", secret.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("onemesh-control listening") {
                return;
            }
        }
        panic!("exited before listening");
    })
    .await
    .expect("listening within 20 s");
    assert_eq!(
        std::fs::read(state.join("trust-anchors.pem")).unwrap(),
        std::fs::read(secret.join("ca.crt")).unwrap(),
        "the CA is the mounted one"
    );
    // It takes the Lease of its namespace (it is the only replica).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &home.name);
    let pid = child.id().expect("running");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let holder = leases
            .get_opt("onemesh-control")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        if holder
            .as_deref()
            .is_some_and(|h| h.ends_with(&format!("-{pid}")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lease holder {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix_kill(&child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&secret);
}

fn nix_kill(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
