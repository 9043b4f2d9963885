//! `Identity.WatchTrust`: the trust bundle and the issuer the mesh is in, live.
//!
//! Once the proxy holds a certificate it opens one stream (reopened with backoff, like every
//! control-plane stream) and reports what it holds: the fingerprint of the last update applied
//! and its current chain. For each update it:
//!
//! 1. swaps the bundle into its [`CredentialStore`] (every verifier — inbound, outbound, the
//!    control-plane connections — uses it from the next handshake) and saves it in the state
//!    directory, so a restart trusts what the mesh trusts now;
//! 2. when its leaf was signed by another issuer than the one the update names, asks the identity
//!    task to renew after a random delay under `renew_within_ms` (a rotation's renewals are spread
//!    out rather than all at once);
//! 3. reports again; and again after every renewal, so the control plane knows when every proxy
//!    holds a leaf from the new issuer (an anchor rotation waits for that before the old anchor
//!    leaves the bundle).
//!
//! What it accepts: updates come only over a TLS connection that proved the control plane's
//! SPIFFE id; a bundle that does not parse (or is empty) is refused and logged, and the proxy keeps
//! the one it had. The delay is capped at [`MAX_RENEW_DELAY`] whatever the update asks.

use std::time::Duration;

use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_api::identity::{TrustReport, TrustUpdate};
use onemesh_identity::{CertificateDer, CredentialStore, TrustBundle};
use tokio::sync::{mpsc, watch};
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::Backoff;
use crate::credentials::RenewNow;
use crate::state_dir::StateDir;

/// The longest delay before a renewal asked by an update.
pub const MAX_RENEW_DELAY: Duration = Duration::from_secs(60);
/// How long to wait before asking again when the control plane does not serve trust updates.
const UNIMPLEMENTED_RETRY: Duration = Duration::from_secs(60);

/// The trust stream, ready to start once the proxy's credentials exist.
#[derive(Debug)]
pub struct TrustWatch {
    client: IdentityClient<Channel>,
    state: Option<StateDir>,
}

impl TrustWatch {
    /// A stream over `client`, saving bundles in `state`.
    pub fn new(client: IdentityClient<Channel>, state: Option<StateDir>) -> Self {
        TrustWatch { client, state }
    }

    /// Follows the trust updates for the life of the process.
    pub fn spawn(self, credentials: watch::Receiver<Option<CredentialStore>>, renew: RenewNow) {
        tokio::spawn(run(self, credentials, renew));
    }
}

/// What this proxy holds, as a report.
fn report(fingerprint: &[u8], store: &CredentialStore) -> TrustReport {
    TrustReport {
        fingerprint: fingerprint.to_vec(),
        chain: store.current().chain.iter().map(|c| c.to_vec()).collect(),
    }
}

/// Whether the leaf in `store` was signed by `issuer` (DER). An empty `issuer` says nothing.
pub fn signed_by(store: &CredentialStore, issuer: &[u8]) -> bool {
    issuer.is_empty()
        || store
            .current()
            .chain
            .get(1)
            .is_some_and(|c| c.as_ref() == issuer)
}

/// Applies one update to `store` (and the state directory). Returns the bundle applied, or why
/// the update was refused.
pub fn apply(
    update: &TrustUpdate,
    store: &CredentialStore,
    state: Option<&StateDir>,
) -> Result<TrustBundle, onemesh_identity::Error> {
    let roots = update
        .trust_anchors
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let bundle = TrustBundle::from_roots(roots)?;
    if store.bundle() != bundle {
        store.update_bundle(bundle.clone());
        info!(
            anchors = bundle.roots().len(),
            "trust bundle updated by the control plane"
        );
    }
    if let Some(state) = state {
        state.save_bundle(&bundle);
    }
    Ok(bundle)
}

async fn run(
    watch: TrustWatch,
    mut credentials: watch::Receiver<Option<CredentialStore>>,
    renew: RenewNow,
) {
    let Ok(store) = credentials
        .wait_for(Option::is_some)
        .await
        .map(|s| s.clone())
    else {
        return;
    };
    let Some(store) = store else { return };
    let mut backoff = Backoff::new();
    let mut applied: Vec<u8> = Vec::new();
    // The issuer a renewal was last asked for, so one rotation asks once.
    let mut renewing_for: Vec<u8> = Vec::new();
    loop {
        let (reports, rx) = mpsc::channel::<TrustReport>(4);
        let _ = reports.try_send(report(&applied, &store));
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut client = watch.client.clone();
        let why = match client.watch_trust(outgoing).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(update)) => {
                                backoff.reset();
                                match apply(&update, &store, watch.state.as_ref()) {
                                    Ok(_) => applied = update.fingerprint.clone(),
                                    Err(e) => {
                                        warn!("refused a trust update from the control plane: {e}");
                                        continue;
                                    }
                                }
                                if !signed_by(&store, &update.issuer) && renewing_for != update.issuer {
                                    renewing_for = update.issuer.clone();
                                    let cap = Duration::from_millis(u64::from(update.renew_within_ms))
                                        .min(MAX_RENEW_DELAY);
                                    let delay = cap.mul_f64(fastrand::f64());
                                    info!(in_ = ?delay, "the control plane has a new issuer: renewing");
                                    let renew = renew.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(delay).await;
                                        renew.request();
                                    });
                                }
                                let _ = reports.try_send(report(&applied, &store));
                            }
                            Ok(None) => break "the control plane ended the stream".to_string(),
                            Err(status) => break status.to_string(),
                        },
                        changed = credentials.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // A renewal: say which leaf this proxy holds now.
                            let _ = reports.try_send(report(&applied, &store));
                        }
                    }
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {
                debug!("the control plane serves no trust updates; asking again later");
                tokio::time::sleep(UNIMPLEMENTED_RETRY).await;
                continue;
            }
            Err(status) => status.to_string(),
        };
        let delay = backoff.next_delay();
        debug!(retry_in = ?delay, "trust stream down: {why}");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
