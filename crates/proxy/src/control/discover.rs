//! [`Discover`] over `Destination.Watch` and `Policy.WatchOutbound`.
//!
//! The first resolve of a name starts one task for it, cached per [`Target`]: it keeps a
//! destination stream and an outbound-policy stream open (reopening each with backoff) and
//! publishes the merged [`Service`] on a watch. Resolvers wait (up to
//! [`FIRST_ANSWER_TIMEOUT`]) for the task's first answer: `Mesh(watch)` or `External`; later
//! resolves of the same name get the same watch at once. An `External` answer ends the task and
//! forgets the name.
//!
//! With a state directory, each mesh name's last endpoint set and routes are saved there
//! (`dst-<hex name>.pb`, `routes-<hex name>.pb`: the messages as the control plane sent them,
//! diffs folded into one snapshot). A restarted proxy answers the first resolve of such a name at
//! once from them, also while the control plane is down; the streams replace them when they
//! answer. The files are not pruned: one pair per mesh name this workload calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use onemesh_api::destination::destination_client::DestinationClient;
use onemesh_api::destination::{Snapshot, Update, WatchRequest, update};
use onemesh_api::policy::OutboundPolicy;
use onemesh_api::policy::OutboundRequest;
use onemesh_api::policy::policy_client::PolicyClient;
use prost::Message;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::convert::{self, Destination};
use super::{Backoff, ControlPlane, FIRST_ANSWER_TIMEOUT, ServiceKind, watch_name};
use crate::discover::{BoxFuture, Discover, DiscoverError, Resolution, Service, Target};
use crate::state_dir::StateDir;

/// The file a name's saved `kind` (`dst` or `routes`) lives in: the name hex-encoded, so no name
/// can escape the directory.
fn cache_file(kind: &str, name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{kind}-{hex}.pb")
}

fn load<M: Message + Default>(state: Option<&StateDir>, file: &str) -> Option<M> {
    let bytes = state?.load_blob(file)?;
    M::decode(bytes.as_slice())
        .inspect_err(|e| warn!(file, "ignoring saved configuration: {e}"))
        .ok()
}

/// Folds `update` into `snapshot`, the one message that says what the stream said so far.
fn fold(snapshot: &mut Snapshot, update: &Update) {
    match &update.kind {
        Some(update::Kind::Snapshot(s)) => *snapshot = s.clone(),
        Some(update::Kind::Diff(d)) => {
            snapshot
                .endpoints
                .retain(|e| !d.remove.contains(&e.addr) && !d.add.iter().any(|a| a.addr == e.addr));
            snapshot.endpoints.extend(d.add.iter().cloned());
        }
        None => {}
    }
}

/// What a name's task has found out so far.
#[derive(Clone, Debug)]
enum Answer {
    Pending,
    Mesh(watch::Receiver<Arc<Service>>),
    External,
}

/// Service discovery from the control plane.
#[derive(Clone, Debug)]
pub struct ControlDiscover {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    destination: DestinationClient<Channel>,
    policy: PolicyClient<Channel>,
    caller_namespace: String,
    plane: ControlPlane,
    names: Mutex<HashMap<Target, watch::Receiver<Answer>>>,
    state: Option<StateDir>,
}

impl ControlDiscover {
    /// Discovery for a proxy in `caller_namespace` (short names resolve there).
    pub fn new(
        destination: DestinationClient<Channel>,
        policy: PolicyClient<Channel>,
        caller_namespace: String,
        plane: ControlPlane,
        state: Option<StateDir>,
    ) -> Self {
        ControlDiscover {
            inner: Arc::new(Inner {
                destination,
                policy,
                caller_namespace,
                plane,
                names: Mutex::new(HashMap::new()),
                state,
            }),
        }
    }

    /// How many names have a task (tests check that a name has one stream).
    pub fn watched_names(&self) -> usize {
        self.inner.names().len()
    }
}

impl Inner {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<Target, watch::Receiver<Answer>>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `target` if it is still this task's entry.
    fn forget(&self, target: &Target, answer: &watch::Sender<Answer>) {
        let mut names = self.names();
        if names
            .get(target)
            .is_some_and(|rx| rx.same_channel(&answer.subscribe()))
        {
            names.remove(target);
        }
    }
}

impl Discover for ControlDiscover {
    fn resolve(&self, target: &Target) -> BoxFuture<Result<Resolution, DiscoverError>> {
        let name = watch_name(target);
        let mut answer = {
            let mut names = self.inner.names();
            names
                .entry(target.clone())
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(Answer::Pending);
                    tokio::spawn(run(self.inner.clone(), target.clone(), name.clone(), tx));
                    rx
                })
                .clone()
        };
        Box::pin(async move {
            let waited = tokio::time::timeout(
                FIRST_ANSWER_TIMEOUT,
                answer.wait_for(|a| !matches!(a, Answer::Pending)),
            )
            .await;
            match waited {
                Ok(Ok(a)) => match &*a {
                    Answer::Mesh(rx) => Ok(Resolution::Mesh(rx.clone())),
                    Answer::External | Answer::Pending => Ok(Resolution::External),
                },
                Ok(Err(_)) => Err(DiscoverError::Unavailable(format!(
                    "the destination watch of {name} ended before answering; retry"
                ))),
                Err(_) => Err(DiscoverError::Unavailable(format!(
                    "the control plane did not resolve {name} within {FIRST_ANSWER_TIMEOUT:?}; is it running?"
                ))),
            }
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a name's first answer waits for its routes once its endpoints are known (a policy
/// stream slower than this: served without routes until they come).
const ROUTES_WAIT: Duration = Duration::from_secs(2);

/// One name's task: routes in the background, destination here until the name is external. The
/// saved routes, if any, are in the service from the start; otherwise its first answer waits for
/// the control plane's routes (up to [`ROUTES_WAIT`]), so that no request goes out without its
/// route's timeout, retry policy, split or breaker.
async fn run(inner: Arc<Inner>, target: Target, name: String, answer: watch::Sender<Answer>) {
    let saved = load::<OutboundPolicy>(inner.state.as_ref(), &cache_file("routes", &name));
    let (routes, breaker) = saved
        .as_ref()
        .map(|p| (convert::routes(p).0, service_breaker(p)))
        .unwrap_or_default();
    let initial = Destination::default().service(&name, routes, breaker);
    let (service, _) = watch::channel(Arc::new(initial));
    let (routes_known, known) = watch::channel(saved.is_some());
    let _routes = AbortOnDrop(tokio::spawn(watch_routes(
        inner.clone(),
        name.clone(),
        service.clone(),
        routes_known,
    )));
    watch_destination(&inner, &name, &service, &answer, known).await;
    inner.forget(&target, &answer);
}

/// Follows `Destination.Watch` for `name` until the control plane says it is not in the mesh.
async fn watch_destination(
    inner: &Inner,
    name: &str,
    service: &watch::Sender<Arc<Service>>,
    answer: &watch::Sender<Answer>,
    mut routes_known: watch::Receiver<bool>,
) {
    let file = cache_file("dst", name);
    let mut state = Destination::default();
    let mut folded: Snapshot = load(inner.state.as_ref(), &file)
        .filter(|s: &Snapshot| s.exists)
        .unwrap_or_default();
    if folded.exists {
        debug!(%name, endpoints = folded.endpoints.len(), "starting from the saved endpoints");
        state.apply(Update {
            kind: Some(update::Kind::Snapshot(folded.clone())),
        });
        service.send_modify(|s| {
            *s = Arc::new(state.service(name, s.routes.clone(), s.breaker.clone()));
        });
        answer.send_replace(Answer::Mesh(service.subscribe()));
    }
    inner.plane.wait_for_certificate().await;
    let mut health = inner.plane.stream(ServiceKind::Destination);
    let mut backoff = Backoff::new();
    loop {
        let mut client = inner.destination.clone();
        let request = WatchRequest {
            name: name.to_string(),
            caller_namespace: inner.caller_namespace.clone(),
        };
        let why = match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            health.up();
                            backoff.reset();
                            if let Some(dir) = &inner.state {
                                fold(&mut folded, &update);
                                dir.save_blob(&file, &folded.encode_to_vec());
                            }
                            for skipped in state.apply(update) {
                                warn!(%name, "destination update: {skipped}");
                            }
                            let pending = matches!(*answer.borrow(), Answer::Pending);
                            if pending && !state.exists {
                                debug!(%name, "not a mesh service: passing through");
                                answer.send_replace(Answer::External);
                                return;
                            }
                            service.send_modify(|s| {
                                *s = Arc::new(state.service(
                                    name,
                                    s.routes.clone(),
                                    s.breaker.clone(),
                                ));
                            });
                            if pending {
                                let wait = routes_known.wait_for(|known| *known);
                                if tokio::time::timeout(ROUTES_WAIT, wait).await.is_err() {
                                    warn!(%name, "no routes within {ROUTES_WAIT:?}: serving without them until they come");
                                }
                                answer.send_replace(Answer::Mesh(service.subscribe()));
                            }
                        }
                        Ok(None) => break "the control plane ended the stream".to_string(),
                        Err(status) => break status.to_string(),
                    }
                }
            }
            Err(status)
                if status.code() == Code::InvalidArgument
                    && matches!(*answer.borrow(), Answer::Pending) =>
            {
                debug!(%name, "the control plane cannot parse this name: passing through");
                answer.send_replace(Answer::External);
                return;
            }
            Err(status) => status.to_string(),
        };
        let delay = backoff.next_delay();
        if health.failed() {
            warn!(%name, retry_in = ?delay, "destination stream lost: {why}; serving the last known endpoints");
        } else {
            debug!(%name, retry_in = ?delay, "destination stream still down: {why}");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Follows `Policy.WatchOutbound` for `name`, merging its routes into `service`; `known` turns
/// true with the first policy.
async fn watch_routes(
    inner: Arc<Inner>,
    name: String,
    service: watch::Sender<Arc<Service>>,
    known: watch::Sender<bool>,
) {
    let file = cache_file("routes", &name);
    inner.plane.wait_for_certificate().await;
    let mut health = inner.plane.stream(ServiceKind::Policy);
    let mut backoff = Backoff::new();
    loop {
        let mut client = inner.policy.clone();
        let request = OutboundRequest {
            name: name.clone(),
            caller_namespace: inner.caller_namespace.clone(),
        };
        let why = match client.watch_outbound(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(policy)) => {
                            health.up();
                            backoff.reset();
                            if let Some(dir) = &inner.state {
                                dir.save_blob(&file, &policy.encode_to_vec());
                            }
                            let (routes, skipped) = convert::routes(&policy);
                            for skipped in skipped {
                                warn!(%name, "outbound policy: {skipped}");
                            }
                            let breaker = service_breaker(&policy);
                            service.send_if_modified(|s| {
                                if s.routes == routes && s.breaker == breaker {
                                    return false;
                                }
                                let mut next = Service::clone(s);
                                next.routes = routes;
                                next.breaker = breaker;
                                *s = Arc::new(next);
                                true
                            });
                            known.send_replace(true);
                        }
                        Ok(None) => break "the control plane ended the stream".to_string(),
                        Err(status) => break status.to_string(),
                    }
                }
            }
            Err(status) => status.to_string(),
        };
        let delay = backoff.next_delay();
        if health.failed() {
            warn!(%name, retry_in = ?delay, "outbound policy stream lost: {why}; keeping the last known routes");
        } else {
            debug!(%name, retry_in = ?delay, "outbound policy stream still down: {why}");
        }
        tokio::time::sleep(delay).await;
    }
}

/// The service-level circuit breaker of an outbound policy.
fn service_breaker(p: &OutboundPolicy) -> Option<Arc<crate::discover::BreakerConfig>> {
    p.circuit_breaker
        .as_ref()
        .filter(|_| p.exists)
        .and_then(convert::breaker)
}
