//! Signing checkpoints with the control plane's leaf key, and checking them.
//!
//! Signing uses rustls' `ring` provider (`any_supported_type` → `choose_scheme` → `sign`), so no
//! other crypto crate is needed. Checking a checkpoint: its chain must build to a trust anchor
//! of the bundle at the checkpoint's own time (leaves live a day: checking at "now" would reject
//! every old checkpoint), the leaf's SPIFFE id must be the checkpoint's `signer` and the expected
//! signer (the control plane's id: any other mesh workload's leaf, e.g. a compromised proxy's,
//! cannot seal the log), and the signature over [`Checkpoint::message`] must verify with the
//! leaf's public key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use onemesh_identity::{CertificateDer, SpiffeId, TrustBundle, VerifyError, verify_peer};
use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::entry::{Checkpoint, from_hex_vec, to_hex};

/// The namespace and service account of the control plane's own identity: the only signer
/// verification accepts by default.
pub const CONTROL_NAMESPACE: &str = "onemesh";
pub const CONTROL_SERVICE_ACCOUNT: &str = "control";

/// The schemes a signer may pick, best first.
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Why a sealer could not be made or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the sealing key is not a usable pem private key: {0}")]
    Key(String),
    #[error("the sealing certificate chain is empty: pass the control plane's leaf chain")]
    NoChain,
    #[error("the sealing key supports none of the signature schemes {SCHEMES:?}")]
    NoScheme,
    #[error("signing the checkpoint failed: {0}")]
    Sign(rustls::Error),
}

/// Who signs checkpoints: an id, its certificate chain and its key.
#[derive(Clone)]
pub struct Sealer {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// `chain_pem` the certificate chain, leaf first (what `Issued::chain_pem` gives); `key_pem`
    /// the leaf's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub fn new(id: SpiffeId, chain_pem: &str, key_pem: &str) -> Result<Self, SealError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SealError::Key(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(SealError::NoChain);
        }
        let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| SealError::Key(e.to_string()))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| SealError::Key(e.to_string()))?;
        Ok(Self {
            id,
            chain,
            chain_pem: chain_pem.to_string(),
            key,
        })
    }

    /// The sealer of a workload's current credentials (the control plane's own).
    pub fn from_credentials(store: &onemesh_identity::CredentialStore) -> Result<Self, SealError> {
        let issued = store.current();
        Self::new(
            store.id().clone(),
            &issued.chain_pem(),
            &store.key().to_pem(),
        )
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The leaf it signs with (to notice a renewal).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// A checkpoint numbered `seq` sealing entry `sealed_seq` whose hash is `seals`.
    pub fn checkpoint(
        &self,
        seq: u64,
        sealed_seq: u64,
        seals: &[u8; 32],
        time_ms: i64,
    ) -> Result<Checkpoint, SealError> {
        let signer = self
            .key
            .choose_scheme(&SCHEMES)
            .ok_or(SealError::NoScheme)?;
        let mut cp = Checkpoint {
            time_ms,
            sealed_seq,
            seals: to_hex(seals),
            signer: self.id.to_string(),
            chain: self.chain_pem.clone(),
            scheme: format!("{:?}", signer.scheme()),
            signature: String::new(),
        };
        let signature = signer.sign(&cp.message(seq)).map_err(SealError::Sign)?;
        cp.signature = to_hex(&signature);
        Ok(cp)
    }
}

/// Why a checkpoint is not to be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("it carries no signature")]
    NoSignature,
    #[error("its certificate chain is not readable pem: {0}")]
    BadChain(String),
    #[error("its signer {0:?} is not a spiffe id")]
    BadSigner(String),
    #[error("its certificate is not trusted: {0}")]
    Untrusted(VerifyError),
    #[error("its certificate is {found}, but it names {claimed} as its signer")]
    SignerMismatch { claimed: String, found: SpiffeId },
    #[error("it is signed by {found}, not by the control plane ({expected})")]
    WrongSigner { expected: SpiffeId, found: SpiffeId },
    #[error("its signature scheme {0:?} is not supported")]
    UnknownScheme(String),
    #[error("its signature does not verify with its certificate's key: it was forged or altered")]
    BadSignature,
}

/// What a checkpoint is checked against.
#[derive(Clone, Debug)]
pub struct Trust {
    pub bundle: TrustBundle,
    /// The only id accepted as signer; `None`: the control plane's id in the chain's trust domain.
    pub signer: Option<SpiffeId>,
}

impl Trust {
    pub fn new(bundle: TrustBundle) -> Self {
        Self {
            bundle,
            signer: None,
        }
    }
}

/// Chains already found valid, with the span of time in which every certificate they carry is
/// valid: a checkpoint of that chain signed within it needs no chain verification of its own
/// (one every few seconds, for the day a leaf lives). Signatures are always checked.
#[derive(Debug, Default)]
pub struct ChainCache {
    verified: HashMap<String, (SpiffeId, i64, i64)>,
}

/// The time span (ms) in which every certificate of `chain` is valid; `None` when one does not
/// parse.
fn validity(chain: &[CertificateDer<'_>]) -> Option<(i64, i64)> {
    let mut span = (i64::MIN, i64::MAX);
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        span.0 = span.0.max(v.not_before.timestamp().saturating_mul(1000));
        span.1 = span.1.min(v.not_after.timestamp().saturating_mul(1000));
    }
    Some(span)
}

/// Checks checkpoint `cp`, numbered `seq`; returns its signer.
pub fn check(cp: &Checkpoint, seq: u64, trust: &Trust) -> Result<SpiffeId, CheckpointError> {
    check_cached(cp, seq, trust, &mut ChainCache::default())
}

/// [`check`], reusing what `cache` knows of the checkpoint's chain.
pub fn check_cached(
    cp: &Checkpoint,
    seq: u64,
    trust: &Trust,
    cache: &mut ChainCache,
) -> Result<SpiffeId, CheckpointError> {
    if cp.signature.is_empty() {
        return Err(CheckpointError::NoSignature);
    }
    let claimed: SpiffeId = cp
        .signer
        .parse()
        .map_err(|_| CheckpointError::BadSigner(cp.signer.clone()))?;
    let chain = CertificateDer::pem_slice_iter(cp.chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CheckpointError::BadChain(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CheckpointError::BadChain("no certificate".to_string()));
    };
    let known = cache
        .verified
        .get(&cp.chain)
        .filter(|(_, from, to)| (*from..=*to).contains(&cp.time_ms))
        .map(|(id, _, _)| id.clone());
    let found = match known {
        Some(id) => id,
        None => {
            let at = SystemTime::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(cp.time_ms).unwrap_or(0));
            let id = verify_peer(&trust.bundle, &chain, at, claimed.trust_domain(), None)
                .map_err(CheckpointError::Untrusted)?;
            if let Some((from, to)) = validity(&chain) {
                cache
                    .verified
                    .insert(cp.chain.clone(), (id.clone(), from, to));
            }
            id
        }
    };
    if found != claimed {
        return Err(CheckpointError::SignerMismatch {
            claimed: cp.signer.clone(),
            found,
        });
    }
    let expected = match &trust.signer {
        Some(id) => id.clone(),
        None => SpiffeId::new(
            found.trust_domain(),
            CONTROL_NAMESPACE,
            CONTROL_SERVICE_ACCOUNT,
        )
        .map_err(|_| CheckpointError::BadSigner(cp.signer.clone()))?,
    };
    if found != expected {
        return Err(CheckpointError::WrongSigner { expected, found });
    }
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let Some(alg) = algs
        .mapping
        .iter()
        .find(|(scheme, _)| format!("{scheme:?}") == cp.scheme)
        .and_then(|(_, algs)| algs.first())
    else {
        return Err(CheckpointError::UnknownScheme(cp.scheme.clone()));
    };
    let signature = from_hex_vec(cp.signature.as_bytes()).ok_or(CheckpointError::BadSignature)?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CheckpointError::BadChain(e.to_string()))?;
    cert.verify_signature(*alg, &cp.message(seq), &signature)
        .map_err(|_| CheckpointError::BadSignature)?;
    Ok(found)
}
