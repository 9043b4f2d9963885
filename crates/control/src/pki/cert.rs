//! What the control plane shows of a certificate (subject, SPIFFE id, serial, SHA-256, validity)
//! and the digests rotation compares: SHA-256 of a certificate, and the trust fingerprint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onemesh_api::admin::Certificate;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// A certificate that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a valid x.509 certificate: {0}")]
pub struct CertError(String);

/// The parts of a certificate an operator looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    /// The first URI SAN (a leaf's SPIFFE id; `spiffe://<td>` for a CA), if any.
    pub id: Option<String>,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub sha256: [u8; 32],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertSummary {
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CertError(e.to_string()))?;
        let id = cert
            .subject_alternative_name()
            .map_err(|e| CertError(e.to_string()))?
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_string()),
                    _ => None,
                })
            });
        let validity = cert.validity();
        Ok(CertSummary {
            subject: cert.subject().to_string(),
            id,
            serial: hex(cert.raw_serial()),
            sha256: sha256(der),
            not_before: from_unix(validity.not_before.timestamp()),
            not_after: from_unix(validity.not_after.timestamp()),
        })
    }

    /// The Admin API's form.
    pub fn to_api(&self) -> Certificate {
        Certificate {
            subject: self.subject.clone(),
            id: self.id.clone().unwrap_or_default(),
            serial: self.serial.clone(),
            sha256: hex(&self.sha256),
            not_before_unix_secs: unix_secs(self.not_before),
            not_after_unix_secs: unix_secs(self.not_after),
        }
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What a `TrustUpdate` carries as its fingerprint and a `TrustReport` echoes: SHA-256 over every
/// anchor's DER, in bundle order, then the issuer's DER (DER is self-delimiting, so the
/// concatenation is unambiguous).
pub fn trust_fingerprint(anchors: &[CertificateDer<'_>], issuer: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for anchor in anchors {
        digest.update(anchor.as_ref());
    }
    digest.update(issuer);
    digest.finalize().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Every `CERTIFICATE` block of `text`.
pub fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError("no CERTIFICATE block".to_string()));
    }
    Ok(certs)
}

/// Seconds since the Unix epoch (0 before it, saturating).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
