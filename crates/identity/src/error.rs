//! The error of everything in this crate except id parsing ([`crate::IdError`]) and peer
//! verification during a handshake ([`crate::VerifyError`]).

use std::time::SystemTime;

use crate::{IdError, SpiffeId};

/// What failed while loading, making or signing keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} pem: {reason}; pass PEM text with -----BEGIN ...----- blocks")]
    Pem { what: &'static str, reason: String },
    #[error("no certificate in {what} pem: pass at least one -----BEGIN CERTIFICATE----- block")]
    NoCertificates { what: &'static str },
    #[error("{what} certificate is not valid x.509 ({reason}): pass a DER certificate in PEM")]
    BadCertificate { what: &'static str, reason: String },
    #[error(
        "{what} certificate is not a ca (basic constraints ca=false or missing): pass a ca certificate"
    )]
    NotACa { what: &'static str },
    #[error(
        "{what} certificate has no spiffe://<trust-domain> uri san: pass a certificate made by onemesh"
    )]
    NoTrustDomain { what: &'static str },
    #[error("{what} certificate names an invalid trust domain: {source}")]
    BadTrustDomain {
        what: &'static str,
        #[source]
        source: IdError,
    },
    #[error("cannot read {what} private key: {source}; pass a PKCS#8 PEM key")]
    BadKey {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} private key cannot be used with rustls: {reason}; use an ECDSA P-256 key")]
    UnusableKey { what: &'static str, reason: String },
    #[error(
        "the private key does not match the {what} certificate: pass the key that belongs to it"
    )]
    KeyMismatch { what: &'static str },
    #[error("generating a key pair failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("making or signing a certificate failed: {0}")]
    Signing(#[source] rcgen::Error),
    #[error(
        "validity window is empty or inverted (not_before {not_before:?}, not_after {not_after:?}): pass not_after later than not_before"
    )]
    InvalidValidity {
        not_before: SystemTime,
        not_after: SystemTime,
    },
    #[error("cannot parse the csr: {0}; send a DER PKCS#10 request made by WorkloadKey::csr_der")]
    CsrParse(#[source] rcgen::Error),
    #[error(
        "the csr signature does not verify: the request was altered or signed with another key"
    )]
    CsrSignature,
    #[error(
        "the csr asks for a non-uri san or none (uri sans: 0): ask for exactly one spiffe id uri san"
    )]
    CsrNoSpiffeId,
    #[error(
        "the csr asks for {count} subject alternative names: ask for exactly one, the spiffe id uri"
    )]
    CsrTooManySans { count: usize },
    #[error("the csr uri san is not a valid spiffe id: {0}")]
    CsrInvalidId(#[source] IdError),
    #[error(
        "the csr asks for {found}, outside this issuer's trust domain {expected:?}: ask for an id in {expected:?}"
    )]
    CsrWrongTrustDomain { expected: String, found: SpiffeId },
    #[error(
        "the caller is not entitled to {id}: request only the identity of the caller's own service account"
    )]
    NotEntitled { id: SpiffeId },
    #[error("certificate is for {found}, not {expected}: issue it for the store's id")]
    IdMismatch { expected: SpiffeId, found: SpiffeId },
    #[error("{what} certificate has no spiffe id uri san: {reason}")]
    NoSpiffeId { what: &'static str, reason: String },
    #[error(
        "the system's cryptographic random number generator failed: check that getrandom(2) or /dev/urandom is available to this process"
    )]
    Random,
}
