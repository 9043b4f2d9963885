//! [`InboundPolicy`] over `Policy.WatchInbound`: this workload's authorizations on a watch,
//! starting closed ([`awaiting_policy`]: nobody is let in) and replaced by each full state the control plane
//! sends. The stream is reopened with backoff; until then the last state stays in force. The
//! first answer marks the initial configuration as loaded for `/ready`.
//!
//! With a state directory, every new policy is saved there (`inbound.pb`, the message as the
//! control plane sent it) and a restarted proxy starts from it: its initial configuration is
//! loaded at once, also while the control plane is down, and the stream replaces it when it
//! answers.

use std::sync::Arc;

use onemesh_api::policy::InboundPolicy as InboundMessage;
use onemesh_api::policy::InboundRequest;
use onemesh_api::policy::policy_client::PolicyClient;
use prost::Message;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::convert;
use super::{Backoff, ControlPlane, ServiceKind};
use crate::discover::InboundPolicy;
use crate::policy::Authorizations;
use crate::state_dir::StateDir;

/// The saved inbound policy in the state directory.
pub const CACHE_FILE: &str = "inbound.pb";

/// Inbound authorizations from the control plane. The stream's task runs for the life of the
/// process (or runtime): the data path keeps its receiver after this handle is dropped.
#[derive(Debug)]
pub struct ControlPolicy {
    authorizations: watch::Sender<Arc<Authorizations>>,
}

impl ControlPolicy {
    /// Starts following the authorizations of `namespace`/`workload`.
    pub fn spawn(
        client: PolicyClient<Channel>,
        namespace: String,
        workload: String,
        plane: ControlPlane,
        state: Option<StateDir>,
    ) -> Self {
        let saved = state
            .as_ref()
            .and_then(|s| s.load_blob(CACHE_FILE))
            .and_then(|bytes| {
                InboundMessage::decode(bytes.as_slice())
                    .inspect_err(|e| warn!("ignoring the saved inbound policy: {e}"))
                    .ok()
            });
        let start = match &saved {
            Some(policy) => {
                info!(%namespace, %workload, "starting from the saved inbound policy");
                plane.mark_config_loaded();
                convert::authorizations(policy).0
            }
            None => awaiting_policy(),
        };
        let (authorizations, _) = watch::channel(Arc::new(start));
        tokio::spawn(run(
            client,
            namespace,
            workload,
            plane,
            authorizations.clone(),
            state,
        ));
        ControlPolicy { authorizations }
    }
}

/// Until the control plane has answered, every caller is denied and no port is declared (fail
/// closed): the default would let same-namespace callers reach ports that a policy restricts.
pub fn awaiting_policy() -> Authorizations {
    Authorizations {
        list: vec![crate::policy::Authorization {
            name: AWAITING_POLICY.into(),
            ports: Vec::new(),
            routes: Vec::new(),
            identities: Vec::new(),
            namespaces: Vec::new(),
            unauthenticated: false,
            mode: crate::policy::Mode::Enforce,
        }],
        ports: crate::policy::DeclaredPorts::awaiting(),
        ..Default::default()
    }
}

/// The policy name a 403 carries before the first answer of the control plane.
pub const AWAITING_POLICY: &str = "default:awaiting-control-plane";

impl InboundPolicy for ControlPolicy {
    fn authorizations(&self) -> watch::Receiver<Arc<Authorizations>> {
        self.authorizations.subscribe()
    }
}

async fn run(
    client: PolicyClient<Channel>,
    namespace: String,
    workload: String,
    plane: ControlPlane,
    authorizations: watch::Sender<Arc<Authorizations>>,
    state: Option<StateDir>,
) {
    plane.wait_for_certificate().await;
    let mut health = plane.stream(ServiceKind::Policy);
    let mut backoff = Backoff::new();
    loop {
        let mut client = client.clone();
        let request = InboundRequest {
            namespace: namespace.clone(),
            workload: workload.clone(),
            port: 0,
        };
        let why = match client.watch_inbound(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(policy)) => {
                            health.up();
                            backoff.reset();
                            let (mut next, skipped) = convert::authorizations(&policy);
                            for skipped in skipped {
                                warn!(%namespace, %workload, "inbound policy: {skipped}");
                            }
                            let changed = authorizations.send_if_modified(|current| {
                                next.adopt_buckets(current);
                                if **current == next {
                                    return false;
                                }
                                *current = Arc::new(next);
                                true
                            });
                            if changed {
                                if let Some(state) = &state {
                                    state.save_blob(CACHE_FILE, &policy.encode_to_vec());
                                }
                                info!(
                                    %namespace,
                                    %workload,
                                    authorizations = authorizations.borrow().list.len(),
                                    ports = ?authorizations.borrow().ports.as_slice(),
                                    "inbound policy updated"
                                );
                            }
                            plane.mark_config_loaded();
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
            warn!(retry_in = ?delay, "inbound policy stream lost: {why}; keeping the last known authorizations");
        } else {
            debug!(retry_in = ?delay, "inbound policy stream still down: {why}");
        }
        tokio::time::sleep(delay).await;
    }
}
