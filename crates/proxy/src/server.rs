//! Serving accepted connections: the accept loop with drain, HTTP/1 and HTTP/2 connection
//! serving with graceful shutdown, and the proxy's raw answer to a refused first request head.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::body::Body;
use crate::discover::BoxFuture;
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::head::{self, Refusal};
use crate::metrics::{Direction, Metrics};
use crate::timer::HeadTimer;

/// A boxed per-request handler, as the HTTP servers call it.
#[derive(Clone)]
pub struct HttpService {
    handler: Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<Body>> + Send + Sync>,
}

impl HttpService {
    /// Wraps a handler.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self {
            handler: Arc::new(move |req| Box::pin(f(req))),
        }
    }
}

impl Service<Request<Incoming>> for HttpService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Map<
        BoxFuture<Response<Body>>,
        fn(Response<Body>) -> Result<Response<Body>, Infallible>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // One allocation per request: the handler's own box, wrapped without another.
        futures_util::FutureExt::map((self.handler)(req), Ok)
    }
}

/// Limits applied to HTTP servers.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time allowed to receive a request head.
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
}

/// Accepts connections until drained, spawning `handle` for each with its own drain handle.
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: Drain, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Drain) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    crate::memory::note_activity();
                    let conn = handle(tcp, peer, drain.clone());
                    tokio::spawn(async move {
                        conn.await;
                        crate::memory::note_activity();
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drain.signaled() => break,
        }
    }
    drop(listener);
}

/// Serves HTTP/1 on `io` until it closes, finishing in-flight requests on drain.
pub async fn serve_http1<I, S>(io: I, svc: S, limits: HttpLimits, drain: &Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(HeadTimer::default())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "http/1 connection ended with an error");
    }
}

/// Serves HTTP/2 on `io` until it closes, finishing in-flight streams on drain.
pub async fn serve_h2<I, S>(io: I, svc: S, limits: HttpLimits, drain: &Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "http/2 connection ended with an error");
    }
}

/// Reads the first HTTP/1 request head into `buf`; on refusal answers it (400/408/431 with
/// `onemesh-error`), counts it, and returns `false`.
pub async fn check_first_head<I>(
    io: &mut I,
    buf: &mut BytesMut,
    limits: HttpLimits,
    metrics: &Metrics,
    direction: Direction,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let refusal = match head::read_first(
        io,
        buf,
        limits.header_read_timeout,
        limits.max_header_bytes,
    )
    .await
    {
        Ok(()) => return true,
        Err(r) => r,
    };
    let err = match refusal {
        Refusal::TooLarge => ProxyError::HeaderTooLarge(limits.max_header_bytes),
        Refusal::Malformed => ProxyError::Malformed("the request head is not valid http/1"),
        Refusal::Timeout => ProxyError::HeaderTimeout(limits.header_read_timeout),
        Refusal::Closed => {
            metrics.error(direction, "client_closed");
            return false;
        }
    };
    let outcome = err.outcome();
    metrics.error(direction, outcome.reason);
    let body = format!("{err}\n");
    let raw = format!(
        "HTTP/1.1 {} {}\r\n{}: {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        outcome.status.as_u16(),
        outcome.status.canonical_reason().unwrap_or(""),
        crate::error::ERROR_HEADER,
        outcome.reason,
        body.len(),
        body
    );
    let _ = io.write_all(raw.as_bytes()).await;
    let _ = io.shutdown().await;
    false
}
