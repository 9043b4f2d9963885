//! What admin `GET /identity` shows: the current leaf's SPIFFE id, issuer (subject DN), serial
//! (hex) and validity, as JSON. `onemesh identity` and `onemesh check` read exactly these field
//! names.

use std::time::UNIX_EPOCH;

use onemesh_identity::{CredentialStore, Issued};
use serde::Serialize;

/// Why there is no identity to show.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    /// No certificate has been issued yet.
    #[error("no identity certificate yet: the proxy is still waiting for its first certificate")]
    NoCertificate,
    /// The leaf does not parse (it was checked when stored, so this is a bug).
    #[error("the current leaf certificate cannot be parsed: {0}")]
    Parse(String),
}

/// The fields of `GET /identity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeafInfo {
    /// The SPIFFE id in the leaf.
    pub id: String,
    /// The issuer's subject DN.
    pub issuer: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// Start of validity, unix seconds.
    pub not_before_unix_secs: u64,
    /// End of validity, unix seconds.
    pub not_after_unix_secs: u64,
}

impl LeafInfo {
    /// Reads an issued chain's leaf.
    pub fn from_issued(issued: &Issued) -> Result<LeafInfo, LeafError> {
        let (_, cert) = x509_parser::parse_x509_certificate(issued.leaf().as_ref())
            .map_err(|e| LeafError::Parse(e.to_string()))?;
        let secs = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        Ok(LeafInfo {
            id: issued.id.to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_before_unix_secs: secs(issued.not_before),
            not_after_unix_secs: secs(issued.not_after),
        })
    }
}

/// The `GET /identity` body for the current credentials.
pub fn identity_json(credentials: Option<&CredentialStore>) -> Result<String, LeafError> {
    let store = credentials.ok_or(LeafError::NoCertificate)?;
    let info = LeafInfo::from_issued(&store.current())?;
    serde_json::to_string(&info).map_err(|e| LeafError::Parse(e.to_string()))
}
