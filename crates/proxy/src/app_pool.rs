//! HTTP/1.1 connections from the inbound side to the local application, kept alive and reused.
//!
//! Each application port has a stack of idle connections. A request takes the most recently used
//! idle one (its buffers are the warmest) or dials a new one; the connection goes back on the
//! stack when the response body has been read to its end ([`PooledBody`]). A response that is
//! dropped early, an upgrade (`101`), or a connection the application closed is never reused.
//! Idle connections older than [`IDLE_TIMEOUT`] are closed, and at most [`MAX_IDLE_PER_PORT`]
//! are kept.
//!
//! Why not hyper-util's general client: it spawns a task per request to return the connection
//! to its pool and keys the pool by scheme and authority strings; the application is always
//! `app_host:port` over plain HTTP/1.1, so a stack per port is all this needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::Body;
use crate::error::ProxyError;

/// Idle connections unused for this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most idle connections kept per application port.
pub const MAX_IDLE_PER_PORT: usize = 64;

type Sender = http1::SendRequest<Body>;

/// Kept-alive HTTP/1.1 connections to the local application, per port.
#[derive(Clone, Debug)]
pub struct AppPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connect_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<(Sender, Instant)>>>,
}

impl AppPool {
    /// An empty pool whose dials give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect_timeout,
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `req` (origin-form, with its Host header) to the application at `app`.
    pub async fn send(
        &self,
        app: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let mut sender = match self.checkout(app).await {
            Some(sender) => sender,
            None => self.dial(app).await?,
        };
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::Upstream(e.to_string()))?;
        // An upgraded connection belongs to the upgrade from now on.
        let reusable = rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let back = reusable.then(|| (self.clone(), app, sender));
        let mut rsp = rsp.map(|body| PooledBody { body, back });
        if rsp.body().body.is_end_stream() {
            rsp.body_mut().release();
        }
        Ok(rsp)
    }

    /// The most recently used idle connection, once it can take a request. (A connection goes
    /// back on the stack as its last response frame is read, a moment before its task marks it
    /// ready; one that turns out closed is dropped and the next one tried.)
    async fn checkout(&self, app: SocketAddr) -> Option<Sender> {
        loop {
            let mut sender = self.pop_idle(app)?;
            if sender.is_ready() {
                return Some(sender);
            }
            let ready = tokio::time::timeout(self.inner.connect_timeout, sender.ready()).await;
            if let Ok(Ok(())) = ready {
                return Some(sender);
            }
        }
    }

    fn pop_idle(&self, app: SocketAddr) -> Option<Sender> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stack = idle.get_mut(&app)?;
        let now = Instant::now();
        while let Some((sender, since)) = stack.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, app: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stack = idle.entry(app).or_default();
        let now = Instant::now();
        stack.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        if stack.len() >= MAX_IDLE_PER_PORT {
            stack.remove(0);
        }
        stack.push((sender, now));
    }

    async fn dial(&self, app: SocketAddr) -> Result<Sender, ProxyError> {
        let connect_error = |source| ProxyError::Connect {
            target: app.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(app))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| ProxyError::Upstream(format!("http/1 handshake with the app: {e}")))?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(%app, %error, "app connection ended");
            }
        });
        Ok(sender)
    }
}

/// A response body from the application that returns its connection to the pool once read to
/// the end.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    back: Option<(AppPool, SocketAddr, Sender)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, app, sender)) = self.back.take() {
            pool.checkin(app, sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // An error: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
