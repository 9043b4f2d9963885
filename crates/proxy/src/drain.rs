//! Graceful shutdown: one signal to stop accepting, and a count of the work still running.
//!
//! Every listener and every connection task holds a [`Drain`]. [`Controller::drain`] raises the
//! signal (listeners stop accepting, HTTP connections finish their in-flight requests and close)
//! and then waits until every [`Drain`] handle has been dropped, i.e. all work is done.

use tokio::sync::{mpsc, watch};

/// A handle held by running work.
#[derive(Clone, Debug)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Drain {
    /// Resolves once draining has started.
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        // An error means the controller is gone: treat as drained.
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }
}

/// Starts the drain and waits for the work to finish.
#[derive(Debug)]
pub struct Controller {
    tx: watch::Sender<bool>,
    alive_rx: mpsc::Receiver<()>,
    handle: Drain,
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

impl Controller {
    /// A new controller.
    pub fn new() -> Self {
        let (tx, signal) = watch::channel(false);
        let (alive, alive_rx) = mpsc::channel(1);
        Self {
            tx,
            alive_rx,
            handle: Drain {
                signal,
                _alive: alive,
            },
        }
    }

    /// A receiver of the drain signal that does not count as running work (for observers such
    /// as the admin server's `/ready`).
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// A handle for new work.
    pub fn handle(&self) -> Drain {
        self.handle.clone()
    }

    /// Signals, then waits until every handle is dropped.
    pub async fn drain(self) {
        let Controller {
            tx,
            mut alive_rx,
            handle,
        } = self;
        let _ = tx.send(true);
        drop(handle);
        // recv returns None once every sender (handle) is gone.
        while alive_rx.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waits_for_work_then_returns() {
        let c = Controller::new();
        let h = c.handle();
        let task = tokio::spawn(async move {
            h.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(h);
        });
        tokio::time::timeout(Duration::from_secs(5), c.drain())
            .await
            .unwrap();
        assert!(task.is_finished() || task.await.is_ok());
    }
}
