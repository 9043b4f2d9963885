//! Mutual TLS between workloads, in memory: who sees whom, which peers are refused and how the
//! refusals are classified, hot swap of the leaf and of the trust bundle.

mod common;

use std::time::SystemTime;

use common::*;
use onemesh_identity::{CredentialStore, HandshakeFailure, VerifyError, peer_id};
use rustls::AlertDescription;

fn failure(result: &Result<(), rustls::Error>) -> HandshakeFailure {
    match result {
        Ok(()) => panic!("expected a handshake failure"),
        Err(e) => HandshakeFailure::from_rustls(e),
    }
}

fn verify_error(result: &Result<(), rustls::Error>) -> VerifyError {
    match result {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => other
            .0
            .downcast_ref::<VerifyError>()
            .cloned()
            .unwrap_or_else(|| panic!("not a VerifyError: {other:?}")),
        other => panic!("expected an InvalidCertificate(Other(VerifyError)), got {other:?}"),
    }
}

#[test]
fn both_sides_see_each_others_spiffe_id() {
    let pki = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (mut c, mut s, outcome) = connect(&client, &server, server.id());
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(peer_id(&c).as_ref(), Some(server.id()));
    assert_eq!(peer_id(&s).as_ref(), Some(client.id()));
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    // The cheapest suite of the mesh's own list, on both sides.
    let suite = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    assert_eq!(c.negotiated_cipher_suite().map(|s| s.suite()), Some(suite));
    assert_eq!(s.negotiated_cipher_suite().map(|s| s.suite()), Some(suite));
    let (at_server, at_client) = exchange(&mut c, &mut s, b"hello over mtls");
    assert_eq!(at_server, b"hello over mtls");
    assert_eq!(at_client, b"hello over mtls");
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (_c, _s, outcome) = connect_with(permissive_client(None), &server);
    assert_eq!(failure(&outcome.server), HandshakeFailure::NoClientCert);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
    assert!(matches!(
        outcome.client,
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
        ))
    ));
}

fn refused_client(pki: &Pki, client: CredentialStore) -> (Outcome, CredentialStore) {
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (_c, _s, outcome) = connect(&client, &server, server.id());
    (outcome, server)
}

#[test]
fn expired_client_leaf_is_refused() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let now = SystemTime::now();
    let (key, issued) = pki.issue_with_validity(&id, now - 2 * HOUR, now - HOUR);
    let client = CredentialStore::new(id, key, issued, pki.anchor.bundle()).unwrap();
    let (outcome, _) = refused_client(&pki, client);
    assert!(matches!(
        verify_error(&outcome.server),
        VerifyError::Expired { .. }
    ));
    assert_eq!(failure(&outcome.server), HandshakeFailure::Expired);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
}

#[test]
fn not_yet_valid_client_leaf_is_refused() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let now = SystemTime::now();
    let (key, issued) = pki.issue_with_validity(&id, now + HOUR, now + 2 * HOUR);
    let client = CredentialStore::new(id, key, issued, pki.anchor.bundle()).unwrap();
    let (outcome, _) = refused_client(&pki, client);
    assert!(matches!(
        verify_error(&outcome.server),
        VerifyError::NotYetValid { .. }
    ));
    assert_eq!(failure(&outcome.server), HandshakeFailure::NotYetValid);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
}

#[test]
fn client_from_an_untrusted_anchor_is_refused() {
    let pki = Pki::new("cluster.local");
    let rogue = Pki::new("cluster.local");
    // The rogue client trusts both roots, so it accepts the server; the server trusts only its own.
    let client = rogue.store(
        "order",
        "web",
        rogue.anchor.bundle().merge(&pki.anchor.bundle()),
    );
    let (outcome, _) = refused_client(&pki, client);
    assert_eq!(verify_error(&outcome.server), VerifyError::UnknownIssuer);
    assert_eq!(failure(&outcome.server), HandshakeFailure::UnknownIssuer);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
}

#[test]
fn server_from_an_untrusted_anchor_is_refused_by_the_client() {
    let pki = Pki::new("cluster.local");
    let rogue = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = rogue.store(
        "pg",
        "api",
        rogue.anchor.bundle().merge(&pki.anchor.bundle()),
    );
    let (_c, _s, outcome) = connect(&client, &server, server.id());
    assert_eq!(verify_error(&outcome.client), VerifyError::UnknownIssuer);
    assert_eq!(failure(&outcome.server), HandshakeFailure::AlertReceived);
}

#[test]
fn server_with_another_identity_is_refused_by_the_client() {
    let pki = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let expected = pki.id("pg", "other");
    let (_c, _s, outcome) = connect(&client, &server, &expected);
    match verify_error(&outcome.client) {
        VerifyError::IdentityMismatch { expected: e, found } => {
            assert_eq!(e, expected);
            assert_eq!(&found, server.id());
        }
        other => panic!("wrong error {other:?}"),
    }
    assert_eq!(failure(&outcome.client), HandshakeFailure::IdentityMismatch);
    assert_eq!(failure(&outcome.server), HandshakeFailure::AlertReceived);
}

#[test]
fn client_from_another_trust_domain_is_refused_even_if_its_root_is_trusted() {
    let pki = Pki::new("cluster.local");
    let other = Pki::new("other.domain");
    let both = pki.anchor.bundle().merge(&other.anchor.bundle());
    let server = pki.store("pg", "api", both.clone());
    let client = other.store("order", "web", both);
    let (_c, _s, outcome) = connect_with(permissive_client(Some(&client)), &server);
    assert!(matches!(
        verify_error(&outcome.server),
        VerifyError::WrongTrustDomain { ref expected, .. } if expected == "cluster.local"
    ));
    assert_eq!(failure(&outcome.server), HandshakeFailure::WrongTrustDomain);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
}

#[test]
fn server_from_another_trust_domain_is_refused_by_the_client() {
    let pki = Pki::new("cluster.local");
    let other = Pki::new("other.domain");
    let both = pki.anchor.bundle().merge(&other.anchor.bundle());
    let client = pki.store("order", "web", both.clone());
    let server = other.store("pg", "api", both);
    let (_c, _s, outcome) = connect(&client, &server, server.id());
    assert_eq!(failure(&outcome.client), HandshakeFailure::WrongTrustDomain);
}

#[test]
fn classification_survives_the_io_error_wrapping_of_tokio_rustls() {
    let pki = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (_c, _s, outcome) = connect_with(permissive_client(None), &server);
    let err = outcome.server.unwrap_err();
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
    assert_eq!(
        HandshakeFailure::from_io(&io),
        HandshakeFailure::NoClientCert
    );
}

#[test]
fn update_swaps_the_leaf_for_new_handshakes_only() {
    let pki = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let server_config_before = server.server_config(&[b"h2"]);

    let (mut c1, mut s1, outcome) = connect(&client, &server, server.id());
    assert!(outcome.is_ok(), "{outcome:?}");
    let first_serial = serial(&c1.peer_certificates().unwrap()[0]);
    assert_eq!(first_serial, serial(server.current().leaf()));

    let renewed = pki.issue_for(server.key(), server.id());
    server.update(renewed.clone()).unwrap();
    assert_eq!(server.current(), renewed);
    assert_eq!(server.not_after(), renewed.not_after);

    // A config made before the update also presents the new leaf.
    let mut c2 = rustls::ClientConnection::new(
        client.client_config(server.id(), &[b"h2"]),
        server.id().tls_server_name(),
    )
    .unwrap();
    let mut s2 = rustls::ServerConnection::new(server_config_before).unwrap();
    let outcome = handshake(&mut c2, &mut s2);
    assert!(outcome.is_ok(), "{outcome:?}");
    let second_serial = serial(&c2.peer_certificates().unwrap()[0]);
    assert_ne!(first_serial, second_serial);
    assert_eq!(second_serial, serial(renewed.leaf()));

    // The connection made before the update still works and still has the old leaf.
    let (at_server, at_client) = exchange(&mut c1, &mut s1, b"still alive");
    assert_eq!(at_server, b"still alive");
    assert_eq!(at_client, b"still alive");
    assert_eq!(serial(&c1.peer_certificates().unwrap()[0]), first_serial);
    let (at_server, _) = exchange(&mut c2, &mut s2, b"new one");
    assert_eq!(at_server, b"new one");
}

#[test]
fn update_bundle_applies_to_existing_configs() {
    let pki = Pki::new("cluster.local");
    let rotated = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let client = rotated.store(
        "order",
        "web",
        rotated.anchor.bundle().merge(&pki.anchor.bundle()),
    );
    let config = client.client_config(server.id(), &[]);
    let server_config = server.server_config(&[]);

    let mut c =
        rustls::ClientConnection::new(config.clone(), server.id().tls_server_name()).unwrap();
    let mut s = rustls::ServerConnection::new(server_config.clone()).unwrap();
    assert_eq!(
        failure(&handshake(&mut c, &mut s).server),
        HandshakeFailure::UnknownIssuer
    );

    server.update_bundle(pki.anchor.bundle().merge(&rotated.anchor.bundle()));
    assert_eq!(server.bundle().roots().len(), 2);
    let mut c = rustls::ClientConnection::new(config, server.id().tls_server_name()).unwrap();
    let mut s = rustls::ServerConnection::new(server_config).unwrap();
    let outcome = handshake(&mut c, &mut s);
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(peer_id(&s).as_ref(), Some(client.id()));
}

#[test]
fn store_refuses_a_leaf_for_another_id_or_key() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("order", "web");
    let (key, issued) = pki.issue(&id);
    let store = CredentialStore::new(id.clone(), key, issued.clone(), pki.anchor.bundle()).unwrap();

    let (_, other_id_leaf) = pki.issue(&pki.id("order", "other"));
    assert!(matches!(
        store.update(other_id_leaf),
        Err(onemesh_identity::Error::IdMismatch { .. })
    ));
    let (_, other_key_leaf) = pki.issue(&id);
    assert!(matches!(
        store.update(other_key_leaf.clone()),
        Err(onemesh_identity::Error::KeyMismatch { .. })
    ));
    let other_key = onemesh_identity::WorkloadKey::generate().unwrap();
    assert!(matches!(
        CredentialStore::new(id, other_key, issued.clone(), pki.anchor.bundle()),
        Err(onemesh_identity::Error::KeyMismatch { .. })
    ));
    // A failed update leaves the current leaf in place.
    assert_eq!(store.current(), issued);
}

#[test]
fn every_connection_does_a_full_handshake() {
    let pki = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let client_config = client.client_config(server.id(), &[]);
    let server_config = server.server_config(&[]);
    for _ in 0..2 {
        let mut c =
            rustls::ClientConnection::new(client_config.clone(), server.id().tls_server_name())
                .unwrap();
        let mut s = rustls::ServerConnection::new(server_config.clone()).unwrap();
        let outcome = handshake(&mut c, &mut s);
        assert!(outcome.is_ok(), "{outcome:?}");
        exchange(&mut c, &mut s, b"x");
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
    }
}

#[test]
fn a_root_of_another_trust_domain_cannot_vouch_for_our_ids() {
    let pki = Pki::new("cluster.local");
    let other = Pki::new("other.domain");
    let both = pki.anchor.bundle().merge(&other.anchor.bundle());
    // The other domain's issuer signs a leaf claiming one of OUR ids (its own `sign_csr` would
    // refuse, so forge it with rcgen directly).
    let id = pki.id("bank", "core");
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rogue_ca = rcgen::Issuer::from_ca_cert_pem(
        &other.issuer.chain_pem(),
        rcgen::KeyPair::from_pem(&other.issuer.key_pem()).unwrap(),
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = (SystemTime::now() - HOUR).into();
    params.not_after = (SystemTime::now() + HOUR).into();
    let leaf = params.signed_by(&leaf_key, &rogue_ca).unwrap();
    let chain_pem = format!("{}{}", leaf.pem(), other.issuer.chain_pem());
    let issued = onemesh_identity::Issued::from_chain_pem(&chain_pem).unwrap();
    assert_eq!(issued.id, id);

    let verdict = onemesh_identity::verify_peer(
        &both,
        &issued.chain,
        SystemTime::now(),
        "cluster.local",
        None,
    );
    assert!(
        matches!(verdict, Err(VerifyError::ChainFromOtherTrustDomain { ref ca_domain, .. }) if ca_domain == "other.domain"),
        "{verdict:?}"
    );

    let key = onemesh_identity::WorkloadKey::from_pem(&leaf_key.serialize_pem()).unwrap();
    let client = CredentialStore::new(id, key, issued, both.clone()).unwrap();
    let server = pki.store("pg", "api", both);
    let (_c, _s, outcome) = connect_with(permissive_client(Some(&client)), &server);
    assert!(matches!(
        verify_error(&outcome.server),
        VerifyError::ChainFromOtherTrustDomain { .. }
    ));
    assert_eq!(failure(&outcome.server), HandshakeFailure::WrongTrustDomain);
}

#[test]
fn optional_client_auth_accepts_no_certificate_and_still_verifies_one() {
    let pki = Pki::new("cluster.local");
    let rogue = Pki::new("cluster.local");
    let control = pki.store("onemesh", "control", pki.anchor.bundle());
    let config = control.server_config_optional_client_auth(&[b"h2"]);

    // A bootstrapping proxy: no certificate, but it checks the control plane's identity.
    let bootstrap =
        onemesh_identity::bootstrap_client_config(&pki.anchor.bundle(), control.id(), &[b"h2"]);
    let mut c =
        rustls::ClientConnection::new(bootstrap.clone(), control.id().tls_server_name()).unwrap();
    let mut s = rustls::ServerConnection::new(config.clone()).unwrap();
    let outcome = handshake(&mut c, &mut s);
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(peer_id(&s), None);
    assert_eq!(peer_id(&c).as_ref(), Some(control.id()));

    // A renewing proxy presents its current leaf: the server sees who it is.
    let proxy = pki.store("order", "web", pki.anchor.bundle());
    let mut c = rustls::ClientConnection::new(
        proxy.client_config(control.id(), &[b"h2"]),
        control.id().tls_server_name(),
    )
    .unwrap();
    let mut s = rustls::ServerConnection::new(config.clone()).unwrap();
    assert!(handshake(&mut c, &mut s).is_ok());
    assert_eq!(peer_id(&s).as_ref(), Some(proxy.id()));

    // A presented certificate from an untrusted root is still refused.
    let impostor = rogue.store(
        "order",
        "web",
        rogue.anchor.bundle().merge(&pki.anchor.bundle()),
    );
    let mut c = rustls::ClientConnection::new(
        impostor.client_config(control.id(), &[b"h2"]),
        control.id().tls_server_name(),
    )
    .unwrap();
    let mut s = rustls::ServerConnection::new(config).unwrap();
    assert_eq!(
        failure(&handshake(&mut c, &mut s).server),
        HandshakeFailure::UnknownIssuer
    );

    // The bootstrap client refuses a server that is not the expected one.
    let not_control = pki.store("onemesh", "other", pki.anchor.bundle());
    let mut c = rustls::ClientConnection::new(bootstrap, control.id().tls_server_name()).unwrap();
    let mut s =
        rustls::ServerConnection::new(not_control.server_config_optional_client_auth(&[b"h2"]))
            .unwrap();
    assert_eq!(
        failure(&handshake(&mut c, &mut s).client),
        HandshakeFailure::IdentityMismatch
    );
}

#[test]
fn tls_1_2_is_refused() {
    let pki = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let client = pki.store("order", "web", pki.anchor.bundle());
    let tls12 = permissive_client_with_versions(Some(&client), &[&rustls::version::TLS12]);
    let (_c, _s, outcome) = connect_with(tls12, &server);
    assert!(
        matches!(outcome.server, Err(rustls::Error::PeerIncompatible(_))),
        "{outcome:?}"
    );
    assert_eq!(failure(&outcome.server), HandshakeFailure::Protocol);
    assert_eq!(failure(&outcome.client), HandshakeFailure::AlertReceived);
}

/// A leaf signed by `pki`'s real issuer with arbitrary SANs and EKUs (what `sign_csr` never makes).
fn forged_chain(
    pki: &Pki,
    sans: Vec<rcgen::SanType>,
    ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pki.issuer.chain_pem(),
        rcgen::KeyPair::from_pem(&pki.issuer.key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.not_before = (SystemTime::now() - HOUR).into();
    params.not_after = (SystemTime::now() + HOUR).into();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let issuer_cert =
        rustls::pki_types::pem::PemObject::from_pem_slice(pki.issuer.chain_pem().as_bytes())
            .unwrap();
    vec![leaf.der().clone(), issuer_cert]
}

#[test]
fn leaves_without_exactly_one_spiffe_id_or_the_right_usage_are_refused() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let pki = Pki::new("cluster.local");
    let bundle = pki.anchor.bundle();
    let now = SystemTime::now();
    let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
    let verify = |chain: &[rustls::pki_types::CertificateDer<'static>]| {
        onemesh_identity::verify_peer(&bundle, chain, now, "cluster.local", None)
    };

    let dns_only = forged_chain(
        &pki,
        vec![rcgen::SanType::DnsName("web.order".try_into().unwrap())],
        vec![ClientAuth],
    );
    let e = verify(&dns_only).unwrap_err();
    assert_eq!(e, VerifyError::NoSpiffeId);
    assert_eq!(
        HandshakeFailure::from_verify(&e),
        HandshakeFailure::NoSpiffeId
    );

    let two = forged_chain(
        &pki,
        vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            uri("spiffe://cluster.local/ns/c/sa/d"),
        ],
        vec![ClientAuth],
    );
    let e = verify(&two).unwrap_err();
    assert_eq!(e, VerifyError::MultipleUriSans { count: 2 });
    assert_eq!(
        HandshakeFailure::from_verify(&e),
        HandshakeFailure::NoSpiffeId
    );

    let not_spiffe = forged_chain(
        &pki,
        vec![uri("https://cluster.local/ns/a/sa/b")],
        vec![ClientAuth],
    );
    let e = verify(&not_spiffe).unwrap_err();
    assert!(matches!(e, VerifyError::InvalidSpiffeId(_)), "{e:?}");

    // A server-only leaf cannot act as a client, and a client-only leaf cannot serve.
    let server_only = forged_chain(
        &pki,
        vec![uri("spiffe://cluster.local/ns/a/sa/b")],
        vec![ServerAuth],
    );
    assert_eq!(
        verify(&server_only).unwrap_err(),
        VerifyError::InvalidPurpose
    );
    let client_only = forged_chain(
        &pki,
        vec![uri("spiffe://cluster.local/ns/a/sa/b")],
        vec![ClientAuth],
    );
    let expected = pki.id("a", "b");
    assert_eq!(
        onemesh_identity::verify_peer(&bundle, &client_only, now, "cluster.local", Some(&expected))
            .unwrap_err(),
        VerifyError::InvalidPurpose
    );
    assert_eq!(verify(&client_only).unwrap(), expected);

    // Without the issuer in the presented chain, the leaf does not reach the root.
    assert_eq!(
        verify(&client_only[..1]).unwrap_err(),
        VerifyError::UnknownIssuer
    );
}
