//! The control plane's certificate authority, its rotation, and its own mesh identity.
//!
//! The CA lives in the state directory ([`files`] lists every file and how it is written):
//! `trust-anchors.pem` (the bundle every proxy trusts; `onemesh up` hands this file to the
//! proxies it starts), `issuer.crt` / `issuer.key` (the issuer signing every leaf),
//! `trust-anchor.crt` / `trust-anchor.key` (the anchor that signed the issuer, kept so an issuer
//! can be re-made), and `rotation.json` while a rotation is under way. When none of the CA files
//! exists a new anchor (10 years) and issuer (1 year) are made; when only some exist, that is an
//! error rather than a silent replacement. A CA the user brought (no `trust-anchor.key`) works,
//! but its issuer cannot be rotated: that is logged and shown by `Admin.Trust`.
//!
//! [`state::CaState`] holds the CA in memory and publishes it on a watch channel; Certify signs
//! with the current issuer (never past the issuer's own expiry), WatchTrust streams it to the
//! proxies, and the control plane's own certificate is re-issued when the issuer changes.
//! [`rotation::Rotator`] rotates:
//!
//! - the issuer, by itself at 70 % of its life ([`CaSettings::issuer_rotate_at`]) or when the
//!   operator asks: a new issuer under the same anchor signs from then on, every connected proxy
//!   renews (old leaves still chain to the same anchor meanwhile);
//! - the anchor, when the operator asks: the new anchor joins the bundle, then a new issuer under
//!   it signs and every proxy renews, then the old anchor leaves the bundle. Each step waits until
//!   every connected proxy reports it is done, or for its deadline (5 minutes by default), and
//!   names the stragglers. Nothing leaves the bundle before the proxies hold leaves of the new
//!   issuer.
//!
//! The control plane serves as `spiffe://<td>/ns/onemesh/sa/control`, with a leaf it signs for
//! itself at start and renews at 70 % of its life (and at once when the issuer changes). It also
//! writes the operator's credentials (`operator.crt`, `operator.key`: id
//! `spiffe://<td>/ns/onemesh/sa/operator`) for `onemesh` to call the Admin service, renewed the
//! same way. Its TLS is 1.3 only, `ring` provider, and does not require a client certificate: a
//! proxy calling Certify for the first time has none. [`expiry`] tells when the anchors and the
//! issuer expire (for `onemesh check`).

pub mod cert;
pub mod expiry;
pub mod files;
pub mod rotation;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use onemesh_identity::{CredentialStore, Issued, SpiffeId, WorkloadKey, renewal_delay};
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use files::Files;
pub use files::{
    ISSUER_CERT_FILE, ISSUER_KEY_FILE, OPERATOR_CERT_FILE, OPERATOR_KEY_FILE, ROTATION_FILE,
    TRUST_ANCHOR_CERT_FILE, TRUST_ANCHOR_KEY_FILE, TRUST_ANCHORS_FILE,
};
pub use state::{CaSnapshot, CaState};

/// Lifetime of a trust anchor the control plane makes.
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an issuer the control plane makes.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The issuer is rotated by itself at this fraction of its life.
pub const ISSUER_ROTATE_AT: f64 = 0.7;
/// How long a rotation step waits for the connected proxies by default.
pub const ROTATION_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// A proxy renews within this after the issuer changed (`TrustUpdate.renew_within_ms`).
pub const RENEW_WITHIN: Duration = Duration::from_secs(5);
/// After a restart, a rotation step waits at least this long for the proxies to reconnect
/// (three times the proxy's longest backoff).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(15);

/// Namespace and service account of the control plane's own identity.
pub const CONTROL_NAMESPACE: &str = "onemesh";
pub const CONTROL_SERVICE_ACCOUNT: &str = "control";
/// Service account of the operator's identity (namespace [`CONTROL_NAMESPACE`]).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "operator";

/// Lifetimes and rotation timing of the CA.
#[derive(Clone, Debug, PartialEq)]
pub struct CaSettings {
    /// Lifetime of an anchor made here (default 10 years).
    pub anchor_lifetime: Duration,
    /// Lifetime of an issuer made here (default 1 year; never past its anchor's expiry).
    pub issuer_lifetime: Duration,
    /// Fraction of the issuer's life at which it is rotated by itself (default 0.7).
    pub issuer_rotate_at: f64,
    /// Per-step wait for the connected proxies when the request names none (default 5 min).
    pub rotation_deadline: Duration,
    /// Sent to proxies: renew within this after the issuer changed (default 5 s).
    pub renew_within: Duration,
    /// A rotation resumed after a restart waits at least this for proxies to reconnect (15 s).
    pub reconnect_grace: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        CaSettings {
            anchor_lifetime: ANCHOR_LIFETIME,
            issuer_lifetime: ISSUER_LIFETIME,
            issuer_rotate_at: ISSUER_ROTATE_AT,
            rotation_deadline: ROTATION_DEADLINE,
            renew_within: RENEW_WITHIN,
            reconnect_grace: RECONNECT_GRACE,
        }
    }
}

/// Why the control plane's CA or identity could not be set up, or a rotation step failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {}: {source}; check the state directory and its permissions", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state directory has {present} but not {missing}: restore the missing file or remove them all to make a new CA"
    )]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error("{} is not usable: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Box<onemesh_identity::Error>,
    },
    #[error("the {what} certificate is not usable: {reason}")]
    BadCa { what: &'static str, reason: String },
    #[error(
        "the issuer is for trust domain {found:?} but {wanted:?} was asked: pass --trust-domain {found}"
    )]
    TrustDomain { found: String, wanted: String },
    #[error("making certificates failed: {0}")]
    Identity(#[source] Box<onemesh_identity::Error>),
    #[error("the control plane's id is invalid: {0}")]
    Id(#[from] onemesh_identity::IdError),
    #[error(
        "there is no trust anchor key ({TRUST_ANCHOR_KEY_FILE}) in the state directory (a CA brought by the user): rotate the issuer with that CA's tools and replace {ISSUER_CERT_FILE} and {ISSUER_KEY_FILE}"
    )]
    NoAnchorKey,
    #[error(
        "the anchor in {TRUST_ANCHOR_CERT_FILE} is not in {TRUST_ANCHORS_FILE}: an issuer made under it would not be trusted; restore the matching files"
    )]
    AnchorNotTrusted,
    #[error("a rotation is under way (step: {0}): wait for it to end")]
    RotationUnderWay(&'static str),
    #[error(
        "{ROTATION_FILE} is not usable ({reason}): restore it, or remove it to abandon the rotation"
    )]
    Journal { reason: String },
    #[error("the issuer has expired: rotate it (`onemesh identity rotate-issuer`)")]
    IssuerExpired,
}

impl From<onemesh_identity::Error> for PkiError {
    fn from(e: onemesh_identity::Error) -> Self {
        PkiError::Identity(Box::new(e))
    }
}

/// The control plane's own SPIFFE id in `trust_domain`.
pub fn control_id(trust_domain: &str) -> Result<SpiffeId, PkiError> {
    Ok(SpiffeId::new(
        trust_domain,
        CONTROL_NAMESPACE,
        CONTROL_SERVICE_ACCOUNT,
    )?)
}

/// The operator's SPIFFE id in `trust_domain`: the only caller the Admin service answers.
pub fn operator_id(trust_domain: &str) -> Result<SpiffeId, PkiError> {
    Ok(SpiffeId::new(
        trust_domain,
        CONTROL_NAMESPACE,
        OPERATOR_SERVICE_ACCOUNT,
    )?)
}

/// Whether `id` is one the identity service never certifies for a proxy: the control plane's
/// (proxies trust it for endpoints and policy) and the operator's (it may rotate the CA).
pub fn is_reserved(id: &SpiffeId) -> bool {
    id.namespace() == CONTROL_NAMESPACE
        && (id.service_account() == CONTROL_SERVICE_ACCOUNT
            || id.service_account() == OPERATOR_SERVICE_ACCOUNT)
}

/// Signs a leaf for `id` and `key` with the current issuer, never past the issuer's expiry.
fn issue_own(
    ca: &CaSnapshot,
    key: &WorkloadKey,
    id: &SpiffeId,
    lifetime: Duration,
) -> Result<Issued, PkiError> {
    let lifetime = ca
        .leaf_lifetime(lifetime, SystemTime::now())
        .ok_or(PkiError::IssuerExpired)?;
    let csr = key.csr_der(id)?;
    Ok(ca.issuer.sign_csr(&csr, lifetime, |asked| asked == id)?)
}

/// Makes the control plane's key and leaf, signed by the current issuer.
pub fn own_credentials(ca: &CaSnapshot, lifetime: Duration) -> Result<CredentialStore, PkiError> {
    let id = control_id(ca.issuer.trust_domain())?;
    let key = WorkloadKey::generate()?;
    let issued = issue_own(ca, &key, &id, lifetime)?;
    Ok(CredentialStore::new(id, key, issued, ca.bundle.clone())?)
}

/// The operator's credentials in the state directory: a key made once per start (written first,
/// mode 0600) and a leaf from the current issuer, rewritten whenever it changes.
pub struct OperatorCredentials {
    files: Files,
    id: SpiffeId,
    key: WorkloadKey,
}

impl OperatorCredentials {
    /// Makes the operator's key and writes `operator.key`.
    pub fn create(state_dir: &Path, trust_domain: &str) -> Result<Self, PkiError> {
        let files = Files::new(state_dir);
        let key = WorkloadKey::generate()?;
        files.write(OPERATOR_KEY_FILE, &key.to_pem(), true)?;
        Ok(OperatorCredentials {
            files,
            id: operator_id(trust_domain)?,
            key,
        })
    }

    /// Signs a leaf with `ca`'s issuer and writes `operator.crt` (the chain).
    pub fn write(&self, ca: &CaSnapshot, lifetime: Duration) -> Result<(), PkiError> {
        let issued = issue_own(ca, &self.key, &self.id, lifetime)?;
        self.files
            .write(OPERATOR_CERT_FILE, &issued.chain_pem(), false)
    }
}

/// Keeps the control plane's own credentials and the operator's current: renews both at 70 %
/// (±5 %) of the leaf's life, at once when the issuer changes, and applies every bundle change
/// to the server's verifier, until aborted.
pub fn spawn_renewal(
    mut ca: watch::Receiver<Arc<CaSnapshot>>,
    credentials: CredentialStore,
    operator: Arc<OperatorCredentials>,
    lifetime: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delay = renewal_delay(&credentials.current(), SystemTime::now());
            tokio::select! {
                _ = tokio::time::sleep(delay.max(Duration::from_millis(100))) => {}
                changed = ca.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = ca.borrow_and_update().clone();
                    if credentials.bundle() != snapshot.bundle {
                        credentials.update_bundle(snapshot.bundle.clone());
                    }
                    let signed_by = credentials.current().chain.get(1).map(|c| cert::sha256(c));
                    if signed_by == Some(snapshot.issuer_sha256()) {
                        continue;
                    }
                }
            }
            let snapshot = ca.borrow().clone();
            let renewed = issue_own(&snapshot, credentials.key(), credentials.id(), lifetime)
                .and_then(|issued| Ok(credentials.update(issued)?));
            match renewed {
                Ok(()) => {
                    tracing::info!(id = %credentials.id(), "renewed the control plane's certificate")
                }
                Err(e) => {
                    tracing::error!("renewing the control plane's certificate failed: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
            let operator = operator.clone();
            let written =
                tokio::task::spawn_blocking(move || operator.write(&snapshot, lifetime)).await;
            if let Ok(Err(e)) = written {
                tracing::error!("writing the operator's certificate failed: {e}");
            }
        }
    })
}

/// TLS 1.3 server configuration (ring) presenting `credentials` (renewals are picked up by new
/// handshakes), offering HTTP/2. A client certificate is verified when presented but not required.
pub fn server_config(credentials: &CredentialStore) -> Arc<ServerConfig> {
    credentials.server_config_optional_client_auth(&[b"h2"])
}

#[cfg(test)]
mod tests;
