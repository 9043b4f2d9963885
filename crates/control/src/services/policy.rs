//! `Policy.WatchInbound` and `Policy.WatchOutbound`: full states, resent on every change.
//!
//! Both need a mesh client certificate. Any proxy may watch a service's outbound policy (its
//! routes); a workload's inbound policy (who may call it) goes only to a proxy whose certificate
//! is that workload's: same namespace, same service account as the workload declared in the
//! store's current state; anyone else, and a workload that is not declared, gets
//! `PERMISSION_DENIED`. The check is made when the stream opens.

use std::sync::Arc;

use onemesh_api::policy::policy_server::Policy;
use onemesh_api::policy::{InboundPolicy, InboundRequest, OutboundPolicy, OutboundRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use onemesh_identity::SpiffeId;

use super::{WatchStream, authenticated, watch_stream, when_changed};
use crate::state::{self, MeshState, NameError};
use crate::store::Store;

/// The policy service over a store.
pub struct PolicyService {
    store: Arc<dyn Store>,
    shutdown: watch::Receiver<bool>,
}

impl PolicyService {
    pub fn new(store: Arc<dyn Store>, shutdown: watch::Receiver<bool>) -> Self {
        PolicyService { store, shutdown }
    }
}

fn invalid(e: NameError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Whether `caller` runs as workload `namespace/workload` of `state`: `Err` says why not.
pub(crate) fn runs_as(
    state: &MeshState,
    caller: &SpiffeId,
    namespace: &str,
    workload: &str,
) -> Result<(), Status> {
    let key = (namespace.to_string(), workload.to_string());
    let Some(w) = state.mesh.workloads.get(&key) else {
        return Err(Status::permission_denied(format!(
            "workload {namespace}/{workload} is not declared in the mesh: ask for the inbound policy of this proxy's own workload"
        )));
    };
    if caller.namespace() != w.namespace || caller.service_account() != w.service_account {
        return Err(Status::permission_denied(format!(
            "{caller} may not watch the inbound policy of {namespace}/{workload} (it runs as service account {sa} in namespace {namespace}): a proxy gets only its own workload's inbound policy",
            sa = w.service_account
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchInboundStream = WatchStream<InboundPolicy>;
    type WatchOutboundStream = WatchStream<OutboundPolicy>;

    async fn watch_inbound(
        &self,
        request: Request<InboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let caller = authenticated(&request)?;
        let req = request.into_inner();
        if req.namespace.is_empty() || req.workload.is_empty() {
            return Err(Status::invalid_argument(
                "namespace and workload are required: send the proxy's own namespace and workload",
            ));
        }
        let port = u16::try_from(req.port)
            .map_err(|_| Status::invalid_argument("port out of range: use 0-65535"))?;
        let rx = self.store.subscribe();
        runs_as(&rx.borrow(), &caller, &req.namespace, &req.workload).inspect_err(|e| {
            tracing::warn!(%caller, namespace = %req.namespace, workload = %req.workload, "inbound policy watch refused: {}", e.message());
        })?;
        tracing::debug!(namespace = %req.namespace, workload = %req.workload, port, "inbound policy watch");
        let stream = watch_stream(
            rx,
            self.shutdown.clone(),
            move |s| state::inbound(s, &req.namespace, &req.workload, port),
            when_changed,
        );
        Ok(Response::new(stream))
    }

    async fn watch_outbound(
        &self,
        request: Request<OutboundRequest>,
    ) -> Result<Response<Self::WatchOutboundStream>, Status> {
        let caller = authenticated(&request)?;
        let req = request.into_inner();
        let target = state::resolve_dest(&req.name, &req.caller_namespace).map_err(invalid)?;
        tracing::debug!(name = %req.name, %caller, "outbound policy watch");
        let stream = watch_stream(
            self.store.subscribe(),
            self.shutdown.clone(),
            move |s| match target.as_ref().and_then(|t| t.service(s)) {
                Some(t) => state::outbound(s, &t),
                None => OutboundPolicy::default(),
            },
            when_changed,
        );
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests;
