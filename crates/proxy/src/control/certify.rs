//! [`Certifier`] over `Identity.Certify`: the CSR (made by [`crate::credentials`] from a key that
//! never leaves the proxy) and the bootstrap token go out, the leaf chain comes back.
//!
//! Every outcome is recorded in [`ControlPlane`]: the identity gauge (did the service answer at
//! all?) and the last error, which `/ready` shows while the proxy has no certificate. Retries and
//! renewal timing belong to the credentials task, which calls this again.

use std::sync::Arc;

use onemesh_api::identity::CertifyRequest;
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_identity::{CertificateDer, Issued, SpiffeId};
use tonic::Code;
use tonic::transport::Channel;
use tracing::warn;

use super::{CERTIFY_TIMEOUT, ControlPlane};
use crate::config::BootstrapToken;
use crate::discover::{BoxFuture, Certifier, CertifyError};

/// Obtains this proxy's certificates from the control plane.
#[derive(Clone, Debug)]
pub struct ControlCertifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: IdentityClient<Channel>,
    token: BootstrapToken,
    addr: String,
    id: SpiffeId,
    plane: ControlPlane,
}

impl ControlCertifier {
    /// A certifier sending `token` to the identity service at `addr` (for messages) on behalf of
    /// `id`.
    pub fn new(
        client: IdentityClient<Channel>,
        token: BootstrapToken,
        addr: String,
        id: SpiffeId,
        plane: ControlPlane,
    ) -> Self {
        ControlCertifier {
            inner: Arc::new(Inner {
                client,
                token,
                addr,
                id,
                plane,
            }),
        }
    }
}

/// Whether a status means the service never answered (transport failure, timeout).
fn unreachable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// A failed call: the typed error, what `/ready` should say, and whether the service answered.
type Failure = (CertifyError, String, bool);

impl Inner {
    async fn certify(&self, csr: Vec<u8>) -> Result<Issued, CertifyError> {
        match self.call(csr).await {
            Ok(issued) => {
                self.plane.record_certify(Ok(()));
                Ok(issued)
            }
            Err((error, reason, reachable)) => {
                self.plane.record_certify(Err((reason, reachable)));
                Err(error)
            }
        }
    }

    async fn call(&self, csr: Vec<u8>) -> Result<Issued, Failure> {
        let mut client = self.client.clone();
        let token = self.token.read().map_err(|why| {
            let error = CertifyError::NoToken(why.clone());
            (error, why, false)
        })?;
        let request = CertifyRequest { csr, token };
        let unreachable_because = |why: String| {
            let error = CertifyError::Unreachable(why);
            let reason = error.to_string();
            (error, reason, false)
        };
        let status = match tokio::time::timeout(CERTIFY_TIMEOUT, client.certify(request)).await {
            Err(_) => {
                return Err(unreachable_because(format!(
                    "the control plane's identity service at {} did not answer within {CERTIFY_TIMEOUT:?}",
                    self.addr
                )));
            }
            Ok(Ok(response)) => {
                let chain = response
                    .into_inner()
                    .chain
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                return Issued::from_chain(chain).map_err(|e| {
                    let error = CertifyError::Refused(e);
                    let reason = format!("the control plane sent an unusable certificate: {error}");
                    (error, reason, true)
                });
            }
            Ok(Err(status)) => status,
        };
        if unreachable(status.code()) {
            return Err(unreachable_because(format!(
                "cannot reach the control plane's identity service at {}: {}; is the control plane running?",
                self.addr,
                status.message()
            )));
        }
        // The control plane's own words (e.g. "unknown bootstrap token") go to the log and to
        // `/ready`; the typed error says which id was refused.
        warn!(
            id = %self.id,
            code = ?status.code(),
            "the control plane refused this proxy's certificate request: {}",
            status.message()
        );
        let reason = format!(
            "the control plane refused the certificate request for {} ({:?}): {}; check {}",
            self.id,
            status.code(),
            status.message(),
            crate::config::ENV_IDENTITY_TOKEN
        );
        let error = CertifyError::Refused(onemesh_identity::Error::NotEntitled {
            id: self.id.clone(),
        });
        Err((error, reason, true))
    }
}

impl Certifier for ControlCertifier {
    fn certify(&self, csr_der: Vec<u8>) -> BoxFuture<Result<Issued, CertifyError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.certify(csr_der).await })
    }
}
