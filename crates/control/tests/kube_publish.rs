//! The trust-anchor publisher against a real kube-apiserver: every namespace gets the ConfigMap
//! (a pod may opt into injection anywhere), except Kubernetes' own and the control plane's; a
//! deleted or edited ConfigMap comes back, and a new bundle reaches every namespace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use onemesh_control::pki::CaSnapshot;
use onemesh_control::publish::{self, ANCHORS_CONFIGMAP, ANCHORS_KEY};
use onemesh_identity::TrustAnchor;
use tokio::sync::watch;

async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: this test needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\""
    );
    Client::try_default()
        .await
        .expect("a client for the test cluster")
}

fn snapshot() -> Arc<CaSnapshot> {
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(600)).unwrap();
    Arc::new(CaSnapshot::new(Arc::new(issuer), anchor.bundle()).unwrap())
}

async fn namespace(client: &Client, name: &str, meshed: bool) {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_string());
    if meshed {
        ns.metadata.labels = Some([("onemesh.dev/mesh".to_string(), "enabled".to_string())].into());
    }
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn published(client: &Client, ns: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.get_opt(ANCHORS_CONFIGMAP)
        .await
        .unwrap()
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(ANCHORS_KEY).cloned())
}

async fn until_published(client: &Client, ns: &str, pem: &str, what: &str) -> Duration {
    let start = Instant::now();
    while published(client, ns).await.as_deref() != Some(pem) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\""]
async fn kube_publish_trust_anchors() {
    let client = client().await;
    let tag = format!("{:x}", std::process::id() ^ fastrand_seed());
    let (meshed, plain) = (format!("pub-m-{tag}"), format!("pub-p-{tag}"));
    namespace(&client, &meshed, true).await;
    namespace(&client, &plain, false).await;

    let first = snapshot();
    let pem = first.bundle.to_pem();
    let (tx, rx) = watch::channel(first);
    // The "control plane's namespace" here: not published to.
    let control = format!("pub-c-{tag}");
    namespace(&client, &control, false).await;
    let task = tokio::spawn(publish::run(client.clone(), rx, control.clone()));

    let took = until_published(
        &client,
        &meshed,
        &pem,
        "a meshed namespace gets the anchors",
    )
    .await;
    println!("published in {took:?}");

    // Someone deletes it, or writes other anchors into it: it comes back as it must be.
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &meshed);
    api.delete(ANCHORS_CONFIGMAP, &DeleteParams::default())
        .await
        .unwrap();
    until_published(&client, &meshed, &pem, "a deleted ConfigMap comes back").await;
    let forged = serde_json::json!({"data": {ANCHORS_KEY: "-----BEGIN CERTIFICATE-----\nforged\n-----END CERTIFICATE-----\n"}});
    api.patch(
        ANCHORS_CONFIGMAP,
        &PatchParams::default(),
        &Patch::Merge(&forged),
    )
    .await
    .unwrap();
    until_published(&client, &meshed, &pem, "an edited ConfigMap is put back").await;

    // A new bundle (an anchor rotation) reaches the namespace.
    let second = snapshot();
    let new_pem = second.bundle.to_pem();
    tx.send_replace(second);
    let took = until_published(&client, &meshed, &new_pem, "a new bundle is published").await;
    println!("new bundle published in {took:?}");

    until_published(
        &client,
        &plain,
        &new_pem,
        "an unmeshed namespace gets the anchors too",
    )
    .await;
    for ns in [control.as_str(), "kube-system", "kube-public"] {
        assert_eq!(published(&client, ns).await, None, "{ns} got the anchors");
    }
    task.abort();
    for ns in [&meshed, &plain, &control] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

fn fastrand_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
