//! A bounded classification of TLS handshake failures, for metric labels and logs.
//!
//! Rejections raised by our own verifiers carry a typed [`VerifyError`] and are classified
//! exactly; the peer of a rejected handshake only sees a TLS alert and records
//! [`HandshakeFailure::AlertReceived`]. Everything else rustls reports falls into a few buckets.

use std::io;

use rustls::{AlertDescription, CertificateError};

use crate::VerifyError;

/// Why a TLS handshake failed, as a bounded set (safe as a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client presented no certificate to a server that requires one.
    NoClientCert,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate (or one in its chain) is not valid yet.
    NotYetValid,
    /// The peer's chain does not end in a root of our bundle (or a signature in it is wrong).
    UnknownIssuer,
    /// The peer's SPIFFE id is in another trust domain.
    WrongTrustDomain,
    /// The peer's leaf has no (single, valid) SPIFFE id.
    NoSpiffeId,
    /// The server is not the identity the client expected.
    IdentityMismatch,
    /// The peer rejected the handshake with an alert.
    AlertReceived,
    /// Any other TLS error: malformed messages, no common parameters, bad signatures, ...
    Protocol,
    /// The transport failed (connection reset, timeout, closed early).
    Io,
}

impl HandshakeFailure {
    /// Every value, for pre-registering metric label sets.
    pub const ALL: [HandshakeFailure; 10] = [
        Self::NoClientCert,
        Self::Expired,
        Self::NotYetValid,
        Self::UnknownIssuer,
        Self::WrongTrustDomain,
        Self::NoSpiffeId,
        Self::IdentityMismatch,
        Self::AlertReceived,
        Self::Protocol,
        Self::Io,
    ];

    /// Classifies a rustls error.
    pub fn from_rustls(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::NoCertificatesPresented => Self::NoClientCert,
            rustls::Error::AlertReceived(_) => Self::AlertReceived,
            rustls::Error::InvalidCertificate(cert) => Self::from_certificate_error(cert),
            rustls::Error::Other(other) => match other.0.downcast_ref::<VerifyError>() {
                Some(v) => Self::from_verify(v),
                None => Self::Protocol,
            },
            _ => Self::Protocol,
        }
    }

    /// Classifies an I/O error as tokio-rustls returns it: a rustls error inside
    /// `io::Error::get_ref()` is classified as such, anything else is [`HandshakeFailure::Io`].
    pub fn from_io(e: &io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::from_rustls(tls),
            None => Self::Io,
        }
    }

    /// Classifies one of our verifiers' rejections.
    pub fn from_verify(e: &VerifyError) -> Self {
        match e {
            VerifyError::Expired { .. } => Self::Expired,
            VerifyError::NotYetValid { .. } => Self::NotYetValid,
            // A chain whose signatures do not verify is not from an issuer we trust.
            VerifyError::UnknownIssuer | VerifyError::BadSignature => Self::UnknownIssuer,
            VerifyError::WrongTrustDomain { .. }
            | VerifyError::ChainFromOtherTrustDomain { .. } => Self::WrongTrustDomain,
            VerifyError::NoSpiffeId
            | VerifyError::MultipleUriSans { .. }
            | VerifyError::InvalidSpiffeId(_) => Self::NoSpiffeId,
            VerifyError::IdentityMismatch { .. } => Self::IdentityMismatch,
            VerifyError::BadEncoding(_) | VerifyError::InvalidPurpose | VerifyError::Chain(_) => {
                Self::Protocol
            }
        }
    }

    fn from_certificate_error(e: &CertificateError) -> Self {
        match e {
            CertificateError::Other(other) => match other.0.downcast_ref::<VerifyError>() {
                Some(v) => Self::from_verify(v),
                None => Self::Protocol,
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Self::NotYetValid
            }
            CertificateError::UnknownIssuer => Self::UnknownIssuer,
            _ => Self::Protocol,
        }
    }

    /// A snake_case label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownIssuer => "unknown_issuer",
            Self::WrongTrustDomain => "wrong_trust_domain",
            Self::NoSpiffeId => "no_spiffe_id",
            Self::IdentityMismatch => "identity_mismatch",
            Self::AlertReceived => "alert_received",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }

    /// The alert a peer sent, when this failure was [`HandshakeFailure::AlertReceived`]; useful
    /// in logs (`certificate_required`, `bad_certificate`, ...).
    pub fn received_alert(e: &rustls::Error) -> Option<AlertDescription> {
        match e {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::SpiffeId;

    #[test]
    fn labels_are_distinct_snake_case() {
        let labels: std::collections::HashSet<_> =
            HandshakeFailure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(labels.len(), HandshakeFailure::ALL.len());
        for label in labels {
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn classifies_our_verify_errors_in_both_carriers() {
        let id = SpiffeId::new("other.domain", "a", "b").unwrap();
        let e = VerifyError::WrongTrustDomain {
            expected: "cluster.local".into(),
            found: id,
        };
        let as_cert: rustls::Error = e.clone().into();
        assert_eq!(
            HandshakeFailure::from_rustls(&as_cert),
            HandshakeFailure::WrongTrustDomain
        );
        let as_other = rustls::Error::Other(rustls::OtherError(Arc::new(e)));
        assert_eq!(
            HandshakeFailure::from_rustls(&as_other),
            HandshakeFailure::WrongTrustDomain
        );
        let now = SystemTime::now();
        let expired: rustls::Error = VerifyError::Expired {
            not_after: now,
            now,
        }
        .into();
        assert_eq!(
            HandshakeFailure::from_rustls(&expired),
            HandshakeFailure::Expired
        );
    }

    #[test]
    fn classifies_common_rustls_errors() {
        use rustls::Error as E;
        let cases = [
            (E::NoCertificatesPresented, HandshakeFailure::NoClientCert),
            (
                E::AlertReceived(AlertDescription::BadCertificate),
                HandshakeFailure::AlertReceived,
            ),
            (
                E::InvalidCertificate(CertificateError::Expired),
                HandshakeFailure::Expired,
            ),
            (
                E::InvalidCertificate(CertificateError::NotValidYet),
                HandshakeFailure::NotYetValid,
            ),
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                HandshakeFailure::UnknownIssuer,
            ),
            (
                E::InvalidCertificate(CertificateError::BadEncoding),
                HandshakeFailure::Protocol,
            ),
            (E::DecryptError, HandshakeFailure::Protocol),
            (E::General("x".into()), HandshakeFailure::Protocol),
        ];
        for (e, want) in cases {
            assert_eq!(HandshakeFailure::from_rustls(&e), want, "{e:?}");
        }
    }

    #[test]
    fn classifies_io_errors() {
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(
            HandshakeFailure::from_io(&wrapped),
            HandshakeFailure::NoClientCert
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(HandshakeFailure::from_io(&reset), HandshakeFailure::Io);
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(HandshakeFailure::from_io(&eof), HandshakeFailure::Io);
    }
}
