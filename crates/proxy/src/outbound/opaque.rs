//! Opaque streams on the outbound: a redirected connection to an opaque port or service, one that
//! detection found not to be HTTP, or a tcp forward's. The target is resolved like a request's
//! ([`super::target`]); a mesh service's endpoint is picked by its balancer and dialled over mTLS
//! with an opaque transport header, a name outside the mesh is dialled plain. Bytes are spliced
//! both ways until both sides close, or none moved for `ONEMESH_PROXY_STREAM_IDLE_TIMEOUT`
//! (counted in `proxy_error_total{reason="stream_idle_timeout"}`); failures are counted there too
//! (a stream has no response to carry them).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::Outbound;
use crate::discover::{Resolution, Target};
use crate::http_util;
use crate::io::{ByteCounters, SpliceError};
use crate::metrics::{Direction, Tls};
use crate::transport_header::Protocol;

impl Outbound {
    /// Carries an opaque stream to `target`.
    pub async fn opaque<I>(&self, mut io: I, target: Target)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let resolved = match self.inner.targets.resolve(&target).await {
            Ok(r) => r,
            Err(err) => {
                self.inner
                    .metrics
                    .error(Direction::Outbound, err.outcome().reason);
                return;
            }
        };
        match &resolved.resolution {
            Resolution::Mesh(rx) => {
                let (service, balancer) = resolved.balancer.current(rx);
                let Some(load) = balancer.pick() else {
                    self.inner
                        .metrics
                        .error(Direction::Outbound, "no_endpoints");
                    debug!(service = %service.name, "no endpoints for opaque connection");
                    return;
                };
                let in_flight = load.start();
                let mut upstream = match self
                    .inner
                    .endpoints
                    .mesh
                    .connect(&load.endpoint, Protocol::Opaque, &target.authority())
                    .await
                {
                    Ok(tls) => tls,
                    Err(err) => {
                        self.inner
                            .metrics
                            .error(Direction::Outbound, err.outcome().reason);
                        return;
                    }
                };
                in_flight.complete();
                let guard = self.inner.metrics.open_tcp(self.edge(
                    load.endpoint.namespace.clone(),
                    load.endpoint.workload.clone(),
                    Some(load.server_id.clone()),
                    Tls::True,
                ));
                self.splice(&mut io, &mut upstream, guard.counters()).await;
            }
            Resolution::External => {
                let dst = target.authority();
                let connect = TcpStream::connect(dst.as_str());
                let mut upstream = match tokio::time::timeout(
                    self.inner.settings.connect_timeout,
                    connect,
                )
                .await
                {
                    Ok(Ok(tcp)) => tcp,
                    _ => {
                        self.inner
                            .metrics
                            .error(Direction::Outbound, "connect_failed");
                        return;
                    }
                };
                let guard = self.inner.metrics.open_tcp(self.edge(
                    "".into(),
                    "".into(),
                    None,
                    Tls::NoIdentity,
                ));
                self.splice(&mut io, &mut upstream, guard.counters()).await;
            }
        }
    }

    /// Splices an opaque stream, counting an idle close.
    async fn splice<A, U>(&self, io: &mut A, upstream: &mut U, counters: &ByteCounters)
    where
        A: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let idle = self.inner.settings.stream_idle_timeout;
        if let Err(error @ SpliceError::Idle(_)) =
            crate::io::splice(io, upstream, counters, idle).await
        {
            debug!(%error, "opaque stream closed");
            self.inner
                .metrics
                .error(Direction::Outbound, http_util::IDLE_TIMEOUT_REASON);
        }
    }
}
