//! Peer verification for onemesh mTLS: the rustls verifiers on both sides of a handshake.
//!
//! A peer is accepted when its chain builds to a root of the trust bundle (webpki: signatures,
//! validity at the handshake's `now`, CA constraints, EKU), its leaf carries exactly one URI SAN
//! that is a SPIFFE id, the id is in our trust domain and, on the client side, is the server id
//! we expected. Every CA on the verified path that names a trust domain (a `spiffe://<td>` URI
//! SAN, as onemesh CAs do) must name the leaf's, so another domain's root in the bundle cannot
//! vouch for our ids. The server name the client dialed is deliberately ignored: identity is the
//! SPIFFE id, not a DNS name. The bundle is read per handshake, so a bundle update applies to
//! the next handshake without rebuilding configs. No revocation checks (short-lived leaves).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::x509::{CertInfo, SanError, from_unix};
use crate::{IdError, SpiffeId, TrustBundle};

/// Why a peer's certificate was rejected. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(..)))` so that
/// [`crate::HandshakeFailure::from_rustls`] can classify it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("peer certificate is not valid x.509 ({0}): the peer must present a onemesh leaf")]
    BadEncoding(String),
    #[error(
        "peer certificate expired at {not_after:?} (now {now:?}): the peer must renew its certificate"
    )]
    Expired {
        not_after: SystemTime,
        now: SystemTime,
    },
    #[error("peer certificate is not valid before {not_before:?} (now {now:?}): check clocks")]
    NotYetValid {
        not_before: SystemTime,
        now: SystemTime,
    },
    #[error(
        "peer certificate does not chain to a root of the trust bundle: the peer's issuer is not trusted here"
    )]
    UnknownIssuer,
    #[error(
        "peer certificate chain has a bad signature: the certificate was altered or mis-issued"
    )]
    BadSignature,
    #[error(
        "peer certificate is not allowed for this use (extended key usage): issue it with onemesh"
    )]
    InvalidPurpose,
    #[error("peer certificate chain is invalid: {0}")]
    Chain(webpki::Error),
    #[error("peer certificate has no uri san: the peer must present a leaf with a spiffe id")]
    NoSpiffeId,
    #[error("peer certificate has {count} uri sans: a onemesh leaf has exactly one, the spiffe id")]
    MultipleUriSans { count: usize },
    #[error("peer certificate uri san is not a valid spiffe id: {0}")]
    InvalidSpiffeId(IdError),
    #[error(
        "peer {found} is in another trust domain than {expected:?}: federation is not supported"
    )]
    WrongTrustDomain { expected: String, found: SpiffeId },
    #[error(
        "peer {found} has a chain through a ca of trust domain {ca_domain:?}: a ca may only vouch for ids of its own trust domain"
    )]
    ChainFromOtherTrustDomain { ca_domain: String, found: SpiffeId },
    #[error(
        "peer is {found}, expected {expected}: the server answering is not the one we meant to reach"
    )]
    IdentityMismatch { expected: SpiffeId, found: SpiffeId },
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// The trust bundle shared between a [`crate::CredentialStore`] and the verifiers it made, read
/// once per handshake.
#[derive(Clone, Debug)]
pub(crate) struct SharedBundle(Arc<RwLock<Arc<Anchors>>>);

#[derive(Debug)]
pub(crate) struct Anchors {
    pub bundle: TrustBundle,
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The trust domain each anchor names in its `spiffe://<td>` URI SAN (same order), if any.
    pub domains: Vec<Option<String>>,
}

impl SharedBundle {
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(Anchors::new(bundle)))))
    }

    pub fn get(&self) -> Arc<Anchors> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, bundle: TrustBundle) {
        let anchors = Arc::new(Anchors::new(bundle));
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = anchors;
    }
}

impl Anchors {
    fn new(bundle: TrustBundle) -> Self {
        // Every root was checked to be a valid anchor when the bundle was made.
        let (anchors, domains) = bundle
            .roots()
            .iter()
            .filter_map(|root| {
                let anchor = webpki::anchor_from_trusted_cert(root).ok()?.to_owned();
                Some((anchor, ca_domain(root)))
            })
            .unzip();
        Self {
            bundle,
            anchors,
            domains,
        }
    }
}

/// Verifies a peer's chain (leaf first) at `now` and returns its SPIFFE id.
///
/// The id must be in `trust_domain`. With `expected`, the id must be exactly that one and the
/// leaf must allow server auth (the client's check of a server); without, client auth (the
/// server's check of a client).
pub fn verify_peer(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
    trust_domain: &str,
    expected: Option<&SpiffeId>,
) -> Result<SpiffeId, VerifyError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(VerifyError::BadEncoding(
            "empty certificate chain".to_string(),
        ));
    };
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let anchors = Anchors::new(bundle.clone());
    let usage = if expected.is_some() {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    verify_with(
        &anchors,
        &algorithms(),
        leaf,
        intermediates,
        UnixTime::since_unix_epoch(secs),
        usage,
        trust_domain,
        expected,
    )
}

#[allow(clippy::too_many_arguments)]
fn verify_with(
    anchors: &Anchors,
    algs: &WebPkiSupportedAlgorithms,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    trust_domain: &str,
    expected: Option<&SpiffeId>,
) -> Result<SpiffeId, VerifyError> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let path = cert
        .verify_for_usage(
            algs.all,
            &anchors.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(from_webpki)?;
    let id = CertInfo::parse(leaf)
        .and_then(|info| info.spiffe_id())
        .map_err(|e| match e {
            SanError::Parse(reason) => VerifyError::BadEncoding(reason),
            SanError::NoUri => VerifyError::NoSpiffeId,
            SanError::ManyUris(count) => VerifyError::MultipleUriSans { count },
            SanError::InvalidId(e) => VerifyError::InvalidSpiffeId(e),
        })?;
    if id.trust_domain() != trust_domain {
        return Err(VerifyError::WrongTrustDomain {
            expected: trust_domain.to_string(),
            found: id,
        });
    }
    // Every CA on the path that names a trust domain must name the leaf's: a root of another
    // domain in the bundle must not vouch for ids of ours.
    let anchor_domain = anchors
        .anchors
        .iter()
        .position(|a| a.subject_public_key_info == path.anchor().subject_public_key_info)
        .and_then(|i| anchors.domains.get(i).cloned().flatten());
    let ca_domains = path
        .intermediate_certificates()
        .filter_map(|ca| ca_domain(&ca.der()))
        .chain(anchor_domain);
    for ca_domain in ca_domains {
        if ca_domain != id.trust_domain() {
            return Err(VerifyError::ChainFromOtherTrustDomain {
                ca_domain,
                found: id,
            });
        }
    }
    if let Some(expected) = expected
        && &id != expected
    {
        return Err(VerifyError::IdentityMismatch {
            expected: expected.clone(),
            found: id,
        });
    }
    Ok(id)
}

fn from_webpki(e: webpki::Error) -> VerifyError {
    let time = |t: UnixTime| from_unix(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    match e {
        webpki::Error::CertExpired {
            time: now,
            not_after,
        } => VerifyError::Expired {
            not_after: time(not_after),
            now: time(now),
        },
        webpki::Error::CertNotValidYet {
            time: now,
            not_before,
        } => VerifyError::NotYetValid {
            not_before: time(not_before),
            now: time(now),
        },
        webpki::Error::UnknownIssuer => VerifyError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => VerifyError::BadSignature,
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            VerifyError::InvalidPurpose
        }
        webpki::Error::BadDer | webpki::Error::BadDerTime => {
            VerifyError::BadEncoding(e.to_string())
        }
        other => VerifyError::Chain(other),
    }
}

/// The ring provider's signature algorithms (never the process default provider).
fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Server side: requires a client certificate from our trust domain.
#[derive(Debug)]
pub(crate) struct ClientIdVerifier {
    bundle: SharedBundle,
    trust_domain: String,
    /// False: a client without a certificate is let through (and has no peer id); one that
    /// presents a certificate is verified all the same.
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientIdVerifier {
    pub fn new(bundle: SharedBundle, trust_domain: String, mandatory: bool) -> Self {
        Self {
            bundle,
            trust_domain,
            mandatory,
            algs: algorithms(),
        }
    }
}

impl ClientCertVerifier for ClientIdVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: every onemesh client has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let anchors = self.bundle.get();
        verify_with(
            &anchors,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            &self.trust_domain,
            None,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client side: accepts only the expected server id, chained to our bundle.
#[derive(Debug)]
pub(crate) struct ServerIdVerifier {
    bundle: SharedBundle,
    trust_domain: String,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerIdVerifier {
    pub fn new(bundle: SharedBundle, trust_domain: String, expected: SpiffeId) -> Self {
        Self {
            bundle,
            trust_domain,
            expected,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for ServerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors = self.bundle.get();
        verify_with(
            &anchors,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.trust_domain,
            Some(&self.expected),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The trust domain a CA certificate names in its `spiffe://<td>` URI SAN, if it names a valid one.
fn ca_domain(der: &CertificateDer<'_>) -> Option<String> {
    CertInfo::parse(der).ok()?.trust_domain()?.ok()
}

/// The peer's SPIFFE id after a handshake (from the leaf's single URI SAN), `None` if there is
/// no peer certificate or it has no valid SPIFFE id.
pub fn peer_id(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    CertInfo::parse(leaf).ok()?.spiffe_id().ok()
}
