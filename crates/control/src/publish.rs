//! Kubernetes mode: the trust anchors, published as the ConfigMap `onemesh-trust-anchors` (key
//! `ca.crt`) in every namespace but Kubernetes' own (`kube-system`, `kube-public`,
//! `kube-node-lease`) and the control plane's, where proxies mount them — as Kubernetes publishes
//! `kube-root-ca.crt`. Anchors are public; every namespace gets them because a pod labeled
//! `onemesh.dev/inject: enabled` is injected in any namespace, known or not.
//!
//! A proxy must verify the control plane before it holds a certificate, so it needs the anchors
//! from somewhere it already trusts: its pod's own namespace. The publisher applies the ConfigMap
//! (server-side apply, field manager `onemesh-control`) when a namespace appears, when the
//! CA's bundle changes (an anchor rotation), and when someone edits or deletes the ConfigMap. Every
//! replica publishes: the content is the same, and an apply that changes nothing is a no-op.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::pki::CaSnapshot;

/// The ConfigMap's name and key, and the label that marks a namespace meshed.
pub const ANCHORS_CONFIGMAP: &str = "onemesh-trust-anchors";
pub const ANCHORS_KEY: &str = "ca.crt";
pub const MESH_LABEL: &str = "onemesh.dev/mesh";
pub const MESH_LABEL_VALUE: &str = "enabled";
const FIELD_MANAGER: &str = "onemesh-control";
/// A failed apply is retried after this long (and on the next change).
const RETRY: Duration = Duration::from_secs(2);
/// Kubernetes' own namespaces: never published to (nor injected).
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What made the publisher look again.
enum Nudge {
    /// This namespace exists.
    Namespace(String),
    /// This namespace is gone (or going).
    Gone(String),
    /// The ConfigMap in this namespace changed or went away.
    ConfigMap(String),
}

/// Whether `namespace` gets the ConfigMap: not Kubernetes' own, not the control plane's
/// (`onemesh install` writes that one).
pub fn publishes_to(namespace: &str, control_namespace: &str) -> bool {
    namespace != control_namespace && !SYSTEM_NAMESPACES.contains(&namespace)
}

/// Runs until the process ends: keeps every namespace's ConfigMap (see [`publishes_to`]) equal
/// to the bundle.
pub async fn run(
    client: Client,
    mut ca: watch::Receiver<Arc<CaSnapshot>>,
    control_namespace: String,
) {
    let (tx, mut rx) = mpsc::channel(256);
    tokio::spawn(watch_namespaces(
        client.clone(),
        tx.clone(),
        control_namespace,
    ));
    tokio::spawn(watch_configmaps(client.clone(), tx));
    let mut known: BTreeMap<String, ()> = BTreeMap::new();
    let mut pem = ca.borrow_and_update().bundle.to_pem();
    loop {
        let targets: Vec<String> = tokio::select! {
            changed = ca.changed() => {
                if changed.is_err() {
                    return;
                }
                pem = ca.borrow_and_update().bundle.to_pem();
                known.keys().cloned().collect()
            }
            nudge = rx.recv() => match nudge {
                None => return,
                Some(Nudge::Namespace(ns)) => {
                    known.insert(ns.clone(), ());
                    vec![ns]
                }
                Some(Nudge::Gone(ns)) => {
                    known.remove(&ns);
                    Vec::new()
                }
                Some(Nudge::ConfigMap(ns)) if known.contains_key(&ns) => vec![ns],
                Some(Nudge::ConfigMap(_)) => Vec::new(),
            },
        };
        for ns in targets {
            if let Err(e) = apply(&client, &ns, &pem).await {
                warn!(namespace = %ns, error = %e, "cannot publish the trust anchors; retrying");
                let tx_retry = ns.clone();
                let client = client.clone();
                let pem = pem.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    if let Err(e) = apply(&client, &tx_retry, &pem).await {
                        warn!(namespace = %tx_retry, error = %e, "cannot publish the trust anchors");
                    }
                });
            }
        }
    }
}

/// The ConfigMap as it must be.
pub fn configmap(namespace: &str, pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(ANCHORS_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "onemesh".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ANCHORS_KEY.to_string(), pem.to_string())])),
        ..Default::default()
    }
}

async fn apply(client: &Client, namespace: &str, pem: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    // k8s-openapi writes apiVersion and kind, which server-side apply needs.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        ANCHORS_CONFIGMAP,
        &params,
        &Patch::Apply(&configmap(namespace, pem)),
    )
    .await?;
    debug!(namespace, "trust anchors published");
    Ok(())
}

async fn watch_namespaces(client: Client, tx: mpsc::Sender<Nudge>, control_namespace: String) {
    let api: Api<Namespace> = Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let nudge = match event {
            Ok(Event::Apply(ns) | Event::InitApply(ns)) => {
                let going = ns.metadata.deletion_timestamp.is_some();
                match ns.metadata.name {
                    Some(n) if !publishes_to(&n, &control_namespace) => None,
                    // A namespace being deleted refuses new objects.
                    Some(n) if going => Some(Nudge::Gone(n)),
                    Some(n) => Some(Nudge::Namespace(n)),
                    None => None,
                }
            }
            Ok(Event::Delete(ns)) => ns.metadata.name.map(Nudge::Gone),
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "watching namespaces failed; retrying with backoff");
                None
            }
        };
        if let Some(nudge) = nudge
            && tx.send(nudge).await.is_err()
        {
            return;
        }
    }
}

async fn watch_configmaps(client: Client, tx: mpsc::Sender<Nudge>) {
    let api: Api<ConfigMap> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={ANCHORS_CONFIGMAP}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let ns = match event {
            // An edit or a deletion: look again (an apply of equal content is a no-op).
            Ok(Event::Apply(cm) | Event::Delete(cm)) => cm.metadata.namespace,
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "watching the trust-anchor ConfigMaps failed; retrying with backoff");
                None
            }
        };
        if let Some(ns) = ns
            && tx.send(Nudge::ConfigMap(ns)).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
