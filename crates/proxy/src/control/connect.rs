//! Channels to the control plane over our own TLS: a tonic [`Channel`] whose connector dials TCP
//! and runs a tokio-rustls handshake with a config from `onemesh-identity` (TLS 1.3, ring, ALPN
//! `h2`) that accepts only the control plane's SPIFFE id, chained to the trust bundle.
//!
//! The channel is lazy (nothing is dialled until the first call) and redials by itself after a
//! connection breaks. Each dial picks its client config then: the proxy's own certificate once
//! the credentials are attached and issued and while that certificate is unexpired, none
//! otherwise (bootstrap). An expired leaf is never presented: the control plane would refuse the
//! handshake, and a proxy whose leaf expired during a long control-plane outage could never get a
//! new one (it asks with its bootstrap token instead).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use onemesh_identity::{CredentialStore, SpiffeId, TrustBundle, bootstrap_client_config};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// ALPN for gRPC.
pub const ALPN_H2: &[u8] = b"h2";
/// How long a dial (TCP + TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keep-alive ping interval: a silently dead control plane is noticed within
/// interval + timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the proxy's credentials appear once the identity task has started.
pub type CredentialsSlot = Arc<OnceLock<watch::Receiver<Option<CredentialStore>>>>;

/// A lazily connected channel to `addr` (`host:port`) that verifies the server as `server_id`.
pub fn channel(
    addr: &str,
    server_id: SpiffeId,
    bundle: TrustBundle,
    credentials: CredentialsSlot,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let bootstrap = bootstrap_client_config(&bundle, &server_id, &[ALPN_H2]);
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let config = match credentials.get().and_then(|rx| rx.borrow().clone()) {
            Some(store) if store.not_after() > SystemTime::now() => {
                store.client_config(&server_id, &[ALPN_H2])
            }
            // The bundle may have changed since start (anchor rotation): verify with the current.
            Some(store) => bootstrap_client_config(&store.bundle(), &server_id, &[ALPN_H2]),
            None => bootstrap.clone(),
        };
        let addr = addr.clone();
        let server_name = server_id.tls_server_name();
        async move { dial(&addr, config, server_name).await }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

async fn dial(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    Ok(TokioIo::new(tls))
}
