//! The certificate authorities: CSR signing (what is signed, what is refused and why), loading
//! CAs and chains back from PEM, and the trust bundle.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use onemesh_identity::{
    DEFAULT_LEAF_LIFETIME, Error, Issued, Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey,
    verify_peer,
};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

fn whole_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap().as_secs())
}

/// A CSR with arbitrary SANs, signed by a fresh key.
fn csr_with_sans(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn signed_leaf_has_the_uri_san_the_chain_and_the_validity_asked() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id).unwrap();
    let now = SystemTime::now();
    let not_before = whole_secs(now - Duration::from_secs(10));
    let not_after = whole_secs(now + Duration::from_secs(7200));
    let mut asked = None;
    let issued = pki
        .issuer
        .sign_csr_with_validity(&csr, not_before, not_after, |id| {
            asked = Some(id.clone());
            true
        })
        .unwrap();
    assert_eq!(asked.as_ref(), Some(&id));
    assert_eq!(issued.id, id);
    assert_eq!(issued.not_before, not_before);
    assert_eq!(issued.not_after, not_after);
    assert_eq!(issued.chain.len(), 2);
    let issuer_certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.issuer.chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(issued.chain[1..], issuer_certs[..]);
    // The issuer's own chain has no SPIFFE leaf id, so it is not a leaf chain.
    assert!(matches!(
        Issued::from_chain_pem(&pki.issuer.chain_pem()),
        Err(Error::NoSpiffeId { .. })
    ));

    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(names.len(), 1);
    assert!(matches!(names[0], GeneralName::URI(u) if *u == id.as_str()));
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let (_, csr_parsed) = X509CertificationRequest::from_der(&csr).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        csr_parsed.certification_request_info.subject_pki.raw
    );

    // The chain verifies against the bundle and yields the id.
    let verified = verify_peer(
        &pki.anchor.bundle(),
        &issued.chain,
        now,
        "cluster.local",
        None,
    )
    .unwrap();
    assert_eq!(verified, id);
    let verified = verify_peer(
        &pki.anchor.bundle(),
        &issued.chain,
        now,
        "cluster.local",
        Some(&id),
    )
    .unwrap();
    assert_eq!(verified, id);
}

#[test]
fn sign_csr_uses_the_lifetime_and_a_minute_of_skew() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("pg", "api");
    let key = WorkloadKey::generate().unwrap();
    let before = whole_secs(SystemTime::now());
    let issued = pki
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), DEFAULT_LEAF_LIFETIME, |_| true)
        .unwrap();
    let after = SystemTime::now();
    assert!(issued.not_before >= before - Duration::from_secs(60));
    assert!(issued.not_before <= after - Duration::from_secs(59));
    assert!(issued.not_after >= before + DEFAULT_LEAF_LIFETIME);
    assert!(issued.not_after <= after + DEFAULT_LEAF_LIFETIME);
    assert_eq!(DEFAULT_LEAF_LIFETIME, Duration::from_secs(86_400));
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let pki = Pki::new("cluster.local");
    let key = WorkloadKey::generate().unwrap();
    let mut csr = key.csr_der(&pki.id("order", "web")).unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = pki.issuer.sign_csr(&csr, HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrSignature), "{err:?}");
}

#[test]
fn garbage_is_not_a_csr() {
    let pki = Pki::new("cluster.local");
    let err = pki
        .issuer
        .sign_csr(b"not a csr", HOUR, |_| true)
        .unwrap_err();
    assert!(matches!(err, Error::CsrParse(_)), "{err:?}");
    let err = pki.issuer.sign_csr(&[], HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrParse(_)), "{err:?}");
}

#[test]
fn csr_for_another_trust_domain_is_refused() {
    let pki = Pki::new("cluster.local");
    let key = WorkloadKey::generate().unwrap();
    let foreign = SpiffeId::new("other.domain", "order", "web").unwrap();
    let err = pki
        .issuer
        .sign_csr(&key.csr_der(&foreign).unwrap(), HOUR, |_| true)
        .unwrap_err();
    match err {
        Error::CsrWrongTrustDomain { expected, found } => {
            assert_eq!(expected, "cluster.local");
            assert_eq!(found, foreign);
        }
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn csr_with_two_sans_is_refused() {
    let pki = Pki::new("cluster.local");
    let two_uris = csr_with_sans(vec![
        uri("spiffe://cluster.local/ns/order/sa/web"),
        uri("spiffe://cluster.local/ns/bank/sa/core"),
    ]);
    let err = pki.issuer.sign_csr(&two_uris, HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrTooManySans { count: 2 }), "{err:?}");
    let uri_and_dns = csr_with_sans(vec![
        uri("spiffe://cluster.local/ns/order/sa/web"),
        SanType::DnsName("web.order".try_into().unwrap()),
    ]);
    let err = pki
        .issuer
        .sign_csr(&uri_and_dns, HOUR, |_| true)
        .unwrap_err();
    assert!(matches!(err, Error::CsrTooManySans { count: 2 }), "{err:?}");
}

#[test]
fn csr_with_only_a_dns_san_or_none_is_refused() {
    let pki = Pki::new("cluster.local");
    let dns_only = csr_with_sans(vec![SanType::DnsName("web.order.svc".try_into().unwrap())]);
    let err = pki.issuer.sign_csr(&dns_only, HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrNoSpiffeId), "{err:?}");
    let none = csr_with_sans(vec![]);
    let err = pki.issuer.sign_csr(&none, HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrNoSpiffeId), "{err:?}");
}

#[test]
fn csr_with_a_uri_that_is_not_a_spiffe_id_is_refused() {
    let pki = Pki::new("cluster.local");
    let csr = csr_with_sans(vec![uri("spiffe://cluster.local/ns/order")]);
    let err = pki.issuer.sign_csr(&csr, HOUR, |_| true).unwrap_err();
    assert!(matches!(err, Error::CsrInvalidId(_)), "{err:?}");
}

#[test]
fn csr_for_an_id_not_entitled_is_refused() {
    let pki = Pki::new("cluster.local");
    let key = WorkloadKey::generate().unwrap();
    let wanted = pki.id("bank", "core");
    let caller = pki.id("order", "web");
    let err = pki
        .issuer
        .sign_csr(&key.csr_der(&wanted).unwrap(), HOUR, |id| id == &caller)
        .unwrap_err();
    assert!(
        matches!(err, Error::NotEntitled { ref id } if id == &wanted),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("spiffe://cluster.local/ns/bank/sa/core")
    );
}

#[test]
fn inverted_validity_is_refused() {
    let pki = Pki::new("cluster.local");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&pki.id("order", "web")).unwrap();
    let now = SystemTime::now();
    let err = pki
        .issuer
        .sign_csr_with_validity(&csr, now, now - HOUR, |_| true)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidValidity { .. }), "{err:?}");
}

#[test]
fn cas_round_trip_through_pem() {
    let pki = Pki::new("cluster.local");
    let anchor = TrustAnchor::from_pem(&pki.anchor.cert_pem(), &pki.anchor.key_pem()).unwrap();
    assert_eq!(anchor.trust_domain(), "cluster.local");
    assert_eq!(anchor.bundle(), pki.anchor.bundle());

    // An issuer made by the reloaded anchor chains to the original bundle.
    let issuer = anchor.issue_issuer(HOUR).unwrap();
    let reloaded = Issuer::from_pem(&issuer.chain_pem(), &issuer.key_pem()).unwrap();
    assert_eq!(reloaded.trust_domain(), "cluster.local");
    assert_eq!(reloaded.chain_pem(), issuer.chain_pem());
    let id = pki.id("order", "web");
    let key = WorkloadKey::generate().unwrap();
    let issued = reloaded
        .sign_csr(&key.csr_der(&id).unwrap(), HOUR, |_| true)
        .unwrap();
    let verified = verify_peer(
        &pki.anchor.bundle(),
        &issued.chain,
        SystemTime::now(),
        "cluster.local",
        None,
    );
    assert_eq!(verified.unwrap(), id);

    // A chain that includes the root loads too; the root is not sent to peers.
    let with_root = format!("{}{}", issuer.chain_pem(), pki.anchor.cert_pem());
    let reloaded = Issuer::from_pem(&with_root, &issuer.key_pem()).unwrap();
    assert_eq!(reloaded.chain_pem(), issuer.chain_pem());
    let issued = reloaded
        .sign_csr(&key.csr_der(&id).unwrap(), HOUR, |_| true)
        .unwrap();
    assert_eq!(issued.chain.len(), 2);

    // The issued chain round-trips too.
    assert_eq!(Issued::from_chain_pem(&issued.chain_pem()).unwrap(), issued);
}

#[test]
fn loading_cas_checks_key_and_ca_flag() {
    let pki = Pki::new("cluster.local");
    let other = Pki::new("cluster.local");
    assert!(matches!(
        TrustAnchor::from_pem(&pki.anchor.cert_pem(), &other.anchor.key_pem()),
        Err(Error::KeyMismatch { .. })
    ));
    assert!(matches!(
        Issuer::from_pem(&pki.issuer.chain_pem(), &other.issuer.key_pem()),
        Err(Error::KeyMismatch { .. })
    ));
    assert!(matches!(
        Issuer::from_pem(&pki.issuer.chain_pem(), "not a key"),
        Err(Error::BadKey { .. })
    ));
    assert!(matches!(
        Issuer::from_pem("", &pki.issuer.key_pem()),
        Err(Error::NoCertificates { .. })
    ));
    let id = pki.id("order", "web");
    let (key, issued) = pki.issue(&id);
    assert!(matches!(
        Issuer::from_pem(&issued.chain_pem(), &key.to_pem()),
        Err(Error::NotACa { .. })
    ));
}

#[test]
fn trust_anchor_refuses_a_bad_trust_domain() {
    assert!(matches!(
        TrustAnchor::generate("Bad.Domain", HOUR),
        Err(Error::BadTrustDomain { .. })
    ));
}

#[test]
fn issuer_never_outlives_its_anchor() {
    let anchor = TrustAnchor::generate("cluster.local", HOUR).unwrap();
    let issuer = anchor.issue_issuer(100 * HOUR).unwrap();
    let chain = CertificateDer::from_pem_slice(issuer.chain_pem().as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(anchor.cert_der()).unwrap();
    assert!(cert.validity().not_after <= root.validity().not_after);
}

#[test]
fn bundles_merge_without_duplicates_and_round_trip() {
    let a = Pki::new("cluster.local");
    let b = Pki::new("cluster.local");
    let merged = a
        .anchor
        .bundle()
        .merge(&b.anchor.bundle())
        .merge(&a.anchor.bundle());
    assert_eq!(merged.roots().len(), 2);
    assert_eq!(merged.roots()[0], *a.anchor.cert_der());
    let back = TrustBundle::from_pem(&merged.to_pem()).unwrap();
    assert_eq!(back, merged);
    assert!(matches!(
        TrustBundle::from_pem("no pem here"),
        Err(Error::NoCertificates { .. })
    ));
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TrustBundle::from_pem(broken),
        Err(Error::BadCertificate { .. })
    ));
}

#[test]
fn workload_key_round_trips_through_pem() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let key = WorkloadKey::generate().unwrap();
    let issued = pki.issue_for(&key, &id);
    let reloaded = WorkloadKey::from_pem(&key.to_pem()).unwrap();
    // The reloaded key matches the leaf made for the original.
    onemesh_identity::CredentialStore::new(
        id.clone(),
        reloaded,
        issued.clone(),
        pki.anchor.bundle(),
    )
    .unwrap();
    // A clone is the same key: it survives a store that was refused and can be used again.
    let kept = key.clone();
    let wrong = pki.issue(&pki.id("order", "other")).1;
    assert!(
        onemesh_identity::CredentialStore::new(id.clone(), key, wrong, pki.anchor.bundle())
            .is_err()
    );
    onemesh_identity::CredentialStore::new(id, kept.clone(), issued, pki.anchor.bundle()).unwrap();
    assert_eq!(kept.to_pem(), kept.clone().to_pem());
    assert!(matches!(
        WorkloadKey::from_pem("nope"),
        Err(Error::BadKey { .. })
    ));
    assert!(!format!("{kept:?}").contains("BEGIN"));
}

#[test]
fn absurd_lifetimes_are_refused_not_panicked_on() {
    assert!(matches!(
        TrustAnchor::generate("cluster.local", Duration::MAX),
        Err(Error::InvalidValidity { .. })
    ));
    let pki = Pki::new("cluster.local");
    assert!(matches!(
        pki.anchor.issue_issuer(Duration::MAX),
        Err(Error::InvalidValidity { .. })
    ));
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&pki.id("order", "web")).unwrap();
    assert!(matches!(
        pki.issuer
            .sign_csr(&csr, Duration::from_secs(u64::MAX / 4), |_| true),
        Err(Error::InvalidValidity { .. })
    ));
    let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    assert!(matches!(
        pki.issuer
            .sign_csr_with_validity(&csr, SystemTime::now(), far, |_| true),
        Err(Error::InvalidValidity { .. })
    ));
}

#[test]
fn short_lived_leaves_are_not_backdated_past_their_renewal_point() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let key = WorkloadKey::generate().unwrap();
    let lifetime = Duration::from_secs(20);
    let issued = pki
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), lifetime, |_| true)
        .unwrap();
    // Backdated by at most a tenth of the lifetime (+1 s of truncation to whole seconds).
    assert!(
        issued.lifetime() <= Duration::from_secs(23),
        "{:?}",
        issued.lifetime()
    );
    assert!(
        issued.lifetime() >= Duration::from_secs(19),
        "{:?}",
        issued.lifetime()
    );
    let delay = onemesh_identity::renewal_delay(&issued, SystemTime::now());
    assert!(
        delay >= Duration::from_secs(9) && delay <= Duration::from_secs(17),
        "{delay:?}"
    );
    // A 24 h leaf keeps the full minute of clock-skew allowance.
    let issued = pki
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), DEFAULT_LEAF_LIFETIME, |_| true)
        .unwrap();
    assert!(issued.lifetime() >= DEFAULT_LEAF_LIFETIME + Duration::from_secs(59));
}

#[test]
fn a_csr_cannot_ask_for_a_ca_or_extra_usages() {
    let pki = Pki::new("cluster.local");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri("spiffe://cluster.local/ns/order/sa/web")];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let issued = pki.issuer.sign_csr(&csr, HOUR, |_| true).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
}

#[test]
fn serials_are_positive_16_byte_and_never_repeat() {
    use x509_parser::prelude::X509Certificate;
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let mut seen = std::collections::BTreeSet::new();
    // The anchor, the issuer (second in a leaf's chain), then leaves.
    let mut certs: Vec<CertificateDer<'static>> = pki.anchor.bundle().roots().to_vec();
    certs.push(pki.issue(&id).1.chain[1].clone());
    for _ in 0..64 {
        certs.push(pki.issue(&id).1.chain[0].clone());
    }
    for der in &certs {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let raw = cert.raw_serial();
        assert_eq!(raw.len(), 16, "serial {raw:02x?}");
        assert_eq!(raw[0] & 0x80, 0, "positive (RFC 5280)");
        assert_ne!(raw[0], 0, "minimal DER integer");
        assert!(seen.insert(raw.to_vec()), "serial repeated");
    }
}
