//! The benchmark backend: an HTTP/1.1 (and HTTP/2 prior-knowledge) server that answers every
//! request with `200 OK` and the same body of a fixed size.
//!
//! The body is built once and shared (`Bytes` clones are reference counts), and the request body
//! is drained without being looked at, so the backend adds as little work as a server can. It
//! deliberately does no routing, logging or metrics: it is the floor the proxies are measured
//! against.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("could not bind the backend to {addr}: {source}; pick a free address or port 0")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The bound socket's address could not be read back.
    #[error("could not read the backend's bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A bound, not yet serving backend. [`Backend::local_addr`] is the address really bound (port 0
/// becomes a real port), so tests and the harness can start it on any free port.
pub struct Backend {
    listener: TcpListener,
    local_addr: SocketAddr,
    body: Bytes,
}

/// The byte every response body is filled with (printable, so a body is easy to eyeball).
pub const BODY_BYTE: u8 = b'x';

impl Backend {
    /// Binds `addr` and prepares a response body of `body_bytes` bytes.
    pub async fn bind(addr: SocketAddr, body_bytes: usize) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(Error::LocalAddr)?;
        Ok(Self {
            listener,
            local_addr,
            body: Bytes::from(vec![BODY_BYTE; body_bytes]),
        })
    }

    /// The address the backend listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves connections until the task is dropped. A failed accept (e.g. out of file
    /// descriptors) is retried after a short pause; a failed connection affects only itself.
    pub async fn serve(self) {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let body = self.body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, body.clone()));
                // Serves HTTP/1.1 and HTTP/2 prior knowledge on the same port; a peer that
                // hangs up mid-request is not an error worth reporting here.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Drains the request body, then answers with the fixed body.
async fn respond(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Reading the upload keeps the connection reusable; its content is irrelevant here.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}
