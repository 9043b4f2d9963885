//! The gRPC services (identity with its trust watch, destination, policy, and the operator's
//! admin service) and what their watch streams share.
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
use tokio::sync::watch;
use tonic::Status;

use crate::state::MeshState;

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
