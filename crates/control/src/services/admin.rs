//! The `Admin` service, on the identity listener: the operator's calls (anchor and issuer
//! rotation, revocation, trust status).
//!
//! Every call needs a client certificate for `spiffe://<td>/ns/onemesh/sa/operator`, verified in
//! the TLS handshake against the bundle: no certificate is UNAUTHENTICATED, any other id
//! PERMISSION_DENIED. The identity service never certifies that id for a proxy; the control plane
//! writes the operator's credentials to the state directory (`operator.crt`, `operator.key`, see
//! [`crate::pki`]) for `onemesh`, running as the same user.
//!
//! A rotation runs to its end in the control plane whether or not the caller keeps reading its
//! progress stream; a second rotation while one is under way is FAILED_PRECONDITION.

use std::sync::Arc;

use onemesh_api::admin::admin_server::Admin;
use onemesh_api::admin::{
    RevokeRequest, RevokeResponse, RotateRequest, RotationProgress, TrustRequest, TrustStatus,
};
use onemesh_identity::SpiffeId;
use tokio::sync::watch;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::pki::PkiError;
use crate::pki::cert::CertSummary;
use crate::pki::rotation::{RotateError, Rotator};
use crate::pki::state::{CaSnapshot, RotationKind};
use crate::revocations::Revocations;
use crate::server::PeerInfo;
use crate::services::WatchStream;
use crate::services::trust::Registry;

/// Why an Admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the Admin service needs the operator's client certificate: use operator.crt and operator.key from the control plane's state directory"
    )]
    NoCertificate,
    #[error("{0} is not the operator ({1}): only the operator may call the Admin service")]
    NotOperator(SpiffeId, SpiffeId),
    #[error(transparent)]
    Rotate(#[from] RotateError),
    #[error(
        "{0:?} is not a spiffe id: {1}; pass spiffe://<trust-domain>/ns/<namespace>/sa/<account>"
    )]
    BadId(String, onemesh_identity::IdError),
    #[error("cannot store the revocation: {0}; check the control plane's state directory")]
    Store(String),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let message = e.to_string();
        match e {
            AdminError::NoCertificate => Status::unauthenticated(message),
            AdminError::NotOperator(..) => Status::permission_denied(message),
            AdminError::Rotate(RotateError::InProgress(_))
            | AdminError::Rotate(RotateError::Pki(PkiError::NoAnchorKey))
            | AdminError::Rotate(RotateError::Pki(PkiError::AnchorNotTrusted))
            | AdminError::Rotate(RotateError::Pki(PkiError::RotationUnderWay(_))) => {
                Status::failed_precondition(message)
            }
            AdminError::Rotate(RotateError::Pki(_)) | AdminError::Rotate(RotateError::Stopped) => {
                Status::unavailable(message)
            }
            AdminError::BadId(..) => Status::invalid_argument(message),
            AdminError::Store(_) => Status::unavailable(message),
        }
    }
}

/// The Admin service.
pub struct AdminService {
    operator: SpiffeId,
    rotator: Arc<Rotator>,
    registry: Arc<Registry>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    revocations: Arc<Revocations>,
}

impl AdminService {
    pub fn new(
        operator: SpiffeId,
        rotator: Arc<Rotator>,
        registry: Arc<Registry>,
        ca: watch::Receiver<Arc<CaSnapshot>>,
        revocations: Arc<Revocations>,
    ) -> Self {
        AdminService {
            operator,
            rotator,
            registry,
            ca,
            revocations,
        }
    }

    /// Only the operator passes.
    pub fn authorize(&self, peer: Option<&PeerInfo>) -> Result<(), AdminError> {
        match peer.and_then(|p| p.id.as_ref()) {
            None => Err(AdminError::NoCertificate),
            Some(id) if *id == self.operator => Ok(()),
            Some(id) => Err(AdminError::NotOperator(id.clone(), self.operator.clone())),
        }
    }

    /// Anchors, issuer, every connected proxy, the rotation under way.
    pub fn trust(&self) -> TrustStatus {
        let ca = self.ca.borrow().clone();
        TrustStatus {
            anchors: ca
                .bundle
                .roots()
                .iter()
                .filter_map(|root| CertSummary::parse(root).ok())
                .map(|c| c.to_api())
                .collect(),
            issuer: Some(ca.issuer_summary.to_api()),
            proxies: self.registry.proxies(&ca),
            revoked: self
                .revocations
                .list()
                .iter()
                .map(ToString::to_string)
                .collect(),
            rotation: self.rotator.status(),
        }
    }

    async fn rotate(
        &self,
        request: Request<RotateRequest>,
        kind: RotationKind,
    ) -> Result<Response<WatchStream<RotationProgress>>, Status> {
        self.check(&request)?;
        let deadline = std::time::Duration::from_secs(request.get_ref().deadline_secs);
        let progress = self
            .rotator
            .start(kind, Some(deadline))
            .await
            .map_err(|e| {
                tracing::warn!(?kind, "rotation refused: {e}");
                Status::from(AdminError::from(e))
            })?;
        tracing::info!(?kind, "rotation started by the operator");
        let stream = futures_util::StreamExt::map(UnboundedReceiverStream::new(progress), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.authorize(request.extensions().get::<PeerInfo>())
            .map_err(|e| {
                tracing::warn!("admin call refused: {e}");
                e.into()
            })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type RotateAnchorStream = WatchStream<RotationProgress>;
    type RotateIssuerStream = WatchStream<RotationProgress>;

    async fn rotate_anchor(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<Self::RotateAnchorStream>, Status> {
        self.rotate(request, RotationKind::Anchor).await
    }

    async fn rotate_issuer(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<Self::RotateIssuerStream>, Status> {
        self.rotate(request, RotationKind::Issuer).await
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        self.check(&request)?;
        let raw = request.into_inner().id;
        let id: SpiffeId = raw
            .trim()
            .parse()
            .map_err(|e| Status::from(AdminError::BadId(raw.clone(), e)))?;
        // Certify by token and by leaf refuse it from now on; the file write is blocking I/O.
        let revocations = self.revocations.clone();
        let revoked = id.clone();
        let newly_revoked = tokio::task::spawn_blocking(move || revocations.revoke(&revoked))
            .await
            .map_err(|e| Status::from(AdminError::Store(e.to_string())))?
            .map_err(|e| Status::from(AdminError::Store(e.to_string())))?;
        tracing::warn!(%id, newly_revoked, "revoked by the operator");
        Ok(Response::new(RevokeResponse { newly_revoked }))
    }

    async fn trust(&self, request: Request<TrustRequest>) -> Result<Response<TrustStatus>, Status> {
        self.check(&request)?;
        Ok(Response::new(AdminService::trust(self)))
    }
}
