//! The workload's current credentials (key + issued chain) and the rustls configs built on them.
//!
//! A [`CredentialStore`] is a cheap handle (an `Arc` inside). Configs made from it resolve the
//! certificate per handshake, so [`CredentialStore::update`] takes effect on the next handshake
//! while established connections keep the keys they negotiated. The same goes for the trust
//! bundle ([`CredentialStore::update_bundle`]). Session resumption is off on both sides so that
//! every connection verifies the peer's certificate against the current bundle and clock.
//!
//! The store does no renewal itself: the caller asks [`crate::renewal_delay`] when to make a new
//! CSR (with [`CredentialStore::key`]) and calls `update` with the result. It does not check the
//! new leaf's validity or chain either: a workload serves whatever it was last issued, and its
//! peers' verifiers decide.

use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::verify::{ClientIdVerifier, ServerIdVerifier, SharedBundle};
use crate::x509::CertInfo;
use crate::{Error, Issued, SpiffeId, TrustBundle, WorkloadKey};

/// A workload's current credentials (key + issued chain), hot-swappable.
#[derive(Clone)]
pub struct CredentialStore {
    inner: Arc<Inner>,
}

struct Inner {
    id: SpiffeId,
    key: WorkloadKey,
    current: RwLock<Current>,
    bundle: SharedBundle,
}

#[derive(Clone)]
struct Current {
    issued: Arc<Issued>,
    certified: Arc<CertifiedKey>,
}

impl CredentialStore {
    /// Makes a store; fails if `issued` is not for `id` or its leaf is not for `key`.
    pub fn new(
        id: SpiffeId,
        key: WorkloadKey,
        issued: Issued,
        bundle: TrustBundle,
    ) -> Result<Self, Error> {
        let current = Current::check(&id, &key, issued)?;
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                key,
                current: RwLock::new(current),
                bundle: SharedBundle::new(bundle),
            }),
        })
    }

    /// Swaps in a new leaf (same checks as [`CredentialStore::new`]); new handshakes present it.
    pub fn update(&self, issued: Issued) -> Result<(), Error> {
        let current = Current::check(&self.inner.id, &self.inner.key, issued)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = current;
        Ok(())
    }

    /// Swaps in a new trust bundle; verifiers of existing configs use it from the next handshake.
    pub fn update_bundle(&self, bundle: TrustBundle) {
        self.inner.bundle.set(bundle);
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.inner.bundle.get().bundle.clone()
    }

    /// This workload's id.
    pub fn id(&self) -> &SpiffeId {
        &self.inner.id
    }

    /// The current leaf and chain (expiry for metrics and the CLI).
    pub fn current(&self) -> Issued {
        Issued::clone(&self.read().issued)
    }

    /// When the current leaf expires (cheaper than `current().not_after`: no chain copy).
    pub fn not_after(&self) -> SystemTime {
        self.read().issued.not_after
    }

    /// The workload key, to make the next CSR with.
    pub fn key(&self) -> &WorkloadKey {
        &self.inner.key
    }

    /// A rustls server config (TLS 1.3 only, ring provider) that presents the current leaf and
    /// requires a client certificate chaining to the bundle, from our trust domain, with a
    /// SPIFFE id, valid now. `alpn` is set as given.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        self.make_server_config(alpn, true)
    }

    /// Like [`CredentialStore::server_config`], but a client without a certificate is accepted
    /// (its [`crate::peer_id`] is `None`); a client that presents one is verified the same way.
    /// For the control plane's identity service, where a proxy's first CSR comes before it has
    /// any certificate, and renewals can be authenticated by the current leaf.
    pub fn server_config_optional_client_auth(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        self.make_server_config(alpn, false)
    }

    fn make_server_config(&self, alpn: &[&[u8]], client_auth_mandatory: bool) -> Arc<ServerConfig> {
        let verifier = ClientIdVerifier::new(
            self.inner.bundle.clone(),
            self.inner.id.trust_domain().to_string(),
            client_auth_mandatory,
        );
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|_| unreachable_tls13())
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = alpn_list(alpn);
        // No resumption: a resumed session skips certificate verification, so a peer would keep
        // its identity past a bundle change or its leaf's expiry.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// A rustls client config (TLS 1.3 only, ring provider) that presents the current leaf and
    /// accepts only a server whose chain builds to the bundle and whose id is `expected_server`.
    /// The server name given to `ClientConnection::new` is not checked (see
    /// [`SpiffeId::tls_server_name`] for a good value). Build one per expected server and reuse
    /// it: the config picks up leaf and bundle updates by itself.
    pub fn client_config(&self, expected_server: &SpiffeId, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let verifier = ServerIdVerifier::new(
            self.inner.bundle.clone(),
            self.inner.id.trust_domain().to_string(),
            expected_server.clone(),
        );
        client_config_with(verifier, Some(self.clone()), alpn)
    }

    fn read(&self) -> Current {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A rustls client config for a workload that has no certificate yet (bootstrap): it verifies
/// the server exactly like [`CredentialStore::client_config`] (chain to `bundle`, id equal to
/// `expected_server`, which also sets the trust domain) and presents no certificate.
pub fn bootstrap_client_config(
    bundle: &TrustBundle,
    expected_server: &SpiffeId,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let verifier = ServerIdVerifier::new(
        SharedBundle::new(bundle.clone()),
        expected_server.trust_domain().to_string(),
        expected_server.clone(),
    );
    client_config_with(verifier, None, alpn)
}

fn client_config_with(
    verifier: ServerIdVerifier,
    cert: Option<CredentialStore>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable_tls13())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert {
        Some(store) => builder.with_client_cert_resolver(Arc::new(store)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn_list(alpn);
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

/// The TLS 1.3 cipher suites of mesh connections, in order of preference. Both ends are onemesh,
/// so there is no peer to stay compatible with: AES-128-GCM first (with AES-NI the cheapest of
/// the three: 10 AES rounds against AES-256's 14, for a 128-bit key that is still the standard's
/// mandatory suite), and ChaCha20-Poly1305 stays offered for a peer that prefers it (a build for
/// CPUs without AES instructions would). AES-256-GCM is left out, as Linkerd's proxy also narrows
/// its list. The server follows the client's order.
const CIPHER_SUITES: [rustls::SupportedCipherSuite; 2] = [
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The ring provider with [`CIPHER_SUITES`], made once and shared by every config (never the
/// process default).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: CIPHER_SUITES.to_vec(),
                ..rustls::crypto::ring::default_provider()
            })
        })
        .clone()
}

/// [`CIPHER_SUITES`] are TLS 1.3 suites, so `with_protocol_versions(TLS13)` cannot fail here;
/// this is the one place that would notice if that ever changed.
fn unreachable_tls13() -> ! {
    panic!("the ring crypto provider must support tls 1.3")
}

impl Current {
    fn check(id: &SpiffeId, key: &WorkloadKey, issued: Issued) -> Result<Self, Error> {
        if &issued.id != id {
            return Err(Error::IdMismatch {
                expected: id.clone(),
                found: issued.id,
            });
        }
        let leaf = issued
            .chain
            .first()
            .ok_or(Error::NoCertificates { what: "leaf chain" })?;
        let info = CertInfo::parse(leaf).map_err(|e| Error::BadCertificate {
            what: "leaf",
            reason: e.to_string(),
        })?;
        if info.spiffe_id().ok().as_ref() != Some(id) {
            return Err(Error::NoSpiffeId {
                what: "leaf",
                reason: format!("the leaf's uri san is not {id}"),
            });
        }
        if info.spki != key.spki() {
            return Err(Error::KeyMismatch { what: "leaf" });
        }
        let certified = Arc::new(CertifiedKey::new(issued.chain.clone(), key.signer()));
        Ok(Self {
            issued: Arc::new(issued),
            certified,
        })
    }
}

impl ResolvesServerCert for CredentialStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().certified)
    }
}

impl ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.read().certified)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.read();
        f.debug_struct("CredentialStore")
            .field("id", &self.inner.id)
            .field("not_before", &current.issued.not_before)
            .field("not_after", &current.issued.not_after)
            .finish_non_exhaustive()
    }
}
