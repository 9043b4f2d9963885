//! Workload identity for onemesh: SPIFFE ids, the certificate authorities that issue them, and
//! the rustls configurations that prove and check them in mTLS.
//!
//! What is here:
//! - [`SpiffeId`]: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, strictly parsed.
//! - [`TrustAnchor`] (root CA) → [`Issuer`] (intermediate CA) → workload leaf, all ECDSA P-256.
//!   The issuer signs a workload's CSR ([`WorkloadKey::csr_der`]) after checking its signature,
//!   that it asks for exactly one SPIFFE id in the issuer's trust domain, and that the caller is
//!   entitled to that id (a callback: the control plane decides, e.g. from a service-account
//!   token). The result is an [`Issued`] chain, leaf first. [`csr_public_key`] reads the key a
//!   CSR asks to certify (the control plane binds a bootstrap token to it).
//! - [`TrustBundle`]: always a set of roots, so a root can be rotated.
//! - [`CredentialStore`]: the workload's key and current leaf, hot-swappable; it builds rustls
//!   [`ServerConfig`](rustls::ServerConfig)s that require and verify a client SPIFFE id and
//!   [`ClientConfig`](rustls::ClientConfig)s that accept only the expected server id. TLS 1.3
//!   only, the `ring` provider always passed explicitly (never the process default), session
//!   resumption off so every connection verifies its peer. For bootstrap (a proxy's first CSR,
//!   before it has a certificate) there are [`CredentialStore::server_config_optional_client_auth`]
//!   and [`bootstrap_client_config`].
//! - [`peer_id`] after a handshake, [`renewal_delay`] (70 % ± 5 % of the leaf's life), and
//!   [`HandshakeFailure`], a bounded classification of handshake errors for metrics.
//!
//! What it deliberately does not do:
//! - No network I/O, no files, no clocks other than `SystemTime::now()` where documented: the
//!   proxy and the control plane own transport, storage and scheduling.
//! - No revocation (CRL/OCSP): leaves live 24 h and are renewed at ~70 %.
//! - No federation: a peer must be in our own trust domain even if another domain's root is in
//!   the bundle.
//! - No DNS-name checks: the SPIFFE id in the URI SAN is the identity; the TLS server name is
//!   ignored by the verifiers.
//! - No automatic renewal loop: callers schedule it with [`renewal_delay`] and call
//!   [`CredentialStore::update`].
//!
//! The whole flow, as the control plane and a proxy split it:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use onemesh_identity::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Control plane: a root for the trust domain and an issuer under it.
//! let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(365 * 86_400))?;
//! let issuer = anchor.issue_issuer(Duration::from_secs(30 * 86_400))?;
//!
//! // Proxy: its own key, a CSR for its id.
//! let id: SpiffeId = "spiffe://cluster.local/ns/order/sa/web".parse()?;
//! let key = WorkloadKey::generate()?;
//! let csr = key.csr_der(&id)?;
//!
//! // Control plane: sign it if the caller is entitled to that id.
//! let issued = issuer.sign_csr(&csr, DEFAULT_LEAF_LIFETIME, |asked| asked == &id)?;
//!
//! // Proxy: serve and dial with it; renew later with the same key.
//! let store = CredentialStore::new(id.clone(), key, issued, anchor.bundle())?;
//! let _server = store.server_config(&[b"h2"]);
//! let pg: SpiffeId = "spiffe://cluster.local/ns/pg/sa/api".parse()?;
//! let _client = store.client_config(&pg, &[b"h2"]);
//! let wait = renewal_delay(&store.current(), SystemTime::now());
//! assert!(wait > Duration::from_secs(15 * 3600) && wait < Duration::from_secs(19 * 3600));
//! # Ok(())
//! # }
//! ```

mod bundle;
mod ca;
mod error;
mod failure;
mod id;
mod key;
mod pem;
mod renew;
mod store;
mod verify;
mod x509;

pub use bundle::TrustBundle;
pub use ca::{DEFAULT_LEAF_LIFETIME, Issued, Issuer, TrustAnchor, csr_public_key};
pub use error::Error;
pub use failure::HandshakeFailure;
pub use id::{DEFAULT_TRUST_DOMAIN, IdError, SpiffeId};
pub use key::WorkloadKey;
pub use renew::renewal_delay;
pub use rustls_pki_types::CertificateDer;
pub use store::{CredentialStore, bootstrap_client_config};
pub use verify::{VerifyError, peer_id, verify_peer};
