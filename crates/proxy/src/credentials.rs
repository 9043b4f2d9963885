//! This proxy's own certificate: make a key, send a CSR through the [`Certifier`] seam, hold the
//! result in a hot-swappable [`CredentialStore`], and renew at ~70 % of the leaf's life.
//!
//! The key is made once, here, and never leaves the process; renewals reuse it. The store is
//! published on a `watch` (`None` until the first certificate arrives) so listeners built before
//! the first certificate simply refuse work (503 `not_ready` / closed TLS) until it is there. When
//! a renewal fails the proxy keeps its current certificate, retries with backoff, and says so in
//! `identity_certify_total{result="error"}` and on `/ready` once the leaf has expired.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onemesh_identity::{
    CredentialStore, Issued, SpiffeId, TrustBundle, WorkloadKey, renewal_delay,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::discover::Certifier;
use crate::drain::Drain;
use crate::metrics::{Metrics, ResultLabels};

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
}

/// Starts the identity task: returns the watch the data path reads.
pub fn spawn(
    id: SpiffeId,
    bundle: TrustBundle,
    certifier: Arc<dyn Certifier>,
    metrics: Arc<Metrics>,
    drain: Drain,
) -> Result<watch::Receiver<Option<CredentialStore>>, CredentialsError> {
    let key = WorkloadKey::generate()?;
    let first_csr = key.csr_der(&id)?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        tokio::select! {
            _ = run(id, key, first_csr, bundle, certifier, metrics, tx) => {}
            _ = drain.signaled() => {}
        }
    });
    Ok(rx)
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

async fn run(
    id: SpiffeId,
    key: WorkloadKey,
    first_csr: Vec<u8>,
    bundle: TrustBundle,
    certifier: Arc<dyn Certifier>,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<CredentialStore>>,
) {
    // First certificate: retry until it arrives.
    let mut backoff = MIN_BACKOFF;
    let mut key = Some(key);
    let store = loop {
        match certifier.certify(first_csr.clone()).await {
            Ok(issued) => {
                let Some(k) = key.take() else { return };
                match CredentialStore::new(id.clone(), k, issued.clone(), bundle.clone()) {
                    Ok(store) => {
                        record(&metrics, &issued);
                        info!(id = %id, not_after = ?issued.not_after, "identity certificate issued");
                        break store;
                    }
                    Err(error) => {
                        // The key is gone with the failed store; this cannot recover.
                        record_error(&metrics);
                        warn!(%error, "the issued certificate does not match this proxy's key or id");
                        return;
                    }
                }
            }
            Err(error) => {
                record_error(&metrics);
                warn!(%error, retry_in = ?backoff, "certificate request failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let _ = tx.send(Some(store.clone()));

    // Renewals, with the same key.
    loop {
        let delay = renewal_delay(&store.current(), SystemTime::now());
        tokio::time::sleep(delay).await;
        let mut backoff = MIN_BACKOFF;
        loop {
            let outcome = match store.key().csr_der(&id) {
                Ok(csr) => certifier.certify(csr).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome.and_then(|issued| {
                store
                    .update(issued.clone())
                    .map(|()| issued)
                    .map_err(|e| e.to_string())
            }) {
                Ok(issued) => {
                    record(&metrics, &issued);
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
