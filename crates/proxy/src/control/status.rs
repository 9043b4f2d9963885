//! What the rest of the proxy sees of the control-plane client: whether each service is
//! reachable (the `control_plane_connected` gauge), why the last certificate request failed,
//! whether the initial configuration arrived, and what `/ready` should say about it.
//!
//! Each stream holds a [`StreamHealth`] guard. A stream is *connecting* until its first message,
//! *up* after it, and *failing* once it failed without getting back up. A service counts as
//! connected when at least one of its streams is up and none is failing (identity, a unary call,
//! counts its last call). The gauge has its own registry, appended to `/metrics` by the admin
//! server, so the metrics module does not depend on this mode.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use onemesh_identity::CredentialStore;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// The readiness note of a proxy that serves but lost the control plane.
pub const UNREACHABLE_NOTE: &str = "control plane unreachable, serving last known configuration";

/// A control-plane service (the `service` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// `Identity.Certify`.
    Identity,
    /// `Destination.Watch`.
    Destination,
    /// `Policy.WatchInbound` / `WatchOutbound`.
    Policy,
}

impl ServiceKind {
    /// Every kind.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Identity,
        ServiceKind::Destination,
        ServiceKind::Policy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Identity => "identity",
            ServiceKind::Destination => "destination",
            ServiceKind::Policy => "policy",
        }
    }

    fn index(self) -> usize {
        match self {
            ServiceKind::Identity => 0,
            ServiceKind::Destination => 1,
            ServiceKind::Policy => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServiceLabels {
    service: ServiceKind,
}

impl EncodeLabelSet for ServiceLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("service", self.service.as_str()).encode(encoder.encode_label())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    up: usize,
    failing: usize,
}

/// The shared state of the control-plane client; cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    connected: Family<ServiceLabels, Gauge>,
    counts: Mutex<[Counts; 3]>,
    certify_error: Mutex<Option<String>>,
    config_loaded: watch::Sender<bool>,
    credentials: Arc<OnceLock<watch::Receiver<Option<CredentialStore>>>>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlPlane {
    /// A fresh state: nothing connected, nothing loaded.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connected = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "control_plane_connected",
            "Whether the control plane's service is reachable (1) or not (0)",
            connected.clone(),
        );
        for kind in ServiceKind::ALL {
            connected
                .get_or_create(&ServiceLabels { service: kind })
                .set(0);
        }
        let (config_loaded, _) = watch::channel(false);
        ControlPlane {
            inner: Arc::new(Inner {
                registry,
                connected,
                counts: Mutex::new([Counts::default(); 3]),
                certify_error: Mutex::new(None),
                config_loaded,
                credentials: Arc::new(OnceLock::new()),
            }),
        }
    }

    /// Hands the proxy's credentials to the control-plane connections, which then present the
    /// proxy's certificate (the first call wins; later calls are ignored).
    pub fn attach_credentials(&self, credentials: watch::Receiver<Option<CredentialStore>>) {
        let _ = self.inner.credentials.set(credentials);
    }

    /// Waits until the proxy holds a certificate: the control plane answers Destination and
    /// Policy only to a caller that presents one, so streams are opened after it (a connection
    /// dialled without one would be refused).
    pub async fn wait_for_certificate(&self) {
        loop {
            if let Some(rx) = self.inner.credentials.get() {
                let mut rx = rx.clone();
                let _ = rx.wait_for(Option::is_some).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn credentials_slot(
        &self,
    ) -> Arc<OnceLock<watch::Receiver<Option<CredentialStore>>>> {
        self.inner.credentials.clone()
    }

    /// Flips to `true` once the initial inbound policy arrived.
    pub fn config_loaded(&self) -> watch::Receiver<bool> {
        self.inner.config_loaded.subscribe()
    }

    pub(crate) fn mark_config_loaded(&self) {
        self.inner.config_loaded.send_if_modified(|loaded| {
            let changed = !*loaded;
            *loaded = true;
            changed
        });
    }

    /// Whether a service is reachable now (the gauge's value).
    pub fn connected(&self, kind: ServiceKind) -> bool {
        self.inner
            .connected
            .get_or_create(&ServiceLabels { service: kind })
            .get()
            == 1
    }

    /// Why the proxy is not ready, as far as the control plane is concerned: the last
    /// certificate error while there is no certificate.
    pub fn problems(&self, has_certificate: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(error) = self.certify_error().filter(|_| !has_certificate) {
            problems.push(format!("the last certificate request failed: {error}"));
        }
        if !*self.inner.config_loaded.borrow() {
            problems.push("waiting for the inbound policy from the control plane".to_string());
        }
        problems
    }

    /// The note of a ready proxy that lost (part of) the control plane.
    pub fn note(&self) -> Option<&'static str> {
        let counts = *self.counts();
        counts
            .iter()
            .any(|c| c.failing > 0)
            .then_some(UNREACHABLE_NOTE)
    }

    /// The last certificate error, if the last request failed.
    pub fn certify_error(&self) -> Option<String> {
        self.inner
            .certify_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a certificate request's outcome: `Ok(())`, or why it failed and whether the
    /// identity service answered at all.
    pub(crate) fn record_certify(&self, outcome: Result<(), (String, bool)>) {
        let (error, reachable) = match outcome {
            Ok(()) => (None, true),
            Err((error, reachable)) => (Some(error), reachable),
        };
        *self
            .inner
            .certify_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
        let mut counts = self.counts();
        let c = &mut counts[ServiceKind::Identity.index()];
        *c = if reachable {
            Counts { up: 1, failing: 0 }
        } else {
            Counts { up: 0, failing: 1 }
        };
        self.publish(&counts);
    }

    /// Registers a new stream of `kind` (connecting).
    pub(crate) fn stream(&self, kind: ServiceKind) -> StreamHealth {
        StreamHealth {
            plane: self.clone(),
            kind,
            state: StreamState::Connecting,
        }
    }

    /// `/metrics` text of this module appended to `text` (the proxy's own, which ends in
    /// `# EOF`).
    pub fn append_metrics(&self, text: String) -> String {
        let mut own = String::new();
        if prometheus_client::encoding::text::encode(&mut own, &self.inner.registry).is_err() {
            let _ = writeln!(own, "# control plane metrics encoding failed");
        }
        let mut text = match text.strip_suffix("# EOF\n") {
            Some(head) => head.to_string(),
            None => text,
        };
        text.push_str(&own);
        text
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, [Counts; 3]> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, counts: &[Counts; 3]) {
        for kind in ServiceKind::ALL {
            let c = counts[kind.index()];
            let value = i64::from(c.up > 0 && c.failing == 0);
            self.inner
                .connected
                .get_or_create(&ServiceLabels { service: kind })
                .set(value);
        }
    }

    fn transition(&self, kind: ServiceKind, from: StreamState, to: StreamState) {
        let mut counts = self.counts();
        let c = &mut counts[kind.index()];
        match from {
            StreamState::Up => c.up = c.up.saturating_sub(1),
            StreamState::Failing => c.failing = c.failing.saturating_sub(1),
            StreamState::Connecting | StreamState::Gone => {}
        }
        match to {
            StreamState::Up => c.up += 1,
            StreamState::Failing => c.failing += 1,
            StreamState::Connecting | StreamState::Gone => {}
        }
        self.publish(&counts);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    Connecting,
    Up,
    Failing,
    Gone,
}

/// One stream's contribution to its service's health; dropping it removes the stream.
#[derive(Debug)]
pub(crate) struct StreamHealth {
    plane: ControlPlane,
    kind: ServiceKind,
    state: StreamState,
}

impl StreamHealth {
    fn set(&mut self, to: StreamState) {
        if self.state != to {
            self.plane.transition(self.kind, self.state, to);
            self.state = to;
        }
    }

    /// The stream delivered a message.
    pub(crate) fn up(&mut self) {
        self.set(StreamState::Up);
    }

    /// The stream failed or ended. Returns `true` when this is news (it was up or connecting),
    /// so callers log the first failure loudly and the retries quietly.
    pub(crate) fn failed(&mut self) -> bool {
        let news = self.state != StreamState::Failing;
        self.set(StreamState::Failing);
        news
    }
}

impl Drop for StreamHealth {
    fn drop(&mut self) {
        self.set(StreamState::Gone);
    }
}
