//! The egress stage of the outbound stack: a request for a name outside the mesh is forwarded
//! plain (HTTP/1.1, `tls="no_identity"`) to its original destination when it was redirected, else
//! to the name as written.
//!
//! A request without an original destination carries this proxy's random `onemesh-egress-id` out;
//! one that comes back with it (its destination is the proxy itself, e.g. `Host:` set to the
//! proxy's own port) is answered `502 loop_detected` instead of going round until the proxy runs
//! out of sockets. A redirected request cannot come back (the proxy's own connections are not
//! redirected), so it carries no id.

use std::net::SocketAddr;

use http::header::HeaderValue;
use http::{Request, Response};

use super::endpoint::{Hop, Upgrades, rewrite_request};
use crate::body::{self, Body};
use crate::client::{PlainClients, plain_error};
use crate::discover::Target;
use crate::error::ProxyError;
use crate::http_util::{self, EGRESS_ID};

/// The egress stage.
#[derive(Clone, Debug)]
pub struct Egress {
    /// Plain clients.
    pub plain: PlainClients,
    /// This outbound's [`EGRESS_ID`] value.
    pub egress_id: HeaderValue,
    /// Where upgraded streams are spliced.
    pub upgrades: Upgrades,
}

impl Egress {
    /// Forwards a request for `target`, outside the mesh.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        target: &Target,
        authority: &str,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        // Connect to the original destination when we have one, else the name as given.
        let connect_to = match orig_dst {
            Some(dst) => dst.to_string(),
            None => target.authority(),
        };
        if http_util::find(req.headers(), &EGRESS_ID) == Some(&self.egress_id) {
            return Err(ProxyError::Loop(connect_to));
        }
        if orig_dst.is_none() {
            req.headers_mut().insert(EGRESS_ID, self.egress_id.clone());
        }
        let upgrade = http_util::is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let hop = Hop::Egress {
            connect_to: &connect_to,
            authority,
        };
        rewrite_request(&mut req, hop, upgrade)?;
        let mut rsp = self
            .plain
            .http1
            .request(req)
            .await
            .map_err(|e| plain_error(&connect_to, e))?;
        if let Some(client_upgrade) = client_upgrade
            && rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut rsp);
            self.upgrades.splice(client_upgrade, upstream, None);
        }
        Ok(rsp.map(body::boxed))
    }
}
