//! `Policy.WatchInbound` and `Policy.WatchOutbound`: full states, resent on every change.

use std::sync::Arc;

use onemesh_api::policy::policy_server::Policy;
use onemesh_api::policy::{InboundPolicy, InboundRequest, OutboundPolicy, OutboundRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{WatchStream, watch_stream, when_changed};
use crate::state::{self, NameError};
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

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchInboundStream = WatchStream<InboundPolicy>;
    type WatchOutboundStream = WatchStream<OutboundPolicy>;

    async fn watch_inbound(
        &self,
        request: Request<InboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let req = request.into_inner();
        if req.namespace.is_empty() || req.workload.is_empty() {
            return Err(Status::invalid_argument(
                "namespace and workload are required: send the proxy's own namespace and workload",
            ));
        }
        let port = u16::try_from(req.port)
            .map_err(|_| Status::invalid_argument("port out of range: use 0-65535"))?;
        tracing::debug!(namespace = %req.namespace, workload = %req.workload, port, "inbound policy watch");
        let stream = watch_stream(
            self.store.subscribe(),
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
        let req = request.into_inner();
        let target = state::resolve_name(&req.name, &req.caller_namespace).map_err(invalid)?;
        tracing::debug!(name = %req.name, "outbound policy watch");
        let stream = watch_stream(
            self.store.subscribe(),
            self.shutdown.clone(),
            move |s| match &target {
                Some(t) => state::outbound(s, t),
                None => OutboundPolicy::default(),
            },
            when_changed,
        );
        Ok(Response::new(stream))
    }
}
