//! Kept-alive HTTP/1.1 connections, reused one request at a time: to the local application
//! (inbound) and to other proxies over mTLS (outbound, for HTTP/1 traffic).
//!
//! Each key (an application port; an endpoint) has a stack of idle connections. A request takes
//! the most recently used idle one (its buffers are the warmest) or dials a new one with the
//! caller's dial function; the connection goes back on the stack when the response body has been
//! read to its end ([`PooledBody`]). A response dropped early, an upgrade (`101`), or a connection
//! the peer closed is never reused. At most [`MAX_DIALS_PER_KEY`] connections are dialled at once
//! per key (more requests wait for one of them, or for a connection to come back, so a burst does
//! not turn into a burst of handshakes). Idle connections older than [`IDLE_TIMEOUT`] are closed,
//! at most [`MAX_IDLE_PER_KEY`] are kept per key, and when the whole proxy goes quiet the pools
//! shrink to a few per key ([`Http1Pool::shrink_idle`], called from [`crate::memory`]).
//!
//! Why not hyper-util's general client: it spawns a task per request to put the connection back
//! in its pool and keys the pool by scheme and authority strings; here the peers are known
//! addresses reached by the proxy's own dialers, so a stack per key is all this needs. A request
//! clones its key, so keys are cheap to clone (an address, an `Arc`).

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::debug;

use crate::body::Body;
use crate::error::ProxyError;

/// Idle connections unused for this long are closed (by [`Http1Pool::prune`], within a few
/// seconds; one is never handed out once this old).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most idle connections kept per key.
pub const MAX_IDLE_PER_KEY: usize = 64;
/// The most connections dialled at once per key: a burst of requests after a quiet spell waits
/// for a few new connections (or for returning ones) instead of handshaking once per request at
/// the same moment.
pub const MAX_DIALS_PER_KEY: usize = 4;

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
    idle_timeout: Duration,
    slots: Mutex<HashMap<K, Slot>>,
}

/// One key's idle connections and dials in progress.
#[derive(Debug, Default)]
struct Slot {
    idle: Vec<(Sender, Instant)>,
    dialing: usize,
    /// Signalled when a connection comes back or a dial ends.
    freed: Arc<Notify>,
}

/// What a request gets from the pool.
enum Acquired<K: Hash + Eq + Clone + Send + 'static> {
    /// An idle connection, ready.
    Idle(Sender),
    /// Leave to dial a new one (released when dropped).
    Dial(DialSlot<K>),
}

/// A dial in progress; frees its place when dropped.
struct DialSlot<K: Hash + Eq + Clone + Send + 'static> {
    pool: Http1Pool<K>,
    key: K,
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for DialSlot<K> {
    fn drop(&mut self) {
        let mut slots = self.pool.lock();
        if let Some(slot) = slots.get_mut(&self.key) {
            slot.dialing = slot.dialing.saturating_sub(1);
            slot.freed.notify_one();
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Http1Pool<K> {
    /// An empty pool; a returned connection that is not ready for its next request within
    /// `ready_timeout` is dropped, and a request waits at most that long at a time for a
    /// connection to come back before it looks again.
    pub fn new(ready_timeout: Duration) -> Self {
        Self::with_idle_timeout(ready_timeout, IDLE_TIMEOUT)
    }

    /// [`Http1Pool::new`] with another idle timeout than [`IDLE_TIMEOUT`].
    pub fn with_idle_timeout(ready_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ready_timeout,
                idle_timeout,
                slots: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `req` (origin-form, with its Host header) on an idle connection of `key`, or on a
    /// new one from `dial`.
    pub async fn send<D, F>(
        &self,
        key: K,
        mut req: Request<Body>,
        dial: D,
    ) -> Result<Response<PooledBody<K>>, ProxyError>
    where
        D: FnOnce() -> F,
        F: Future<Output = Result<Sender, ProxyError>>,
    {
        let upstream = |e: hyper::Error| ProxyError::Upstream(e.to_string());
        let mut dial = Some(dial);
        let (sender, rsp) = loop {
            match self.acquire(&key).await {
                Acquired::Idle(mut idle) => match idle.try_send_request(req).await {
                    Ok(rsp) => break (idle, rsp),
                    // The peer closed the idle connection before the request went out.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(upstream(e.into_error())),
                    },
                },
                Acquired::Dial(slot) => {
                    let Some(dial) = dial.take() else {
                        return Err(ProxyError::Upstream("no connection to send on".into()));
                    };
                    // Boxed: dialling (connect, TLS, handshake) is the rare path, and its large
                    // future would otherwise be part of every request's future.
                    let mut fresh = Box::pin(dial()).await?;
                    drop(slot);
                    let rsp = fresh.send_request(req).await.map_err(upstream)?;
                    break (fresh, rsp);
                }
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

    /// The most recently used idle connection once it can take a request, else leave to dial
    /// if fewer than [`MAX_DIALS_PER_KEY`] dials are in progress, else waits for one of those.
    /// (A connection goes back on the stack as its last response frame is read, a moment before
    /// its task marks it ready; one that turns out closed is dropped and the next one tried.)
    async fn acquire(&self, key: &K) -> Acquired<K> {
        loop {
            let freed = {
                let mut slots = self.lock();
                let slot = slots.entry(key.clone()).or_default();
                let now = Instant::now();
                let mut found = None;
                while let Some((sender, since)) = slot.idle.pop() {
                    if !sender.is_closed() && now.duration_since(since) < self.inner.idle_timeout {
                        found = Some(sender);
                        break;
                    }
                }
                match found {
                    Some(sender) => Ok(sender),
                    None if slot.dialing < MAX_DIALS_PER_KEY => {
                        slot.dialing += 1;
                        return Acquired::Dial(DialSlot {
                            pool: self.clone(),
                            key: key.clone(),
                        });
                    }
                    None => Err(slot.freed.clone()),
                }
            };
            match freed {
                Ok(mut sender) => {
                    if sender.is_ready() {
                        return Acquired::Idle(sender);
                    }
                    let ready = tokio::time::timeout(self.inner.ready_timeout, sender.ready());
                    if let Ok(Ok(())) = ready.await {
                        return Acquired::Idle(sender);
                    }
                }
                Err(freed) => {
                    let _ = tokio::time::timeout(self.inner.ready_timeout, freed.notified()).await;
                }
            }
        }
    }

    /// Closes idle connections beyond the `keep` most recently used of each key (the proxy went
    /// quiet: see [`crate::memory`]).
    pub fn shrink_idle(&self, keep: usize) {
        self.lock().retain(|_, slot| {
            let extra = slot.idle.len().saturating_sub(keep);
            slot.idle.drain(..extra);
            !slot.idle.is_empty() || slot.dialing > 0
        });
    }

    /// Closes idle connections that the peer closed or that have been idle longer than the idle
    /// timeout (called every few seconds from [`crate::memory`]); returns how many.
    pub fn prune(&self) -> usize {
        let now = Instant::now();
        let idle_timeout = self.inner.idle_timeout;
        let mut closed = 0;
        self.lock().retain(|_, slot| {
            let before = slot.idle.len();
            slot.idle
                .retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < idle_timeout);
            closed += before - slot.idle.len();
            !slot.idle.is_empty() || slot.dialing > 0
        });
        closed
    }

    fn checkin(&self, key: K, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        // Closed and stale connections are skipped when popped and dropped by `prune`, so a
        // return costs no scan of the stack.
        let mut slots = self.lock();
        let slot = slots.entry(key).or_default();
        if slot.idle.len() >= MAX_IDLE_PER_KEY {
            slot.idle.remove(0);
        }
        slot.idle.push((sender, Instant::now()));
        slot.freed.notify_one();
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
