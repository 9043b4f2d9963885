//! Shared helpers for the integration tests: a test PKI and an in-memory TLS driver.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use onemesh_identity::{
    CredentialStore, Issued, Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection, SignatureScheme,
};

pub const HOUR: Duration = Duration::from_secs(3600);

/// A trust anchor and one issuer under it.
pub struct Pki {
    pub anchor: TrustAnchor,
    pub issuer: Issuer,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Self {
        let anchor = TrustAnchor::generate(trust_domain, 24 * HOUR * 365).unwrap();
        let issuer = anchor.issue_issuer(24 * HOUR * 30).unwrap();
        Self { anchor, issuer }
    }

    pub fn id(&self, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(self.issuer.trust_domain(), ns, sa).unwrap()
    }

    /// A key and a 24 h leaf for `id`.
    pub fn issue(&self, id: &SpiffeId) -> (WorkloadKey, Issued) {
        let key = WorkloadKey::generate().unwrap();
        let issued = self.issue_for(&key, id);
        (key, issued)
    }

    pub fn issue_for(&self, key: &WorkloadKey, id: &SpiffeId) -> Issued {
        let csr = key.csr_der(id).unwrap();
        self.issuer.sign_csr(&csr, 24 * HOUR, |_| true).unwrap()
    }

    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (WorkloadKey, Issued) {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_der(id).unwrap();
        let issued = self
            .issuer
            .sign_csr_with_validity(&csr, not_before, not_after, |_| true)
            .unwrap();
        (key, issued)
    }

    /// A credential store for `ns/sa` trusting `bundle`.
    pub fn store(&self, ns: &str, sa: &str, bundle: TrustBundle) -> CredentialStore {
        let id = self.id(ns, sa);
        let (key, issued) = self.issue(&id);
        CredentialStore::new(id, key, issued, bundle).unwrap()
    }
}

/// What each side of an in-memory handshake ended with.
#[derive(Debug)]
pub struct Outcome {
    pub client: Result<(), rustls::Error>,
    pub server: Result<(), rustls::Error>,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        self.client.is_ok() && self.server.is_ok()
    }
}

/// Runs a handshake between two in-memory connections until no more bytes move.
pub fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Outcome {
    let mut client_result = Ok(());
    let mut server_result = Ok(());
    for _ in 0..32 {
        let to_server = client_to_server(client, server);
        if to_server > 0
            && server_result.is_ok()
            && let Err(e) = server.process_new_packets()
        {
            server_result = Err(e);
        }
        let to_client = server_to_client(server, client);
        if to_client > 0
            && client_result.is_ok()
            && let Err(e) = client.process_new_packets()
        {
            client_result = Err(e);
        }
        if to_server == 0 && to_client == 0 {
            break;
        }
    }
    // A side that finished without error must really be done with the handshake.
    if client_result.is_ok() && client.is_handshaking() {
        panic!("client still handshaking: {server_result:?}");
    }
    if server_result.is_ok() && server.is_handshaking() {
        panic!("server still handshaking: {client_result:?}");
    }
    Outcome {
        client: client_result,
        server: server_result,
    }
}

pub fn client_to_server(client: &mut ClientConnection, server: &mut ServerConnection) -> usize {
    let mut buf = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        server.read_tls(&mut rd).unwrap();
    }
    buf.len()
}

pub fn server_to_client(server: &mut ServerConnection, client: &mut ClientConnection) -> usize {
    let mut buf = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
    }
    buf.len()
}

/// Sends `msg` from client to server and back, returning what each side read.
pub fn exchange(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
    msg: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    client.writer().write_all(msg).unwrap();
    client_to_server(client, server);
    server.process_new_packets().unwrap();
    let mut at_server = vec![0u8; msg.len()];
    server.reader().read_exact(&mut at_server).unwrap();
    server.writer().write_all(&at_server).unwrap();
    server_to_client(server, client);
    client.process_new_packets().unwrap();
    let mut at_client = vec![0u8; msg.len()];
    client.reader().read_exact(&mut at_client).unwrap();
    (at_server, at_client)
}

/// A connected pair from a store's configs.
pub fn connect(
    client: &CredentialStore,
    server: &CredentialStore,
    expected: &SpiffeId,
) -> (ClientConnection, ServerConnection, Outcome) {
    connect_with(client.client_config(expected, &[b"h2"]), server)
}

pub fn connect_with(
    client_config: Arc<ClientConfig>,
    server: &CredentialStore,
) -> (ClientConnection, ServerConnection, Outcome) {
    let mut c =
        ClientConnection::new(client_config, ServerName::try_from("server.test").unwrap()).unwrap();
    let mut s = ServerConnection::new(server.server_config(&[b"h2"])).unwrap();
    let outcome = handshake(&mut c, &mut s);
    (c, s, outcome)
}

/// A client config that presents `store`'s certificate (or none) and accepts any server: used to
/// reach the server's verifier with a client the real client config would never let through.
pub fn permissive_client(store: Option<&CredentialStore>) -> Arc<ClientConfig> {
    permissive_client_with_versions(store, &[&rustls::version::TLS13])
}

/// Same as [`permissive_client`], offering only `versions`.
pub fn permissive_client_with_versions(
    store: Option<&CredentialStore>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match store {
        Some(store) => builder.with_client_cert_resolver(Arc::new(store.clone())),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The serial number of a certificate.
pub fn serial(cert: &CertificateDer<'_>) -> Vec<u8> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    parsed.raw_serial().to_vec()
}
