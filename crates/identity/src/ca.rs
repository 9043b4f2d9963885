//! The certificate authorities: the trust anchor (root CA, offline-ish, only makes issuers) and
//! the issuer (intermediate CA) that signs workload leaves from CSRs, plus [`Issued`], what a
//! signing returns.
//!
//! CA certificates carry a `spiffe://<trust-domain>` URI SAN (as SPIFFE recommends), which is how
//! an issuer loaded from PEM knows its trust domain. Leaves carry exactly one URI SAN (the
//! workload's SPIFFE id), no DNS name, and both the server and client auth EKUs, since every
//! proxy is both. Revocation is deliberately absent: leaves live 24 h and are renewed, which is
//! the mesh's answer to revocation.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::x509::CertInfo;
use crate::{Error, SpiffeId, TrustBundle, id, key, pem};

/// Leaf certificates live this long unless told otherwise.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How far back `not_before` is set, so a peer whose clock is slightly behind accepts a
/// certificate that was just issued. Capped at a tenth of the lifetime: a leaf of a few seconds
/// (tests of renewal) backdated by a full minute would be past 70 % of its life at birth and
/// renewed in a tight loop.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A root CA (trust anchor) with its key: used only to create issuers.
pub struct TrustAnchor {
    cert: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, KeyPair>,
    trust_domain: String,
    not_after: SystemTime,
    bundle: TrustBundle,
}

impl TrustAnchor {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`, valid from a minute ago
    /// (a tenth of `lifetime` if that is less) for `lifetime`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, Error> {
        id::validate_trust_domain(trust_domain).map_err(|source| Error::BadTrustDomain {
            what: "trust anchor",
            source,
        })?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::KeyGeneration)?;
        let (not_before, not_after) = window_from_now(lifetime)?;
        let params = ca_params(
            trust_domain,
            "onemesh root ca",
            &key,
            1,
            not_before,
            not_after,
        )?;
        let cert = params
            .self_signed(&key)
            .map_err(Error::Signing)?
            .der()
            .clone();
        let info = cert_info(&cert, "trust anchor")?;
        Ok(Self {
            bundle: TrustBundle::from_roots(vec![cert.clone()])?,
            cert,
            issuer: rcgen::Issuer::new(params, key),
            trust_domain: trust_domain.to_string(),
            not_after: info.not_after,
        })
    }

    /// Loads a root from its certificate (first block of `cert_pem`) and PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert = first_cert(cert_pem, "trust anchor")?;
        let (info, trust_domain) = load_ca(&cert, "trust anchor")?;
        let key = load_key(key_pem, "trust anchor", &info)?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&cert, key).map_err(|e| Error::BadCertificate {
                what: "trust anchor",
                reason: e.to_string(),
            })?;
        Ok(Self {
            bundle: TrustBundle::from_roots(vec![cert.clone()])?,
            cert,
            issuer,
            trust_domain,
            not_after: info.not_after,
        })
    }

    /// The root certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// The root's private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The trust domain this root was made for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A bundle holding just this root.
    pub fn bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    /// Makes a new issuer (intermediate CA, fresh ECDSA P-256 key) valid from a minute ago (a
    /// tenth of `lifetime` if that is less) for `lifetime`, but never beyond this root's own
    /// expiry.
    pub fn issue_issuer(&self, lifetime: Duration) -> Result<Issuer, Error> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::KeyGeneration)?;
        let (not_before, not_after) = window_from_now(lifetime)?;
        let mut params = ca_params(
            &self.trust_domain,
            "onemesh issuer ca",
            &key,
            0,
            not_before,
            not_after.min(self.not_after),
        )?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::Signing)?
            .der()
            .clone();
        Ok(Issuer {
            chain: vec![cert],
            issuer: rcgen::Issuer::new(params, key),
            trust_domain: self.trust_domain.clone(),
        })
    }
}

/// The issuer (intermediate CA) that signs workload leaf certificates.
pub struct Issuer {
    /// The issuer's certificate first, then further intermediates (never a self-signed root).
    chain: Vec<CertificateDer<'static>>,
    issuer: rcgen::Issuer<'static, KeyPair>,
    trust_domain: String,
}

impl Issuer {
    /// Loads an issuer from its chain (issuer certificate first, then any further intermediates,
    /// with or without the root; self-signed certificates after the first are dropped) and its
    /// PKCS#8 key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let certs = pem::decode_certs(chain_pem, "issuer")?;
        let (info, trust_domain) = load_ca(&certs[0], "issuer")?;
        let key = load_key(key_pem, "issuer", &info)?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&certs[0], key).map_err(|e| Error::BadCertificate {
                what: "issuer",
                reason: e.to_string(),
            })?;
        let mut chain = Vec::with_capacity(certs.len());
        for (i, cert) in certs.into_iter().enumerate() {
            if i > 0 && cert_info(&cert, "issuer chain")?.self_issued {
                continue;
            }
            chain.push(cert);
        }
        Ok(Self {
            chain,
            issuer,
            trust_domain,
        })
    }

    /// The issuer certificate and further intermediates (no root) as PEM.
    pub fn chain_pem(&self) -> String {
        pem::encode_certs(&self.chain)
    }

    /// The issuer's private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust domain the issuer signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks the CSR's signature, that it asks for exactly one URI SAN that is a SpiffeId in this
    /// issuer's trust domain, and that `entitled(&id)` is true; then signs a leaf valid from a
    /// minute ago (clock skew allowance; a tenth of `lifetime` if that is less, so short test
    /// lifetimes still renew at 70 %) until `now + lifetime`. The chain is leaf first, then the
    /// issuer (then any further intermediates). Times are whole seconds (X.509 has no finer).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        lifetime: Duration,
        entitled: impl FnOnce(&SpiffeId) -> bool,
    ) -> Result<Issued, Error> {
        let (not_before, not_after) = window_from_now(lifetime)?;
        self.sign_csr_with_validity(csr_der, not_before, not_after, entitled)
    }

    /// Same as [`Issuer::sign_csr`] with an explicit validity window (whole seconds are kept).
    pub fn sign_csr_with_validity(
        &self,
        csr_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
        entitled: impl FnOnce(&SpiffeId) -> bool,
    ) -> Result<Issued, Error> {
        check_validity(not_before, not_after)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => Error::CsrSignature,
                    other => Error::CsrParse(other),
                })?;
        let id = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri
                .as_str()
                .parse::<SpiffeId>()
                .map_err(Error::CsrInvalidId)?,
            [] | [_] => return Err(Error::CsrNoSpiffeId),
            many => return Err(Error::CsrTooManySans { count: many.len() }),
        };
        if id.trust_domain() != self.trust_domain {
            return Err(Error::CsrWrongTrustDomain {
                expected: self.trust_domain.clone(),
                found: id,
            });
        }
        if !entitled(&id) {
            return Err(Error::NotEntitled { id });
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![key::uri_san(&id)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(Error::Signing)?
            .der()
            .clone();

        let info = cert_info(&leaf, "issued leaf")?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(leaf);
        chain.extend(self.chain.iter().cloned());
        Ok(Issued {
            id,
            chain,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// A signed workload leaf and its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The SPIFFE id in the leaf's URI SAN.
    pub id: SpiffeId,
    /// Leaf first, then the issuer, then any further intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// The chain as concatenated PEM `CERTIFICATE` blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        pem::encode_certs(&self.chain)
    }

    /// Reads a chain (leaf first) and takes the id and validity from the leaf.
    pub fn from_chain_pem(pem: &str) -> Result<Self, Error> {
        Self::from_chain(pem::decode_certs(pem, "leaf chain")?)
    }

    /// Same as [`Issued::from_chain_pem`] from DER certificates (leaf first).
    pub fn from_chain(chain: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or(Error::NoCertificates { what: "leaf chain" })?;
        let info = cert_info(leaf, "leaf")?;
        let id = info.spiffe_id().map_err(|e| Error::NoSpiffeId {
            what: "leaf",
            reason: e.to_string(),
        })?;
        Ok(Self {
            id,
            not_before: info.not_before,
            not_after: info.not_after,
            chain,
        })
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `chain` is never empty when made by this crate; a hand-built empty one yields an
        // empty certificate rather than a panic.
        self.chain.first().unwrap_or(&EMPTY_CERT)
    }

    /// The leaf's lifetime (`not_after - not_before`).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }
}

static EMPTY_CERT: CertificateDer<'static> = CertificateDer::from_slice(&[]);

/// Parameters of a CA certificate. The common name ends with the start of the key identifier so
/// that every CA has its own subject: two roots of one trust domain (during a rotation, or a
/// rogue one) are then told apart by name, and an untrusted chain fails as "unknown issuer"
/// rather than as a signature mismatch against a namesake.
fn ca_params(
    trust_domain: &str,
    common_name: &str,
    key: &KeyPair,
    path_len: u8,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
    check_validity(not_before, not_after)?;
    let mut params = CertificateParams::default();
    let key_id: String = params
        .key_identifier(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, format!("{common_name} {key_id}"));
    params.distinguished_name = dn;
    let uri = rcgen::string::Ia5String::try_from(format!("spiffe://{trust_domain}"))
        .map_err(Error::Signing)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

/// `[now - min(CLOCK_SKEW, lifetime / 10), now + lifetime]`, or an error if `lifetime`
/// overflows the clock.
fn window_from_now(lifetime: Duration) -> Result<(SystemTime, SystemTime), Error> {
    let now = SystemTime::now();
    let not_before = now
        .checked_sub(CLOCK_SKEW.min(lifetime / 10))
        .unwrap_or(now);
    let not_after = now.checked_add(lifetime).ok_or(Error::InvalidValidity {
        not_before,
        not_after: SystemTime::UNIX_EPOCH,
    })?;
    check_validity(not_before, not_after)?;
    Ok((not_before, not_after))
}

/// A validity window a certificate can encode: `not_before < not_after`, both within
/// 1970-01-01 .. 9999-12-31 (the range of X.509 times that every parser accepts).
fn check_validity(not_before: SystemTime, not_after: SystemTime) -> Result<(), Error> {
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let in_range = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() <= MAX_SECS)
    };
    if not_after <= not_before || !in_range(not_before) || !in_range(not_after) {
        return Err(Error::InvalidValidity {
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// A positive 16-byte serial number from the operating system's cryptographic RNG (ring's
/// `SystemRandom`, i.e. getrandom): 126 bits of entropy after the two fixed bits below, well
/// above the 64 that the CA/Browser Forum asks for, and within RFC 5280's 20 octets. Serials
/// must be unique and unpredictable (a predictable serial helps forge a colliding certificate),
/// so they never come from a general-purpose generator.
pub(crate) fn random_serial() -> Result<SerialNumber, Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    // Positive (top bit clear) and without a leading zero byte, so the DER INTEGER is minimal.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn first_cert(pem_text: &str, what: &'static str) -> Result<CertificateDer<'static>, Error> {
    let mut certs = pem::decode_certs(pem_text, what)?;
    Ok(certs.swap_remove(0))
}

fn cert_info(cert: &CertificateDer<'_>, what: &'static str) -> Result<CertInfo, Error> {
    CertInfo::parse(cert).map_err(|e| Error::BadCertificate {
        what,
        reason: e.to_string(),
    })
}

/// Checks a CA certificate and reads its trust domain.
fn load_ca(cert: &CertificateDer<'_>, what: &'static str) -> Result<(CertInfo, String), Error> {
    let info = cert_info(cert, what)?;
    if !info.is_ca {
        return Err(Error::NotACa { what });
    }
    let trust_domain = info
        .trust_domain()
        .ok_or(Error::NoTrustDomain { what })?
        .map_err(|source| Error::BadTrustDomain { what, source })?;
    Ok((info, trust_domain))
}

/// Reads a PKCS#8 key and checks it belongs to the certificate described by `info`.
fn load_key(key_pem: &str, what: &'static str, info: &CertInfo) -> Result<KeyPair, Error> {
    let key = KeyPair::from_pem(key_pem).map_err(|source| Error::BadKey { what, source })?;
    if key.subject_public_key_info() != info.spki {
        return Err(Error::KeyMismatch { what });
    }
    Ok(key)
}
