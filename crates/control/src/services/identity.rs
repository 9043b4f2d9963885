//! `Identity.Certify`: signs a proxy's CSR when its bootstrap token entitles the id it asks for.
//!
//! Two ways to prove the right to an id:
//!
//! - A bootstrap token (first certificate). A token entitles exactly one SPIFFE id (the store
//!   says which). The first successful Certify binds the token to the public key of its CSR;
//!   later calls with the same token must use the same key, so a proxy may renew with its token
//!   and its key (`CredentialStore::key`), while a stolen token is useless to anyone else once
//!   the proxy it was made for has started. Bindings live in the control plane's memory: a
//!   restarted control plane binds each token again on its next use (`onemesh up` hands out new
//!   tokens when it restarts the mesh anyway).
//! - The current leaf (renewal). A call with no token over a connection on which the client
//!   presented its mesh certificate (verified in the handshake against the bundle) is entitled to
//!   the id of that certificate, and only to it.
//!
//! Leaves are signed by the CA's current issuer (it may be rotated at any time, see
//! [`crate::pki`]) and never outlive it. `WatchTrust` is served by [`super::trust`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use onemesh_api::identity::identity_server::Identity;
use onemesh_api::identity::{CertifyRequest, CertifyResponse, TrustReport, TrustUpdate};
use onemesh_identity::SpiffeId;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::pki::CaSnapshot;
use crate::server::PeerInfo;
use crate::services::trust::TrustService;
use crate::store::{Store, StoreError};

/// Why a Certify call was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error(
        "no bootstrap token and no client certificate: send the token `onemesh up` gave this proxy, or renew over a connection presenting the current certificate"
    )]
    NoToken,
    #[error("unknown bootstrap token: send the token `onemesh up` gave this proxy")]
    UnknownToken,
    #[error("the {proof} entitles {entitled}, not the id the csr asks for: ask for {entitled}")]
    NotEntitled {
        proof: &'static str,
        entitled: SpiffeId,
    },
    #[error(
        "the token is already bound to another key: renew with the key that first used it, or get a new token"
    )]
    OtherKey,
    #[error("the csr was refused: {0}")]
    Csr(#[source] onemesh_identity::Error),
    #[error("cannot read the public key of the csr ({0}): send a DER PKCS#10 request")]
    CsrKey(String),
    #[error(
        "{0} is the control plane's own or the operator's identity and is never issued to a proxy: give the workload another namespace or service account"
    )]
    Reserved(SpiffeId),
    #[error(
        "the issuer has expired: the operator must rotate it (`onemesh identity rotate-issuer`)"
    )]
    IssuerExpired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Status {
        let message = e.to_string();
        match e {
            CertifyError::NoToken | CertifyError::UnknownToken => Status::unauthenticated(message),
            CertifyError::NotEntitled { .. }
            | CertifyError::OtherKey
            | CertifyError::Reserved(_) => Status::permission_denied(message),
            CertifyError::Csr(_) | CertifyError::CsrKey(_) => Status::invalid_argument(message),
            CertifyError::Store(_) | CertifyError::IssuerExpired => Status::unavailable(message),
        }
    }
}

/// The identity service: the CA (current issuer and bundle), the token bindings, WatchTrust.
pub struct IdentityService {
    ca: watch::Receiver<Arc<CaSnapshot>>,
    trust: TrustService,
    store: Arc<dyn Store>,
    lifetime: Duration,
    /// Token → DER SubjectPublicKeyInfo of the first key that used it.
    bindings: Mutex<HashMap<String, Vec<u8>>>,
}

impl IdentityService {
    pub fn new(
        ca: watch::Receiver<Arc<CaSnapshot>>,
        trust: TrustService,
        store: Arc<dyn Store>,
        lifetime: Duration,
    ) -> Self {
        IdentityService {
            ca,
            trust,
            store,
            lifetime,
            bindings: Mutex::new(HashMap::new()),
        }
    }

    /// Certify without the gRPC wrapping. `peer` is the id of the client certificate presented
    /// on the connection, if any; it is used only when no token is sent.
    pub async fn certify(
        &self,
        csr: &[u8],
        token: &str,
        peer: Option<&SpiffeId>,
    ) -> Result<CertifyResponse, CertifyError> {
        let (proof, entitled) = match (token, peer) {
            ("", Some(peer)) => ("client certificate", peer.clone()),
            ("", None) => return Err(CertifyError::NoToken),
            (token, _) => (
                "token",
                self.store
                    .token_identity(token)
                    .await?
                    .ok_or(CertifyError::UnknownToken)?,
            ),
        };
        // Proxies trust the control plane by its id: whoever holds a leaf for it could answer in
        // its place (endpoints, policy); the operator's may rotate the CA. Neither is issued,
        // whatever a token or mesh.yaml says.
        if crate::pki::is_reserved(&entitled) {
            return Err(CertifyError::Reserved(entitled));
        }
        let ca = self.ca.borrow().clone();
        let lifetime = ca
            .leaf_lifetime(self.lifetime, std::time::SystemTime::now())
            .ok_or(CertifyError::IssuerExpired)?;
        let issued = ca
            .issuer
            .sign_csr(csr, lifetime, |asked| asked == &entitled)
            .map_err(|e| match e {
                onemesh_identity::Error::NotEntitled { .. } => CertifyError::NotEntitled {
                    proof,
                    entitled: entitled.clone(),
                },
                other => CertifyError::Csr(other),
            })?;
        if !token.is_empty() {
            let key = csr_public_key(csr)?;
            let mut bindings = self.bindings.lock().unwrap_or_else(PoisonError::into_inner);
            let bound = bindings
                .entry(token.to_string())
                .or_insert_with(|| key.clone());
            if *bound != key {
                return Err(CertifyError::OtherKey);
            }
        }
        let unix = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        tracing::info!(id = %issued.id, not_after = unix(issued.not_after), "certified");
        Ok(CertifyResponse {
            identity: issued.id.to_string(),
            chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
            chain_pem: issued.chain_pem(),
            trust_anchors: ca.bundle.roots().iter().map(|c| c.to_vec()).collect(),
            trust_anchors_pem: ca.bundle.to_pem(),
            not_before_unix_secs: unix(issued.not_before),
            not_after_unix_secs: unix(issued.not_after),
        })
    }
}

/// The DER SubjectPublicKeyInfo a CSR asks to certify.
fn csr_public_key(csr: &[u8]) -> Result<Vec<u8>, CertifyError> {
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(csr)
        .map_err(|e| CertifyError::CsrKey(e.to_string()))?;
    Ok(req.certification_request_info.subject_pki.raw.to_vec())
}

#[tonic::async_trait]
impl Identity for IdentityService {
    type WatchTrustStream = crate::services::WatchStream<TrustUpdate>;

    async fn watch_trust(
        &self,
        request: Request<tonic::Streaming<TrustReport>>,
    ) -> Result<Response<Self::WatchTrustStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        match self.trust.watch(peer.as_ref(), request.into_inner()) {
            Ok(stream) => Ok(Response::new(stream)),
            Err(e) => {
                tracing::warn!("watch trust refused: {e}");
                Err(e.into())
            }
        }
    }

    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.id.clone());
        let req = request.into_inner();
        match IdentityService::certify(self, &req.csr, &req.token, peer.as_ref()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => {
                tracing::warn!("certify refused: {e}");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests;
