//! Plain connections the proxy makes: to egress destinations and HTTP/2 applications (pooled
//! hyper clients), and the ALPN id of connections between proxies. Connections to other proxies
//! are the outbound's endpoint stage ([`crate::outbound::endpoint`]).

use std::time::Duration;

use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::error::ProxyError;

/// ALPN id of proxy-to-proxy connections.
pub const ALPN: &[u8] = b"onemesh/1";

/// Plain HTTP clients for egress and HTTP/2 applications (pooled, with upgrades); HTTP/1.1 to the
/// local application goes through the inbound's own [`crate::pool::Http1Pool`].
#[derive(Clone, Debug)]
pub struct PlainClients {
    /// HTTP/1.1 (egress).
    pub http1: LegacyClient<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge (gRPC apps).
    pub h2: LegacyClient<HttpConnector, Body>,
}

impl PlainClients {
    /// Builds both clients.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let http1 = LegacyClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let h2 = LegacyClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self { http1, h2 }
    }
}

/// Maps a plain client's error to a proxy error.
pub fn plain_error(target: &str, e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        let source = std::error::Error::source(&e)
            .map(|s| std::io::Error::other(s.to_string()))
            .unwrap_or_else(|| std::io::Error::other("connect failed"));
        ProxyError::Connect {
            target: target.to_string(),
            source,
        }
    } else {
        ProxyError::Upstream(e.to_string())
    }
}
