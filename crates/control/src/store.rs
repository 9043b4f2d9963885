//! The seam between the control plane's services and where the mesh is described.
//!
//! The services never read files or talk to Kubernetes: they subscribe to a [`Store`]'s state and
//! ask it who a bootstrap token belongs to. Two implementations:
//! [`LocalStore`](crate::local::LocalStore) (mesh.yaml + `onemesh up`'s state files) and
//! [`KubeStore`](crate::kubestore::KubeStore) (meshed Namespaces, Pods, Services, EndpointSlices,
//! the onemesh CRDs; ServiceAccount tokens checked with TokenReview). Both publish the same
//! store-neutral model ([`crate::model`]). [`StaticStore`] is the in-memory double for tests.
//!
//! A token lookup answers `Ok(Some(id))`, `Ok(None)` for a token the store does not know (local
//! mode), or a [`StoreError`]: the backend is unavailable (retry), or the token is refused for a
//! reason the proxy is told (Kubernetes mode).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use onemesh_identity::SpiffeId;
use tokio::sync::watch;

use crate::state::MeshState;

/// Why a store could not answer, or refused a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the identity backend is unavailable: {0}; retry later")]
    Unavailable(String),
    #[error(
        "the Kubernetes API server refused the service account token ({0}): mount a projected token with audience onemesh (the injected proxy does), and check that it is not expired and that its pod and service account still exist"
    )]
    TokenRefused(String),
    #[error(
        "the token belongs to {0:?}, not to a service account: send the pod's projected ServiceAccount token"
    )]
    NotServiceAccount(String),
    #[error(
        "the token of service account {0} is not bound to a pod: send the pod's projected token (audience onemesh), not one made without --bound-object-kind Pod"
    )]
    NotBoundToPod(String),
    #[error(
        "the token's pod {0} is not (or no longer) running in the mesh: if it was just created, retry in a moment"
    )]
    PodGone(String),
    #[error("namespace {0} is not meshed: label it onemesh.dev/mesh=enabled")]
    NotMeshed(String),
    #[error(
        "service account {0} is in the control plane's namespace, where only the control plane gets an identity: run the workload in another namespace"
    )]
    ControlNamespace(String),
}

/// Where the control plane's view of the mesh comes from.
pub trait Store: Send + Sync + 'static {
    /// The current state; every change is published to the receiver (the last good state stays
    /// in force while the source is invalid).
    fn subscribe(&self) -> watch::Receiver<Arc<MeshState>>;

    /// The one SPIFFE id a bootstrap token entitles, or `None` for an unknown token.
    fn token_identity<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<SpiffeId>, StoreError>>;
}

/// A store held in memory: a state that tests replace at will, and a fixed token table.
pub struct StaticStore {
    state: watch::Sender<Arc<MeshState>>,
    tokens: BTreeMap<String, SpiffeId>,
}

impl StaticStore {
    pub fn new(state: MeshState, tokens: BTreeMap<String, SpiffeId>) -> Self {
        StaticStore {
            state: watch::Sender::new(Arc::new(state)),
            tokens,
        }
    }

    /// Publishes a new state to every subscriber.
    pub fn set(&self, state: MeshState) {
        self.state.send_replace(Arc::new(state));
    }
}

impl Store for StaticStore {
    fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.state.subscribe()
    }

    fn token_identity<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<SpiffeId>, StoreError>> {
        let id = self.tokens.get(token).cloned();
        Box::pin(async move { Ok(id) })
    }
}
