//! Kept-alive HTTP/1.1 connections, reused one request at a time: to the local application
//! (inbound) and to other proxies over mTLS (outbound, for HTTP/1 traffic).
//!
//! Each key (an application port; an endpoint) has a stack of idle connections. A request takes
//! the most recently used idle one (its buffers are the warmest) or dials a new one with the
//! caller's dial function; the connection goes back on the stack when the response body has been
//! read to its end ([`PooledBody`]). A response dropped early, an upgrade (`101`), or a connection
//! the peer closed is never reused. Idle connections older than [`IDLE_TIMEOUT`] are closed, at
//! most [`MAX_IDLE_PER_KEY`] are kept per key, and when the whole proxy goes quiet the pools shrink
//! to a few per key ([`Http1Pool::shrink_idle`], called from [`crate::memory`]).
//!
//! Why not hyper-util's general client: it spawns a task per request to put the connection back
//! in its pool and keys the pool by scheme and authority strings; here the peers are known
//! addresses reached by the proxy's own dialers, so a stack per key is all this needs.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::body::Body;
use crate::error::ProxyError;

/// Idle connections unused for this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most idle connections kept per key.
pub const MAX_IDLE_PER_KEY: usize = 64;

/// One HTTP/1.1 connection's request handle.
pub type Sender = http1::SendRequest<Body>;

/// Kept-alive HTTP/1.1 connections, per key.
#[derive(Debug)]
pub struct Http1Pool<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Http1Pool<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    ready_timeout: Duration,
    idle: Mutex<HashMap<K, Vec<(Sender, Instant)>>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Http1Pool<K> {
    /// An empty pool; a returned connection that is not ready for its next request within
    /// `ready_timeout` is dropped.
    pub fn new(ready_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ready_timeout,
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `req` (origin-form, with its Host header) on an idle connection of `key`, or on a
    /// new one from `dial`.
    pub async fn send<D, F>(
        &self,
        key: K,
        req: Request<Body>,
        dial: D,
    ) -> Result<Response<PooledBody<K>>, ProxyError>
    where
        D: FnOnce() -> F,
        F: Future<Output = Result<Sender, ProxyError>>,
    {
        let upstream = |e: hyper::Error| ProxyError::Upstream(e.to_string());
        let (sender, rsp) = match self.checkout(&key).await {
            Some(mut idle) => match idle.try_send_request(req).await {
                Ok(rsp) => (idle, rsp),
                // The peer closed the idle connection before the request went out: a new one.
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        let mut fresh = dial().await?;
                        let rsp = fresh.send_request(req).await.map_err(upstream)?;
                        (fresh, rsp)
                    }
                    None => return Err(upstream(e.into_error())),
                },
            },
            None => {
                let mut fresh = dial().await?;
                let rsp = fresh.send_request(req).await.map_err(upstream)?;
                (fresh, rsp)
            }
        };
        // An upgraded connection belongs to the upgrade from now on.
        let reusable = rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let back = reusable.then(|| (self.clone(), key, sender));
        let mut rsp = rsp.map(|body| PooledBody { body, back });
        if rsp.body().body.is_end_stream() {
            rsp.body_mut().release();
        }
        Ok(rsp)
    }

    /// The most recently used idle connection, once it can take a request. (A connection goes
    /// back on the stack as its last response frame is read, a moment before its task marks it
    /// ready; one that turns out closed is dropped and the next one tried.)
    async fn checkout(&self, key: &K) -> Option<Sender> {
        loop {
            let mut sender = self.pop_idle(key)?;
            if sender.is_ready() {
                return Some(sender);
            }
            let ready = tokio::time::timeout(self.inner.ready_timeout, sender.ready()).await;
            if let Ok(Ok(())) = ready {
                return Some(sender);
            }
        }
    }

    fn pop_idle(&self, key: &K) -> Option<Sender> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stack = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some((sender, since)) = stack.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Closes idle connections beyond the `keep` most recently used of each key (the proxy went
    /// quiet: see [`crate::memory`]).
    pub fn shrink_idle(&self, keep: usize) {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, stack| {
            let extra = stack.len().saturating_sub(keep);
            stack.drain(..extra);
            !stack.is_empty()
        });
    }

    fn checkin(&self, key: K, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Closed and stale connections are skipped when popped (and dropped when the pools
        // shrink), so a return costs no scan of the stack.
        let stack = idle.entry(key).or_default();
        if stack.len() >= MAX_IDLE_PER_KEY {
            stack.remove(0);
        }
        stack.push((sender, Instant::now()));
    }
}

/// Starts HTTP/1.1 on a connected stream: spawns the connection's task (upgrades allowed) and
/// returns its request handle. `peer` names the other side in the error.
pub async fn handshake<I>(io: I, peer: &str) -> Result<Sender, ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream(format!("http/1 handshake with {peer}: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            debug!(%error, "http/1 client connection ended");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool once read to the end.
#[derive(Debug)]
pub struct PooledBody<K: Hash + Eq + Clone + Send + 'static> {
    body: Incoming,
    back: Option<(Http1Pool<K>, K, Sender)>,
}

impl<K: Hash + Eq + Clone + Send + 'static> PooledBody<K> {
    fn release(&mut self) {
        if let Some((pool, key, sender)) = self.back.take() {
            pool.checkin(key, sender);
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Unpin + 'static> HttpBody for PooledBody<K> {
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

#[cfg(test)]
mod tests;
