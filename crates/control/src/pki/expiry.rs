//! When the CA expires, for `onemesh check`: every anchor of the bundle and the issuer, read from
//! the state directory ([`expiries`]) or from `Admin.Trust`'s answer ([`expiries_from_status`]),
//! each judged against [`EXPIRY_WARN`] and [`EXPIRY_FAIL`].
//!
//! An expired anchor takes the whole mesh down and blocks its own fix (proxies can no longer reach
//! the control plane to get a new bundle), which is why the check warns two months ahead.

use std::path::Path;
use std::time::{Duration, SystemTime};

use onemesh_api::admin::{Certificate, TrustStatus};

use super::PkiError;
use super::cert::{self, CertSummary};
use super::files::{Files, ISSUER_CERT_FILE, TRUST_ANCHORS_FILE};

/// Warn when a CA certificate expires within this (60 days).
pub const EXPIRY_WARN: Duration = Duration::from_secs(60 * 24 * 3600);
/// Fail when a CA certificate expires within this (7 days).
pub const EXPIRY_FAIL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which part of the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPart {
    Anchor,
    Issuer,
}

impl CaPart {
    pub fn as_str(self) -> &'static str {
        match self {
            CaPart::Anchor => "trust anchor",
            CaPart::Issuer => "issuer",
        }
    }
}

/// How urgent an expiry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExpiryLevel {
    Ok,
    /// Within [`EXPIRY_WARN`].
    Warn,
    /// Within [`EXPIRY_FAIL`], or already expired.
    Fail,
}

/// One CA certificate's expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub part: CaPart,
    pub subject: String,
    /// SHA-256 of the certificate, lower-case hex.
    pub sha256: String,
    pub not_after: SystemTime,
}

impl Expiry {
    /// Time left at `now` (`None` once expired).
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.not_after.duration_since(now).ok()
    }

    /// [`ExpiryLevel`] at `now` with the default thresholds.
    pub fn level(&self, now: SystemTime) -> ExpiryLevel {
        match self.remaining(now) {
            Some(left) if left > EXPIRY_WARN => ExpiryLevel::Ok,
            Some(left) if left > EXPIRY_FAIL => ExpiryLevel::Warn,
            _ => ExpiryLevel::Fail,
        }
    }

    fn from_summary(part: CaPart, c: &CertSummary) -> Self {
        Expiry {
            part,
            subject: c.subject.clone(),
            sha256: cert::hex(&c.sha256),
            not_after: c.not_after,
        }
    }

    fn from_api(part: CaPart, c: &Certificate) -> Self {
        let secs = c.not_after_unix_secs.max(0).unsigned_abs();
        Expiry {
            part,
            subject: c.subject.clone(),
            sha256: c.sha256.clone(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }
}

/// Every anchor of `trust-anchors.pem` and the issuer of `issuer.crt` in `state_dir`, soonest
/// first.
pub fn expiries(state_dir: &Path) -> Result<Vec<Expiry>, PkiError> {
    let files = Files::new(state_dir);
    let anchors = files.read(TRUST_ANCHORS_FILE)?;
    let issuer = files.read(ISSUER_CERT_FILE)?;
    expiries_from_pem(
        (
            &anchors,
            &files.path(TRUST_ANCHORS_FILE).display().to_string(),
        ),
        (&issuer, &files.path(ISSUER_CERT_FILE).display().to_string()),
    )
}

/// The same from the PEM texts themselves (Kubernetes mode: the trust-anchor ConfigMap and the
/// issuer Secret), each with where it came from for messages.
pub fn expiries_from_pem(
    anchors: (&str, &str),
    issuer: (&str, &str),
) -> Result<Vec<Expiry>, PkiError> {
    let mut out = Vec::new();
    for (part, (pem, source)) in [(CaPart::Anchor, anchors), (CaPart::Issuer, issuer)] {
        let bad = |e: cert::CertError| PkiError::BadCa {
            what: part.as_str(),
            reason: format!("{source}: {e}"),
        };
        let certs = cert::pem_certs(pem).map_err(bad)?;
        // The issuer file holds the issuer first, then any further intermediates.
        let take = if part == CaPart::Issuer {
            1
        } else {
            certs.len()
        };
        for c in certs.iter().take(take) {
            out.push(Expiry::from_summary(
                part,
                &CertSummary::parse(c).map_err(bad)?,
            ));
        }
    }
    out.sort_by_key(|e| e.not_after);
    Ok(out)
}

/// The same from `Admin.Trust`'s answer, soonest first.
pub fn expiries_from_status(status: &TrustStatus) -> Vec<Expiry> {
    let mut out: Vec<Expiry> = status
        .anchors
        .iter()
        .map(|c| Expiry::from_api(CaPart::Anchor, c))
        .chain(
            status
                .issuer
                .iter()
                .map(|c| Expiry::from_api(CaPart::Issuer, c)),
        )
        .collect();
    out.sort_by_key(|e| e.not_after);
    out
}
