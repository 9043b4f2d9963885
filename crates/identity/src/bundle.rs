//! The trust bundle: one or more root certificates that peers' chains must end in.
//!
//! It is always a set, never a single root, so a root can be rotated by trusting the old and the
//! new side by side, then dropping the old one.

use rustls_pki_types::CertificateDer;

use crate::{Error, pem};

/// One or more trust anchors (root certificates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Reads every `CERTIFICATE` block of `pem`; fails if there is none or one is not usable as a
    /// trust anchor. Duplicates are dropped.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        Self::from_roots(pem::decode_certs(pem, "trust bundle")?)
    }

    /// Builds a bundle from DER roots; fails if there is none or one is not usable as a trust
    /// anchor. Duplicates are dropped.
    pub fn from_roots(roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::NoCertificates {
                what: "trust bundle",
            });
        }
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        for root in roots {
            webpki::anchor_from_trusted_cert(&root).map_err(|e| Error::BadCertificate {
                what: "trust bundle",
                reason: e.to_string(),
            })?;
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        Ok(Self { roots: unique })
    }

    /// The bundle as concatenated PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        pem::encode_certs(&self.roots)
    }

    /// The root certificates, in the order they were added.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The union of both bundles (this one's roots first), without duplicates.
    pub fn merge(&self, other: &TrustBundle) -> TrustBundle {
        let mut roots = self.roots.clone();
        for root in &other.roots {
            if !roots.contains(root) {
                roots.push(root.clone());
            }
        }
        TrustBundle { roots }
    }
}
