//! The control plane's certificate authority and its own mesh identity.
//!
//! The state directory holds the trust anchors (`trust-anchors.pem`, always a bundle) and the
//! issuer that signs every leaf (`issuer.crt`, `issuer.key`). When none of them exists, a new
//! trust anchor and issuer are made there (and the anchor's key kept in `trust-anchor.key`, mode
//! 0600, so an issuer can later be re-made); `onemesh up` relies on this. When only some exist,
//! that is an error rather than a silent replacement.
//!
//! The control plane serves as `spiffe://<td>/ns/onemesh/sa/control`, with a leaf it signs for
//! itself at start and renews at 70 % of its life. Its TLS is 1.3 only, `ring` provider, and does
//! not ask for a client certificate: a proxy calling Certify for the first time has none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use onemesh_identity::{
    CredentialStore, Issued, Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey, renewal_delay,
};
use rustls::ServerConfig;
use tokio::task::JoinHandle;

/// Trust anchors file (PEM bundle) in the state directory.
pub const TRUST_ANCHORS_FILE: &str = "trust-anchors.pem";
/// The trust anchor's private key, written only when the anchor is made here.
pub const TRUST_ANCHOR_KEY_FILE: &str = "trust-anchor.key";
/// Issuer certificate chain (PEM) in the state directory.
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
/// Issuer private key (PKCS#8 PEM) in the state directory.
pub const ISSUER_KEY_FILE: &str = "issuer.key";

/// Lifetime of a trust anchor made by [`load_or_create`].
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an issuer made by [`load_or_create`].
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Namespace and service account of the control plane's own identity.
pub const CONTROL_NAMESPACE: &str = "onemesh";
pub const CONTROL_SERVICE_ACCOUNT: &str = "control";

/// Why the control plane's CA or identity could not be set up.
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
    #[error(
        "the issuer is for trust domain {found:?} but {wanted:?} was asked: pass --trust-domain {found}"
    )]
    TrustDomain { found: String, wanted: String },
    #[error("making certificates failed: {0}")]
    Identity(#[source] Box<onemesh_identity::Error>),
    #[error("the control plane's id is invalid: {0}")]
    Id(#[from] onemesh_identity::IdError),
}

impl From<onemesh_identity::Error> for PkiError {
    fn from(e: onemesh_identity::Error) -> Self {
        PkiError::Identity(Box::new(e))
    }
}

/// The issuer and the trust bundle proxies must trust.
pub struct Ca {
    pub issuer: Issuer,
    pub bundle: TrustBundle,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A private key is created with mode 0600 rather than chmod-ed after it is written, so it is
    // never readable by others, not even for a moment.
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    if private {
        // `mode` applies only to a file this call creates; tighten one that was already there.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)
}

/// Loads the CA from `state_dir`, or makes a new one for `trust_domain` when none is there.
pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Ca, PkiError> {
    let anchors = state_dir.join(TRUST_ANCHORS_FILE);
    let cert = state_dir.join(ISSUER_CERT_FILE);
    let key = state_dir.join(ISSUER_KEY_FILE);
    let exists = [anchors.exists(), cert.exists(), key.exists()];
    let ca = match exists {
        [false, false, false] => {
            std::fs::create_dir_all(state_dir).map_err(|source| PkiError::Io {
                action: "create",
                path: state_dir.to_path_buf(),
                source,
            })?;
            let anchor = TrustAnchor::generate(trust_domain, ANCHOR_LIFETIME)?;
            let issuer = anchor.issue_issuer(ISSUER_LIFETIME)?;
            write(
                &state_dir.join(TRUST_ANCHOR_KEY_FILE),
                &anchor.key_pem(),
                true,
            )?;
            write(&key, &issuer.key_pem(), true)?;
            write(&cert, &issuer.chain_pem(), false)?;
            write(&anchors, &anchor.bundle().to_pem(), false)?;
            tracing::info!(dir = %state_dir.display(), trust_domain, "made a new trust anchor and issuer");
            Ca {
                issuer,
                bundle: anchor.bundle(),
            }
        }
        [true, true, true] => {
            let bundle =
                TrustBundle::from_pem(&read(&anchors)?).map_err(|source| PkiError::Load {
                    path: anchors.clone(),
                    source: Box::new(source),
                })?;
            let issuer =
                Issuer::from_pem(&read(&cert)?, &read(&key)?).map_err(|source| PkiError::Load {
                    path: cert,
                    source: Box::new(source),
                })?;
            Ca { issuer, bundle }
        }
        _ => {
            let names = [TRUST_ANCHORS_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE];
            let present = names[exists.iter().position(|e| *e).unwrap_or(0)];
            let missing = names[exists.iter().position(|e| !*e).unwrap_or(0)];
            return Err(PkiError::Incomplete { present, missing });
        }
    };
    if ca.issuer.trust_domain() != trust_domain {
        return Err(PkiError::TrustDomain {
            found: ca.issuer.trust_domain().to_string(),
            wanted: trust_domain.to_string(),
        });
    }
    Ok(ca)
}

/// The control plane's own SPIFFE id in `trust_domain`.
pub fn control_id(trust_domain: &str) -> Result<SpiffeId, PkiError> {
    Ok(SpiffeId::new(
        trust_domain,
        CONTROL_NAMESPACE,
        CONTROL_SERVICE_ACCOUNT,
    )?)
}

fn issue_own(
    issuer: &Issuer,
    key: &WorkloadKey,
    id: &SpiffeId,
    lifetime: Duration,
) -> Result<Issued, PkiError> {
    let csr = key.csr_der(id)?;
    Ok(issuer.sign_csr(&csr, lifetime, |asked| asked == id)?)
}

/// Makes the control plane's key and leaf, signed by `issuer`.
pub fn own_credentials(
    issuer: &Issuer,
    bundle: &TrustBundle,
    lifetime: Duration,
) -> Result<CredentialStore, PkiError> {
    let id = control_id(issuer.trust_domain())?;
    let key = WorkloadKey::generate()?;
    let issued = issue_own(issuer, &key, &id, lifetime)?;
    Ok(CredentialStore::new(id, key, issued, bundle.clone())?)
}

/// Renews the control plane's leaf at 70 % (±5 %) of its life, with the same key, until aborted.
pub fn spawn_renewal(
    issuer: Arc<Issuer>,
    credentials: CredentialStore,
    lifetime: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delay = renewal_delay(&credentials.current(), SystemTime::now());
            tokio::time::sleep(delay.max(Duration::from_millis(100))).await;
            let renewed = issue_own(&issuer, credentials.key(), credentials.id(), lifetime)
                .and_then(|issued| Ok(credentials.update(issued)?));
            match renewed {
                Ok(()) => {
                    tracing::info!(id = %credentials.id(), "renewed the control plane's certificate")
                }
                Err(e) => {
                    tracing::error!("renewing the control plane's certificate failed: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
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
