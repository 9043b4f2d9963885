//! This proxy's own certificate: make (or load) a key, send a CSR through the [`Certifier`] seam,
//! hold the result in a hot-swappable [`CredentialStore`], and renew at ~70 % of the leaf's life
//! or at once when asked ([`RenewNow`]: the control plane rotated its issuer).
//!
//! The key never leaves the process, except into the proxy's own state directory
//! ([`crate::state_dir`], when configured): there the key and each new leaf are saved, so a
//! restarted proxy loads them and is ready at once with its still-valid leaf (no control plane
//! needed), and renews with the same key (its bootstrap token is bound to that key). A saved leaf
//! is used only if it is for this proxy's id and key, unexpired, and chains to the trust bundle.
//!
//! The store is published on a `watch` (`None` until the first certificate arrives) so listeners
//! built before the first certificate simply refuse work (503 `not_ready` / closed TLS) until it
//! is there. When a renewal fails the proxy keeps its current certificate, retries with backoff,
//! and says so in `identity_certify_total{result="error"}` and on `/ready` once the leaf has
//! expired.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onemesh_identity::{
    CredentialStore, Issued, SpiffeId, TrustBundle, WorkloadKey, renewal_delay, verify_peer,
};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::discover::Certifier;
use crate::drain::Drain;
use crate::metrics::{Metrics, ResultLabels};
use crate::state_dir::{StateDir, StateDirError};

/// The first retry delay after a failed certificate request (doubles up to [`MAX_BACKOFF`]).
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why the identity task could not start.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The private key or CSR could not be made.
    #[error("cannot create this proxy's key or csr: {0}")]
    Key(#[from] onemesh_identity::Error),
    /// The state directory's key could not be read or saved.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
}

/// Asks the identity task to renew now instead of at ~70 % of the leaf's life.
#[derive(Clone, Debug, Default)]
pub struct RenewNow(Arc<Notify>);

impl RenewNow {
    /// Renews as soon as the task is between renewals (a request while one is running is kept
    /// for after it).
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// The identity task's outputs: the credentials the data path reads, and the renew trigger.
pub struct Credentials {
    /// `None` until the first certificate.
    pub store: watch::Receiver<Option<CredentialStore>>,
    /// Renew now.
    pub renew: RenewNow,
}

/// What the identity task starts from.
struct Start {
    id: SpiffeId,
    key: WorkloadKey,
    bundle: TrustBundle,
    state: Option<StateDir>,
    /// A saved leaf that is still good: no first certify needed.
    saved: Option<Issued>,
}

/// Starts the identity task.
pub fn spawn(
    id: SpiffeId,
    bundle: TrustBundle,
    certifier: Arc<dyn Certifier>,
    metrics: Arc<Metrics>,
    drain: Drain,
    state: Option<StateDir>,
) -> Result<Credentials, CredentialsError> {
    let key = match state
        .as_ref()
        .map(StateDir::load_key)
        .transpose()?
        .flatten()
    {
        Some(key) => key,
        None => {
            let key = WorkloadKey::generate()?;
            // Saved before the first CSR: the token gets bound to this key, and a proxy killed
            // right after must come back with it.
            if let Some(state) = &state {
                state.save_key(&key)?;
            }
            key
        }
    };
    // A CSR can be made with this key (fail at start rather than in the task).
    key.csr_der(&id)?;
    let saved = state
        .as_ref()
        .and_then(StateDir::load_chain)
        .filter(|issued| usable(issued, &id, &bundle, SystemTime::now()));
    let (tx, rx) = watch::channel(None);
    let renew = RenewNow::default();
    let start = Start {
        id,
        key,
        bundle,
        state,
        saved,
    };
    let trigger = renew.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = run(start, certifier, metrics, tx, trigger) => {}
            _ = drain.signaled() => {}
        }
    });
    Ok(Credentials { store: rx, renew })
}

/// Whether a saved leaf can be served: for `id`, unexpired at `now`, chaining to `bundle`.
pub fn usable(issued: &Issued, id: &SpiffeId, bundle: &TrustBundle, now: SystemTime) -> bool {
    if &issued.id != id || issued.not_after <= now {
        return false;
    }
    match verify_peer(bundle, &issued.chain, now, id.trust_domain(), Some(id)) {
        Ok(_) => true,
        Err(e) => {
            warn!(%id, "the saved certificate is not trusted any more ({e}); asking for a new one");
            false
        }
    }
}

fn record(metrics: &Metrics, issued: &Issued) {
    let expiry = issued
        .not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics
        .identity_cert_expiration_timestamp_seconds
        .set(expiry);
    metrics
        .identity_certify_total
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
}

fn record_error(metrics: &Metrics) {
    metrics
        .identity_certify_total
        .get_or_create(&ResultLabels { result: "error" })
        .inc();
}

/// One certificate request: a CSR for `id` made with `key`, through the certifier.
async fn request(
    certifier: &dyn Certifier,
    key: &WorkloadKey,
    id: &SpiffeId,
) -> Result<Issued, String> {
    let csr = key.csr_der(id).map_err(|e| e.to_string())?;
    certifier.certify(csr).await.map_err(|e| e.to_string())
}

/// Asks for a certificate until one arrives that matches the key and id.
async fn first_certificate(
    start: &Start,
    certifier: &dyn Certifier,
    metrics: &Metrics,
) -> CredentialStore {
    let mut backoff = MIN_BACKOFF;
    loop {
        let store = request(certifier, &start.key, &start.id)
            .await
            .and_then(|issued| {
                CredentialStore::new(
                    start.id.clone(),
                    start.key.clone(),
                    issued,
                    start.bundle.clone(),
                )
                .map_err(|e| {
                    format!("the issued certificate does not match this proxy's key or id: {e}")
                })
            });
        match store {
            Ok(store) => {
                let issued = store.current();
                record(metrics, &issued);
                if let Some(state) = &start.state {
                    state.save_chain(&issued);
                }
                info!(id = %start.id, not_after = ?issued.not_after, "identity certificate issued");
                return store;
            }
            Err(error) => {
                record_error(metrics);
                warn!(%error, retry_in = ?backoff, "certificate request failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn run(
    start: Start,
    certifier: Arc<dyn Certifier>,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<CredentialStore>>,
    renew: RenewNow,
) {
    let restored = start.saved.clone().and_then(|issued| {
        CredentialStore::new(
            start.id.clone(),
            start.key.clone(),
            issued,
            start.bundle.clone(),
        )
        .inspect_err(|e| warn!("the saved certificate does not match the saved key: {e}"))
        .ok()
    });
    let store = match restored {
        Some(store) => {
            let issued = store.current();
            record(&metrics, &issued);
            info!(id = %start.id, not_after = ?issued.not_after, "serving with the saved identity certificate");
            store
        }
        None => first_certificate(&start, certifier.as_ref(), &metrics).await,
    };
    let _ = tx.send(Some(store.clone()));

    // Renewals, with the same key: at ~70 % of the leaf's life, or when asked.
    loop {
        let delay = renewal_delay(&store.current(), SystemTime::now());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = renew.0.notified() => info!("renewing the identity certificate now, as the control plane asked"),
        }
        let mut backoff = MIN_BACKOFF;
        loop {
            let outcome = request(certifier.as_ref(), store.key(), &start.id).await;
            match outcome.and_then(|issued| {
                store
                    .update(issued.clone())
                    .map(|()| issued)
                    .map_err(|e| e.to_string())
            }) {
                Ok(issued) => {
                    record(&metrics, &issued);
                    if let Some(state) = &start.state {
                        state.save_chain(&issued);
                    }
                    info!(not_after = ?issued.not_after, "identity certificate renewed");
                    tx.send_modify(|_| {});
                    break;
                }
                Err(error) => {
                    record_error(&metrics);
                    warn!(%error, retry_in = ?backoff, "certificate renewal failed; keeping the current one");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
