//! `Identity.Certify`: signs a proxy's CSR when its bootstrap token entitles the id it asks for.
//!
//! Two ways to prove the right to an id:
//!
//! - A bootstrap token (first certificate). A token entitles exactly one SPIFFE id (the store
//!   says which). The first successful Certify binds the token to the public key of its CSR;
//!   later calls with the same token must use the same key, so a proxy may renew with its token
//!   and its key (`CredentialStore::key`), while a stolen token is useless to anyone else once
//!   the proxy it was made for has started. The bindings are kept in
//!   `<state-dir>/token-bindings.json` (see [`crate::bindings`]): a restarted control plane still
//!   knows them, so a restarted proxy that kept its key gets its certificate by token again, and
//!   a thief's key is still refused.
//! - The current leaf (renewal). A call with no token over a connection on which the client
//!   presented its mesh certificate (verified in the handshake against the bundle) is entitled to
//!   the id of that certificate, and only to it.
//!
//! Either way entitlement is checked again on every call, against the mesh as it is now: the id
//! must be declared (a workload of the store's current [`MeshState`]
//! has its namespace and service account) and not revoked ([`crate::revocations`]). So removing
//! a workload from the mesh, or revoking its id, stops its renewals: a stolen leaf no longer
//! renews itself forever. Leaves already issued keep their lifetime (24 h by default): a revoked
//! or removed workload's leaf stays valid until it expires; there is no CRL or OCSP.
//!
//! Leaves are signed by the CA's current issuer (it may be rotated at any time, see
//! [`crate::pki`]) and never outlive it. `WatchTrust` is served by [`super::trust`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use onemesh_api::identity::identity_server::Identity;
use onemesh_api::identity::{CertifyRequest, CertifyResponse, TrustReport, TrustUpdate};
use onemesh_identity::SpiffeId;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::bindings::{Binding, TokenBindings};
use crate::persist::PersistError;
use crate::pki::CaSnapshot;
use crate::revocations::Revocations;
use crate::server::PeerInfo;
use crate::services::trust::TrustService;
use crate::state::MeshState;
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
        "{0} was revoked by an operator and is never certified again: run the workload under another service account, or ask the operator why"
    )]
    Revoked(SpiffeId),
    #[error(
        "{0} is not declared in the mesh (no workload has namespace {ns} and service account {sa}): declare the workload, or stop this proxy",
        ns = .0.namespace(),
        sa = .0.service_account()
    )]
    Undeclared(SpiffeId),
    #[error(
        "the issuer has expired: the operator must rotate it (`onemesh identity rotate-issuer`)"
    )]
    IssuerExpired,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot record the token's key binding ({0}); retry later")]
    Persist(#[from] PersistError),
    #[error("recording the token's key binding was interrupted; retry later")]
    Interrupted,
}

impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Status {
        let message = e.to_string();
        match e {
            CertifyError::NoToken | CertifyError::UnknownToken => Status::unauthenticated(message),
            CertifyError::NotEntitled { .. }
            | CertifyError::OtherKey
            | CertifyError::Reserved(_)
            | CertifyError::Revoked(_)
            | CertifyError::Undeclared(_) => Status::permission_denied(message),
            CertifyError::Csr(_) | CertifyError::CsrKey(_) => Status::invalid_argument(message),
            CertifyError::Store(
                StoreError::TokenRefused(_)
                | StoreError::NotServiceAccount(_)
                | StoreError::NotBoundToPod(_)
                | StoreError::PodGone(_),
            ) => Status::unauthenticated(message),
            CertifyError::Store(StoreError::NotMeshed(_) | StoreError::ControlNamespace(_)) => {
                Status::permission_denied(message)
            }
            CertifyError::Store(StoreError::Unavailable(_))
            | CertifyError::Persist(_)
            | CertifyError::Interrupted
            | CertifyError::IssuerExpired => Status::unavailable(message),
        }
    }
}

/// What the identity service keeps on disk in the state directory: revoked ids and token
/// bindings.
pub struct IdentityState {
    pub revocations: Arc<Revocations>,
    pub bindings: Arc<TokenBindings>,
}

impl IdentityState {
    /// Loads both files from `state_dir` (absent files: nothing revoked, no token bound).
    /// Blocking I/O.
    pub fn load(state_dir: &Path) -> Result<Self, PersistError> {
        Ok(IdentityState {
            revocations: Arc::new(Revocations::load(state_dir)?),
            bindings: Arc::new(TokenBindings::load(state_dir)?),
        })
    }
}

/// The identity service: the CA (current issuer and bundle), revocations, token bindings,
/// WatchTrust.
pub struct IdentityService {
    ca: watch::Receiver<Arc<CaSnapshot>>,
    trust: TrustService,
    store: Arc<dyn Store>,
    lifetime: Duration,
    revocations: Arc<Revocations>,
    bindings: Arc<TokenBindings>,
}

/// Whether a workload of `state` runs as `id` (same namespace and service account).
fn declared(state: &MeshState, id: &SpiffeId) -> bool {
    state.mesh.runs_as(id.namespace(), id.service_account())
}

impl IdentityService {
    pub fn new(
        ca: watch::Receiver<Arc<CaSnapshot>>,
        trust: TrustService,
        store: Arc<dyn Store>,
        lifetime: Duration,
        state: IdentityState,
    ) -> Self {
        IdentityService {
            ca,
            trust,
            store,
            lifetime,
            revocations: state.revocations,
            bindings: state.bindings,
        }
    }

    /// The revoked ids: the operator's Admin service revokes through this handle.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
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
        // Entitlement is re-checked against the mesh as it is now, whatever the proof.
        if self.revocations.is_revoked(&entitled) {
            return Err(CertifyError::Revoked(entitled));
        }
        let ca = self.ca.borrow().clone();
        if entitled.trust_domain() != ca.issuer.trust_domain()
            || !declared(&self.store.subscribe().borrow(), &entitled)
        {
            return Err(CertifyError::Undeclared(entitled));
        }
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
            let bindings = self.bindings.clone();
            let token = token.to_string();
            // A first use writes the binding to disk (fsync): off the async workers.
            let bound = tokio::task::spawn_blocking(move || bindings.bind(&token, &key))
                .await
                .map_err(|_| CertifyError::Interrupted)??;
            match bound {
                Binding::New | Binding::Same => {}
                Binding::OtherKey => return Err(CertifyError::OtherKey),
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
    onemesh_identity::csr_public_key(csr).map_err(|e| match e {
        onemesh_identity::Error::CsrKey { reason } => CertifyError::CsrKey(reason),
        other => CertifyError::Csr(other),
    })
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
                let status = Status::from(e);
                // A stranger's calls (no or unknown token) are not logged above debug, so that a
                // flood of them cannot flood the log; a refusal to a caller with a proof is.
                if status.code() == tonic::Code::Unauthenticated {
                    tracing::debug!("certify refused: {}", status.message());
                } else {
                    tracing::warn!("certify refused: {}", status.message());
                }
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests;
