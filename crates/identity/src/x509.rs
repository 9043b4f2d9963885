//! Reading the few fields onemesh needs out of an X.509 certificate (x509-parser): URI SANs,
//! validity, CA flag, public key. Chain and signature checks are not here: they are webpki's job
//! (see `verify.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::id::validate_trust_domain;
use crate::{IdError, SpiffeId};

const SCHEME: &str = "spiffe://";

/// Why a certificate does not carry exactly one valid SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SanError {
    #[error("certificate is not valid x.509: {0}")]
    Parse(String),
    #[error("certificate has no uri subject alternative name")]
    NoUri,
    #[error("certificate has {0} uri subject alternative names, expected exactly one")]
    ManyUris(usize),
    #[error("certificate uri san is not a valid spiffe id: {0}")]
    InvalidId(#[source] IdError),
}

/// The fields of a certificate onemesh looks at.
#[derive(Clone, Debug)]
pub(crate) struct CertInfo {
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub self_issued: bool,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, SanError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| SanError::Parse(e.to_string()))?;
        Self::from_cert(&cert)
    }

    fn from_cert(cert: &X509Certificate<'_>) -> Result<Self, SanError> {
        let mut uris = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SanError::Parse(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push((*uri).to_string());
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            uris,
            not_before: from_unix(validity.not_before.timestamp()),
            not_after: from_unix(validity.not_after.timestamp()),
            is_ca: cert.is_ca(),
            spki: cert.public_key().raw.to_vec(),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        })
    }

    /// The single SPIFFE id of a workload leaf.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SanError> {
        match self.uris.as_slice() {
            [] => Err(SanError::NoUri),
            [uri] => uri.parse().map_err(SanError::InvalidId),
            many => Err(SanError::ManyUris(many.len())),
        }
    }

    /// The trust domain of a CA certificate, from its `spiffe://<trust-domain>` URI SAN.
    pub fn trust_domain(&self) -> Option<Result<String, IdError>> {
        self.uris.iter().find_map(|uri| {
            let td = uri.strip_prefix(SCHEME)?;
            let td = td.strip_suffix('/').unwrap_or(td);
            if td.contains('/') {
                return None;
            }
            Some(validate_trust_domain(td).map(|()| td.to_string()))
        })
    }
}

/// Seconds since the epoch (may be negative) to `SystemTime`.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
