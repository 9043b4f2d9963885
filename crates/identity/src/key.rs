//! The workload's private key (ECDSA P-256) and the CSR it sends to the issuer.
//!
//! The key is made inside the workload's proxy and never leaves it; only the CSR (public key and
//! requested SPIFFE id) is sent. PEM export exists for tests and tools, not for shipping keys.

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, SpiffeId};

/// A workload's private key (ECDSA P-256). Cloning is cheap and shares the same key (an `Arc`
/// inside), e.g. to keep it across a failed [`crate::CredentialStore::new`].
#[derive(Clone)]
pub struct WorkloadKey {
    key: Arc<KeyPair>,
    /// The same key loaded into rustls, made once.
    signer: Arc<dyn rustls::sign::SigningKey>,
}

impl WorkloadKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, Error> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::KeyGeneration)?;
        Self::from_key_pair(key)
    }

    /// Reads a PKCS#8 PEM private key (as written by [`WorkloadKey::to_pem`]).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(pem).map_err(|source| Error::BadKey {
            what: "workload",
            source,
        })?;
        Self::from_key_pair(key)
    }

    fn from_key_pair(key: KeyPair) -> Result<Self, Error> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| Error::UnusableKey {
                what: "workload",
                reason: e.to_string(),
            })?;
        Ok(Self {
            key: Arc::new(key),
            signer,
        })
    }

    /// The key as PKCS#8 PEM (for tests and tools; a proxy never writes it anywhere).
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A DER PKCS#10 certificate signing request for `id`: its only extension is the URI SAN.
    pub fn csr_der(&self, id: &SpiffeId) -> Result<Vec<u8>, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(id)?];
        let csr = params
            .serialize_request(&*self.key)
            .map_err(Error::Signing)?;
        Ok(csr.der().to_vec())
    }

    /// DER SubjectPublicKeyInfo of the key, to match it against a certificate.
    pub(crate) fn spki(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    pub(crate) fn signer(&self) -> Arc<dyn rustls::sign::SigningKey> {
        self.signer.clone()
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

/// The URI SAN of a SPIFFE id.
pub(crate) fn uri_san(id: &SpiffeId) -> Result<SanType, Error> {
    // A SpiffeId is ASCII by construction, so this cannot fail in practice.
    let uri = rcgen::string::Ia5String::try_from(id.as_str()).map_err(Error::Signing)?;
    Ok(SanType::URI(uri))
}
