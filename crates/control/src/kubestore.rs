//! The Kubernetes store: the mesh from the Kubernetes API, and proxies' identities from their
//! ServiceAccount tokens.
//!
//! Eight kube-rs watchers (Namespaces labelled `onemesh.dev/mesh: enabled`; Pods, Services,
//! EndpointSlices, AuthorizationPolicies, Routes, RateLimitPolicies and Gateway API HTTPRoutes
//! cluster-wide, kept when their namespace is meshed) send their events to one task, which folds
//! them into a cache and rebuilds the model
//! ([`fold`]: pure, unit-tested with recorded events). Events are batched for
//! [`KubeSettings::debounce`] (50 ms) after the first one; the new [`MeshState`] is published only
//! when it differs from the last one, and only once every kind has been listed completely
//! ([`KubeStore::wait_ready`]): the store never publishes a partial mesh, neither at start nor
//! during a relist (a `410 Gone` or a dropped watch makes kube-rs list again; the cache swaps the
//! new list in when it is complete). A watch that fails reconnects with kube-rs's default backoff
//! (exponential, up to a few seconds) while the last good state keeps serving.
//!
//! Every AuthorizationPolicy, Route and RateLimitPolicy of a meshed namespace gets an `Accepted` condition in its
//! `status` (`True`/`Accepted`, or `False` with the reason and every problem), written only when
//! it changes; a refused object also gets a Kubernetes Event (`kubectl describe` shows it), and is
//! left out of the mesh while the rest keeps working. Every HTTPRoute with a Service parent gets
//! the control plane's entries in `status.parents[]` ([`gateway`]), beside other controllers'.
//!
//! Gateway API is optional: while `httproutes.gateway.networking.k8s.io` is not served (its CRD
//! not installed, or the control plane may not list it), HTTPRoutes count as listed and empty, and
//! the store asks again every [`KubeSettings::gateway_api_poll`] (30 s); once it is served, it is
//! watched like the other kinds, so a CRD installed later is picked up without a restart.
//!
//! Identity bootstrap ([`Store::token_identity`]): the proxy sends its projected ServiceAccount
//! token (audience `onemesh`); the store asks the API server (TokenReview, `authentication.k8s.io/v1`)
//! and maps `system:serviceaccount:<ns>:<sa>` to `spiffe://<td>/ns/<ns>/sa/<sa>`. The API server
//! refuses a token for another audience, an expired one, and one whose bound pod or service
//! account is gone; the store also requires the token to be bound to a pod, that pod's namespace
//! to be meshed, and refuses the control plane's namespace except its own service account. Each
//! refusal is a [`StoreError`] saying what to do.

pub mod fold;
pub mod gateway;
pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use onemesh_identity::SpiffeId;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::state::MeshState;
use crate::store::{Store, StoreError};
use fold::{Cache, Event, Kind, MESH_ENABLED, MESH_LABEL, Object, Verdict};

/// The keys of the issuer Secret (mounted at `--ca-dir`), and the CA file each becomes in the
/// state directory.
pub const CA_SECRET_KEYS: [(&str, &str); 3] = [
    ("ca.crt", crate::pki::TRUST_ANCHORS_FILE),
    ("tls.crt", crate::pki::ISSUER_CERT_FILE),
    ("tls.key", crate::pki::ISSUER_KEY_FILE),
];

/// A Kubernetes client from `kubeconfig`, else as kube-rs infers it: `$KUBECONFIG`,
/// `~/.kube/config`, then the pod's in-cluster configuration (its ServiceAccount).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                ClientError(format!("cannot read the kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| {
                    ClientError(format!("the kubeconfig {} is not usable: {e}", path.display()))
                })?
        }
        None => kube::Config::infer().await.map_err(|e| {
            ClientError(format!(
                "no Kubernetes configuration ({e}): set KUBECONFIG or pass --kubeconfig, or run in a pod"
            ))
        })?,
    };
    Client::try_from(config)
        .map_err(|e| ClientError(format!("cannot make a Kubernetes client: {e}")))
}

/// Why no Kubernetes client could be made (the message says what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// Why the mounted CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    #[error(
        "cannot read {} ({source}): mount the issuer Secret there with keys ca.crt (trust anchors bundle), tls.crt (issuer certificate chain) and tls.key (issuer private key)",
        path.display()
    )]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {} ({source}): make the state directory writable (an emptyDir)", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Copies the issuer Secret mounted at `ca_dir` into `state_dir` under the CA's file names (see
/// [`CA_SECRET_KEYS`]), replacing what is there: the Secret is the truth, the state directory a
/// scratch copy. The anchor's key is never there, so the issuer is not rotated by the control
/// plane. Blocking I/O, at start.
pub fn ca_files(ca_dir: &std::path::Path, state_dir: &std::path::Path) -> Result<(), CaDirError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir).map_err(|source| CaDirError::Write {
        path: state_dir.to_path_buf(),
        source,
    })?;
    for (key, file) in CA_SECRET_KEYS {
        let from = ca_dir.join(key);
        let text =
            std::fs::read(&from).map_err(|source| CaDirError::Read { path: from, source })?;
        let to = state_dir.join(file);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let _ = std::fs::remove_file(&to);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)?;
            f.write_all(&text)?;
            f.sync_all()
        };
        write().map_err(|source| CaDirError::Write {
            path: to.clone(),
            source,
        })?;
    }
    // A stale anchor key or rotation journal from another CA must not be used with this one.
    for stale in [
        crate::pki::TRUST_ANCHOR_KEY_FILE,
        crate::pki::TRUST_ANCHOR_CERT_FILE,
        crate::pki::ROTATION_FILE,
    ] {
        let path = state_dir.join(stale);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CaDirError::Write { path, source }),
        }
    }
    Ok(())
}

/// Settings of the Kubernetes store.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// Trust domain of the SPIFFE ids made from tokens.
    pub trust_domain: String,
    /// Audiences a proxy's token must be valid for (default `["onemesh"]`).
    pub audiences: Vec<String>,
    /// The control plane's namespace: no proxy there gets an identity, except...
    pub control_namespace: String,
    /// ...the control plane's own service account.
    pub control_service_account: String,
    /// How long events are batched before the mesh is rebuilt.
    pub debounce: Duration,
    /// The field manager and Event reporter name.
    pub manager: String,
    /// With several replicas: whether this one leads (see [`lease`]); only the leader writes
    /// conditions and Events. `None`: always.
    pub leader: Option<watch::Receiver<bool>>,
    /// While Gateway API HTTPRoutes are not served, how often to ask again.
    pub gateway_api_poll: Duration,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            trust_domain: onemesh_identity::DEFAULT_TRUST_DOMAIN.to_string(),
            audiences: vec!["onemesh".to_string()],
            control_namespace: crate::pki::CONTROL_NAMESPACE.to_string(),
            control_service_account: crate::pki::CONTROL_SERVICE_ACCOUNT.to_string(),
            debounce: Duration::from_millis(50),
            manager: "onemesh-control".to_string(),
            leader: None,
            gateway_api_poll: Duration::from_secs(30),
        }
    }
}

struct Inner {
    client: Client,
    settings: KubeSettings,
    state: watch::Sender<Arc<MeshState>>,
    ready: watch::Sender<bool>,
    meshed: RwLock<BTreeSet<String>>,
    /// The uid of each pod of a meshed namespace: a token's pod must be one of them.
    pods: RwLock<BTreeMap<(String, String), String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The store of Kubernetes mode. Cheap to clone (a handle); [`KubeStore::stop`] ends its tasks.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

/// The API resource of an onemesh CRD, for dynamic (undecoded) access.
fn crd_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Route => ApiResource::erase::<onemesh_crds::Route>(&()),
        Kind::RateLimitPolicy => ApiResource::erase::<onemesh_crds::RateLimitPolicy>(&()),
        _ => ApiResource::erase::<onemesh_crds::AuthorizationPolicy>(&()),
    }
}

impl KubeStore {
    /// Starts the watchers. The state is empty until [`KubeStore::wait_ready`] returns.
    pub fn start(client: Client, settings: KubeSettings) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            client: client.clone(),
            settings,
            state: watch::Sender::new(Arc::new(MeshState::default())),
            ready: watch::Sender::new(false),
            meshed: RwLock::new(BTreeSet::new()),
            pods: RwLock::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let meshed = watcher::Config::default().labels(&format!("{MESH_LABEL}={MESH_ENABLED}"));
        let all = watcher::Config::default;
        let mut tasks = vec![
            watch_kind(
                Api::<Namespace>::all(client.clone()),
                meshed,
                Kind::Namespace,
                Object::Namespace,
                tx.clone(),
            ),
            watch_kind(
                Api::<Pod>::all(client.clone()),
                all(),
                Kind::Pod,
                |p| Object::Pod(Box::new(p)),
                tx.clone(),
            ),
            watch_kind(
                Api::<Service>::all(client.clone()),
                all(),
                Kind::Service,
                |s| Object::Service(Box::new(s)),
                tx.clone(),
            ),
            watch_kind(
                Api::<EndpointSlice>::all(client.clone()),
                all(),
                Kind::EndpointSlice,
                Object::EndpointSlice,
                tx.clone(),
            ),
            watch_kind(
                Api::<DynamicObject>::all_with(
                    client.clone(),
                    &crd_resource(Kind::AuthorizationPolicy),
                ),
                all(),
                Kind::AuthorizationPolicy,
                Object::AuthorizationPolicy,
                tx.clone(),
            ),
            watch_kind(
                Api::<DynamicObject>::all_with(client.clone(), &crd_resource(Kind::Route)),
                all(),
                Kind::Route,
                Object::Route,
                tx.clone(),
            ),
            watch_kind(
                Api::<DynamicObject>::all_with(
                    client.clone(),
                    &crd_resource(Kind::RateLimitPolicy),
                ),
                all(),
                Kind::RateLimitPolicy,
                Object::RateLimitPolicy,
                tx.clone(),
            ),
            watch_http_routes(client.clone(), inner.settings.gateway_api_poll, tx),
        ];
        tasks.push(tokio::spawn(run(inner.clone(), rx)));
        *inner.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        KubeStore { inner }
    }

    /// Waits until every kind has been listed and the first state is published.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut rx = self.inner.ready.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(format!(
                "the Kubernetes API was not listed completely within {timeout:?} (are the onemesh CRDs installed, and may the control plane list namespaces, pods, services, endpointslices, authorizationpolicies, routes, ratelimitpolicies and httproutes? see docs/kubernetes.md)"
            ))),
        }
    }

    /// Stops the watchers and the fold task.
    pub fn stop(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }

    async fn review(&self, token: &str) -> Result<Option<SpiffeId>, StoreError> {
        let settings = &self.inner.settings;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(settings.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| StoreError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(StoreError::TokenRefused(
                status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_string()),
            ));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !settings.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(StoreError::TokenRefused(format!(
                "the token is valid for {audiences:?}, not {:?}",
                settings.audiences
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, sa)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(StoreError::NotServiceAccount(username));
        };
        if namespace == settings.control_namespace {
            if sa != settings.control_service_account {
                return Err(StoreError::ControlNamespace(format!("{namespace}/{sa}")));
            }
        } else {
            let extra = |key: &str| {
                user.extra
                    .as_ref()
                    .and_then(|e| e.get(key))
                    .and_then(|v| v.first())
                    .cloned()
            };
            let Some(pod) = extra("authentication.kubernetes.io/pod-name") else {
                return Err(StoreError::NotBoundToPod(format!("{namespace}/{sa}")));
            };
            let meshed = self
                .inner
                .meshed
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(namespace);
            if !meshed {
                return Err(StoreError::NotMeshed(namespace.to_string()));
            }
            // The API server caches token reviews for a few seconds: a pod deleted just now
            // would still pass. The watch knows sooner.
            let uid = self
                .inner
                .pods
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&(namespace.to_string(), pod.clone()))
                .cloned();
            let bound_uid = extra("authentication.kubernetes.io/pod-uid");
            if uid.is_none() || (bound_uid.is_some() && uid != bound_uid) {
                return Err(StoreError::PodGone(format!("{namespace}/{pod}")));
            }
        }
        SpiffeId::new(&settings.trust_domain, namespace, sa)
            .map(Some)
            .map_err(|e| StoreError::TokenRefused(format!("no spiffe id for {username}: {e}")))
    }
}

impl Store for KubeStore {
    fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.inner.state.subscribe()
    }

    fn token_identity<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<SpiffeId>, StoreError>> {
        Box::pin(self.review(token))
    }
}

/// One watcher: its events, mapped to [`Event`], go to the fold task. Errors are logged; kube-rs
/// retries with backoff and relists when it must.
fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::UnboundedSender<Event>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(forward(api, config, kind, wrap, tx))
}

/// The HTTPRoute watcher: while the API server does not serve HTTPRoutes (no Gateway API CRDs,
/// or no permission to list them), they are listed as none and asked for again every `poll`;
/// then watched as every other kind.
fn watch_http_routes(
    client: Client,
    poll: Duration,
    tx: mpsc::UnboundedSender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::all_with(client, &gateway::http_route_resource());
        let mut told = false;
        loop {
            match api
                .list_metadata(&kube::api::ListParams::default().limit(1))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    if !told {
                        tracing::info!(
                            "Gateway API HTTPRoutes are not served ({e}): none in force; asking again every {poll:?} (install the Gateway API CRDs to route with them)"
                        );
                        for event in [
                            Event::Init(Kind::HttpRoute),
                            Event::InitDone(Kind::HttpRoute),
                        ] {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        told = true;
                    }
                    tokio::time::sleep(poll).await;
                }
            }
        }
        tracing::info!("Gateway API HTTPRoutes are served: watching them");
        forward(
            api,
            watcher::Config::default(),
            Kind::HttpRoute,
            Object::HttpRoute,
            tx,
        )
        .await;
    })
}

async fn forward<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::UnboundedSender<Event>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // managedFields are the largest part of most objects and never read: dropped on arrival.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None);
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Apply(o)) => Event::Apply(wrap(o)),
            Ok(watcher::Event::Delete(o)) => Event::Delete(wrap(o)),
            Ok(watcher::Event::Init) => Event::Init(kind),
            Ok(watcher::Event::InitApply(o)) => Event::InitApply(wrap(o)),
            Ok(watcher::Event::InitDone) => Event::InitDone(kind),
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        ?kind,
                        "watch failed, retrying with backoff; the last good state stays in force: {e}"
                    );
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(?kind, "watch is back");
            failing = false;
        }
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// The fold task: events in, states and verdicts out.
async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut cache = Cache::default();
    let recorder = Recorder::new(
        inner.client.clone(),
        Reporter {
            controller: inner.settings.manager.clone(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let mut leader = inner.settings.leader.clone();
    loop {
        let mut changed = false;
        let mut took_over = false;
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                changed = cache.apply(event);
                let deadline = tokio::time::Instant::now() + inner.settings.debounce;
                loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(event)) => changed |= cache.apply(event),
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            }
            now_leading = leadership_changed(&mut leader) => took_over = now_leading,
        }
        if !(changed || took_over) || !cache.ready() {
            continue;
        }
        let (mesh, verdicts, route_statuses) = fold::build_all(&cache);
        *inner.meshed.write().unwrap_or_else(PoisonError::into_inner) =
            mesh.namespaces.keys().cloned().collect();
        *inner.pods.write().unwrap_or_else(PoisonError::into_inner) = cache.meshed_pods();
        let state = MeshState { mesh };
        let published = inner.state.send_if_modified(|current| {
            if **current == state {
                false
            } else {
                *current = Arc::new(state);
                true
            }
        });
        if published {
            tracing::debug!("published a new mesh state");
        }
        inner.ready.send_replace(true);
        if leader.as_ref().is_some_and(|l| !*l.borrow()) {
            continue; // the leading replica writes the conditions and Events
        }
        // Status writes go on beside the next events: they must not delay the next state.
        let writes: Vec<(DynamicObject, Verdict)> = verdicts
            .into_iter()
            .filter_map(|v| Some((cache_object(&cache, &v)?, v)))
            .collect();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let parent_writes: Vec<(String, String, Option<String>, Vec<serde_json::Value>)> =
            route_statuses
                .iter()
                .filter_map(|s| {
                    let obj = cache.http_route(&s.namespace, &s.name)?;
                    let current = obj
                        .data
                        .get("status")
                        .and_then(|st| st.get("parents"))
                        .and_then(serde_json::Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let parents = gateway::parents_update(current, s, &now)?;
                    Some((
                        s.namespace.clone(),
                        s.name.clone(),
                        obj.metadata.resource_version.clone(),
                        parents,
                    ))
                })
                .collect();
        let (inner2, recorder2) = (inner.clone(), recorder.clone());
        tokio::spawn(async move {
            for (obj, v) in writes {
                write_verdict(&inner2, &recorder2, &obj, v).await;
            }
            for (namespace, name, version, parents) in parent_writes {
                write_parents(&inner2, &namespace, &name, version, parents).await;
            }
        });
    }
}

/// Resolves when leadership changes, with whether this replica leads now; never without an
/// election (or once it ended).
async fn leadership_changed(leader: &mut Option<watch::Receiver<bool>>) -> bool {
    match leader {
        Some(l) => match l.changed().await {
            Ok(()) => *l.borrow_and_update(),
            Err(_) => {
                *leader = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

fn cache_object(cache: &Cache, v: &Verdict) -> Option<DynamicObject> {
    cache.crd_object(v.kind, &v.namespace, &v.name).cloned()
}

/// Writes an HTTPRoute's `status.parents` (other controllers' entries included, unchanged), on
/// the version it was computed from: when another controller wrote in between, the API server
/// refuses it (409) and the watch event of that write brings the next attempt.
async fn write_parents(
    inner: &Inner,
    namespace: &str,
    name: &str,
    version: Option<String>,
    parents: Vec<serde_json::Value>,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        inner.client.clone(),
        namespace,
        &gateway::http_route_resource(),
    );
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": version},
        "status": {"parents": parents},
    });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(%namespace, %name, "HTTPRoute changed meanwhile; its status is written on the next event");
        }
        Err(e) => {
            tracing::warn!(%namespace, %name, "cannot write the HTTPRoute's status.parents: {e}");
        }
    }
}

/// Writes the object's `Accepted` condition when it differs from the one it carries, and an Event
/// when the object is refused.
async fn write_verdict(inner: &Inner, recorder: &Recorder, obj: &DynamicObject, v: Verdict) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let Some(wanted) = fold::condition_update(fold::accepted_condition(obj).as_ref(), &v, &now)
    else {
        return;
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(inner.client.clone(), &v.namespace, &crd_resource(v.kind));
    let patch = serde_json::json!({"status": {"conditions": [wanted]}});
    if let Err(e) = api
        .patch_status(&v.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(kind = ?v.kind, namespace = %v.namespace, name = %v.name, "cannot write the Accepted condition: {e}");
    }
    if let Err(problems) = &v.accepted {
        let reference = obj.object_ref(&crd_resource(v.kind));
        let mut note = problems.join("; ");
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: v.reason.to_string(),
            note: Some(note),
            action: "Validate".to_string(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(namespace = %v.namespace, name = %v.name, "cannot record an Event: {e}");
        }
        tracing::warn!(kind = ?v.kind, namespace = %v.namespace, name = %v.name, "left out of the mesh: {}", problems.join("; "));
    }
}

#[cfg(test)]
mod tests;
