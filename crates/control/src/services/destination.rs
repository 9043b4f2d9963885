//! `Destination.Watch`: a service's endpoints, the full set first, then diffs. Any proxy of the
//! mesh may watch any service (it needs a mesh client certificate; the addresses and identities
//! of a service are what a caller needs to reach it over mTLS).

use std::collections::BTreeMap;
use std::sync::Arc;

use onemesh_api::destination::destination_server::Destination;
use onemesh_api::destination::{Diff, Endpoint, Snapshot, Update, WatchRequest, update};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{WatchStream, authenticated, watch_stream};
use crate::state;
use crate::store::Store;

/// The destination service over a store.
pub struct DestinationService {
    store: Arc<dyn Store>,
    trust_domain: String,
    shutdown: watch::Receiver<bool>,
}

impl DestinationService {
    pub fn new(store: Arc<dyn Store>, trust_domain: &str, shutdown: watch::Receiver<bool>) -> Self {
        DestinationService {
            store,
            trust_domain: trust_domain.to_string(),
            shutdown,
        }
    }
}

/// What to send after `prev` to bring a client to `next`: nothing, a diff, or (first message,
/// or the service appeared, disappeared or changed) a whole snapshot.
pub fn step(prev: Option<&Snapshot>, next: &Snapshot) -> Option<Update> {
    let snapshot = || {
        Some(Update {
            kind: Some(update::Kind::Snapshot(next.clone())),
        })
    };
    let Some(prev) = prev else {
        return snapshot();
    };
    if (prev.exists, &prev.service, &prev.namespace, prev.port)
        != (next.exists, &next.service, &next.namespace, next.port)
    {
        return snapshot();
    }
    let before: BTreeMap<&str, &Endpoint> = prev
        .endpoints
        .iter()
        .map(|e| (e.addr.as_str(), e))
        .collect();
    let after: BTreeMap<&str, &Endpoint> = next
        .endpoints
        .iter()
        .map(|e| (e.addr.as_str(), e))
        .collect();
    let add: Vec<Endpoint> = after
        .iter()
        .filter(|(addr, e)| before.get(*addr) != Some(*e))
        .map(|(_, e)| (*e).clone())
        .collect();
    let remove: Vec<String> = before
        .keys()
        .filter(|addr| !after.contains_key(*addr))
        .map(|addr| addr.to_string())
        .collect();
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    Some(Update {
        kind: Some(update::Kind::Diff(Diff { add, remove })),
    })
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type WatchStream = WatchStream<Update>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = authenticated(&request)?;
        let req = request.into_inner();
        let target = state::resolve_dest(&req.name, &req.caller_namespace)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(name = %req.name, %caller, "destination watch");
        let trust_domain = self.trust_domain.clone();
        let stream = watch_stream(
            self.store.subscribe(),
            self.shutdown.clone(),
            move |s| match &target {
                Some(t) => state::destination(s, &trust_domain, t),
                None => Snapshot::default(),
            },
            step,
        );
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, port: u32) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            target_port: port,
            ..Endpoint::default()
        }
    }

    fn snap(endpoints: Vec<Endpoint>) -> Snapshot {
        Snapshot {
            exists: true,
            service: "bank".into(),
            namespace: "bank".into(),
            port: 80,
            endpoints,
        }
    }

    #[test]
    fn first_a_snapshot_then_diffs_then_nothing_when_equal() {
        let a = snap(vec![ep("127.0.0.1:1", 10), ep("127.0.0.1:2", 20)]);
        assert!(matches!(step(None, &a).unwrap().kind, Some(update::Kind::Snapshot(s)) if s == a));
        assert_eq!(step(Some(&a), &a), None);

        let b = snap(vec![ep("127.0.0.1:2", 21), ep("127.0.0.1:3", 30)]);
        let Some(update::Kind::Diff(d)) = step(Some(&a), &b).unwrap().kind else {
            panic!("expected a diff");
        };
        assert_eq!(d.add, vec![ep("127.0.0.1:2", 21), ep("127.0.0.1:3", 30)]);
        assert_eq!(d.remove, vec!["127.0.0.1:1".to_string()]);
    }

    #[test]
    fn a_service_that_disappears_gets_a_new_snapshot() {
        let a = snap(vec![ep("127.0.0.1:1", 10)]);
        let gone = Snapshot::default();
        assert!(
            matches!(step(Some(&a), &gone).unwrap().kind, Some(update::Kind::Snapshot(s)) if !s.exists)
        );
    }
}
