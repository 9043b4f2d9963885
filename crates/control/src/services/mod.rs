//! The gRPC services (identity with its trust watch, destination, policy, and the operator's
//! admin service) and what they share: the check of who is calling (`authenticated`) and the
//! watch-stream pattern.
//!
//! Every call except a Certify with a bootstrap token must come over a connection on which the
//! client presented a mesh certificate (verified in the TLS handshake: chains to the bundle, our
//! trust domain, valid then). `authenticated` returns its id or `UNAUTHENTICATED`; handlers
//! call it first, before reading the store or computing anything.
//!
//! Every watch stream follows one pattern (`watch_stream`): subscribe to the store's state,
//! compute this subscriber's view (a pure function from [`crate::state`]), send it, then on each
//! state change recompute and send only what changed. A stream ends when the client goes away,
//! when the store stops, or when the control plane shuts down.

pub mod admin;
pub mod destination;
pub mod identity;
pub mod policy;
pub mod trust;

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use onemesh_identity::SpiffeId;
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::server::PeerInfo;
use crate::state::MeshState;

/// The verified mesh id of the caller, or `UNAUTHENTICATED` when its connection presented no
/// mesh certificate.
pub(crate) fn authenticated<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.id.clone())
        .ok_or_else(|| {
            Status::unauthenticated(
                "no mesh client certificate: the control plane answers only mesh proxies; connect with the proxy's certificate (a proxy gets its first one from Identity.Certify with its bootstrap token)",
            )
        })
}

/// The boxed stream type every watch method returns.
pub type WatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct Loop<V, F, G> {
    rx: watch::Receiver<Arc<MeshState>>,
    shutdown: watch::Receiver<bool>,
    prev: Option<V>,
    view: F,
    step: G,
}

/// A stream of `step(previous view, new view)` for the first state and every change after it;
/// `step` returns `None` when there is nothing to send.
pub(crate) fn watch_stream<V, T, F, G>(
    rx: watch::Receiver<Arc<MeshState>>,
    shutdown: watch::Receiver<bool>,
    view: F,
    step: G,
) -> WatchStream<T>
where
    V: Send + 'static,
    T: Send + 'static,
    F: Fn(&MeshState) -> V + Send + 'static,
    G: Fn(Option<&V>, &V) -> Option<T> + Send + 'static,
{
    let start = Loop {
        rx,
        shutdown,
        prev: None,
        view,
        step,
    };
    Box::pin(futures_util::stream::unfold(Some(start), |st| async move {
        let mut st = st?;
        loop {
            if st.prev.is_some() {
                tokio::select! {
                    changed = st.rx.changed() => if changed.is_err() { return None },
                    _ = st.shutdown.changed() => return None,
                }
            }
            let next = {
                let state = st.rx.borrow_and_update();
                (st.view)(&state)
            };
            let item = (st.step)(st.prev.as_ref(), &next);
            st.prev = Some(next);
            if let Some(item) = item {
                return Some((Ok(item), Some(st)));
            }
        }
    }))
}

/// The `step` of streams that send the whole view whenever it changed.
pub(crate) fn when_changed<V: Clone + PartialEq>(prev: Option<&V>, next: &V) -> Option<V> {
    (prev != Some(next)).then(|| next.clone())
}
