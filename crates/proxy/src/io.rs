//! Small I/O helpers shared by both directions: a stream that replays bytes already read
//! (detection, transport header) before reading from the socket, and a byte-counting splice for
//! opaque TCP and upgraded connections that closes both sides after an idle timeout
//! (`ONEMESH_PROXY_STREAM_IDLE_TIMEOUT`), so a quiet spliced stream cannot hold its sockets for
//! ever.
//!
//! Nothing here knows about TLS or HTTP; the callers own the metrics handles they pass in.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of TLS records gathered under each mTLS connection before they are written: the
/// records of one flush go out in one syscall. A record is at most ~16 KiB, so one fits.
pub const TLS_WRITE_BUFFER: usize = 17 * 1024;

pin_project! {
    /// Gathers the writes made between two flushes (the TLS records of one HTTP/2 flush or one
    /// HTTP/1 message) and writes them to `inner` in one go, at the flush or when
    /// [`TLS_WRITE_BUFFER`] bytes are waiting. Unlike `tokio::io::BufWriter` it holds no buffer
    /// between flushes, so an idle pooled connection costs no write buffer. Reads pass through.
    #[derive(Debug)]
    pub struct CoalescedWrites<I> {
        #[pin]
        inner: I,
        buf: Vec<u8>,
        written: usize,
    }
}

impl<I> CoalescedWrites<I> {
    /// Wraps `inner`.
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncWrite> CoalescedWrites<I> {
    /// Writes out what is gathered, then lets the buffer go.
    fn poll_write_out(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.written < this.buf.len() {
            let n = ready!(
                this.inner
                    .as_mut()
                    .poll_write(cx, &this.buf[*this.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.written += n;
        }
        *this.buf = Vec::new();
        *this.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for CoalescedWrites<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buf.len() + len > TLS_WRITE_BUFFER {
            ready!(self.as_mut().poll_write_out(cx))?;
        }
        if len >= TLS_WRITE_BUFFER {
            return self.project().inner.poll_write_vectored(cx, bufs);
        }
        let this = self.project();
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_write_out(cx))?;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_write_out(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

impl<I: AsyncRead> AsyncRead for CoalescedWrites<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

pin_project! {
    /// An I/O stream that first yields `prefix` (bytes already read from `inner`), then reads from
    /// `inner`. Writes go straight to `inner`.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> PrefixedIo<I> {
    /// Wraps `inner`, replaying `prefix` first.
    pub fn new(prefix: impl Into<Bytes>, inner: I) -> Self {
        Self {
            prefix: prefix.into(),
            inner,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Byte counters for one spliced connection, as seen from the proxy's accepted side:
/// `read` counts bytes read from the accepted peer, `write` bytes written back to it.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    /// Bytes read from the accepted side.
    pub read: Counter,
    /// Bytes written to the accepted side.
    pub write: Counter,
}

/// Why a [`splice`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// No byte moved either way for the idle timeout.
    #[error(
        "no bytes in either direction for {0:?}, so the stream was closed; raise \
         ONEMESH_PROXY_STREAM_IDLE_TIMEOUT if such streams are meant to stay quiet longer"
    )]
    Idle(Duration),
    /// One side failed.
    #[error("the spliced stream failed: {0}")]
    Io(#[from] io::Error),
}

/// Copies bytes both ways between `accepted` and `upstream` until both directions are closed,
/// or until no byte has moved either way for `idle` ([`SpliceError::Idle`]: both are then
/// dropped, which closes them). Bytes read from and written to `accepted` are added to
/// `counters` as they move. Returns (bytes from accepted, bytes to accepted).
///
/// The idle clock costs one read of tokio's clock per read that moved bytes (every write follows
/// a read), and one timer per stream that is re-armed only when it fires.
pub async fn splice<A, U>(
    accepted: &mut A,
    upstream: &mut U,
    counters: &ByteCounters,
    idle: Duration,
) -> Result<(u64, u64), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity::new();
    let mut accepted = Watched {
        inner: accepted,
        activity: &activity,
        counters: Some(counters),
    };
    let mut upstream = Watched {
        inner: upstream,
        activity: &activity,
        counters: None,
    };
    let copy = tokio::io::copy_bidirectional(&mut accepted, &mut upstream);
    tokio::pin!(copy);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            done = &mut copy => return done.map_err(SpliceError::from),
            () = &mut timer => {
                let deadline = activity.last() + idle;
                if deadline <= tokio::time::Instant::now() {
                    return Err(SpliceError::Idle(idle));
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// When bytes last moved on a splice (milliseconds since it started, on tokio's clock, so
/// tests can pause it).
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a splice: notes activity, and counts bytes when it is the accepted side.
struct Watched<'a, I: ?Sized> {
    inner: &'a mut I,
    activity: &'a Activity,
    counters: Option<&'a ByteCounters>,
}

impl<I: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.activity.touch();
            if let Some(c) = self.counters {
                c.read.inc_by(n as u64);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write(cx, buf);
        // Every byte written was read first, and the read noted the activity.
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
            && let Some(c) = self.counters
        {
            c.write.inc_by(*n as u64);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

pin_project! {
    /// Counts the bytes read from and written to a stream.
    #[derive(Debug)]
    pub struct CountingIo<I> {
        #[pin]
        inner: I,
        counters: ByteCounters,
    }
}

impl<I> CountingIo<I> {
    /// Wraps `inner`, adding to `counters`.
    pub fn new(inner: I, counters: ByteCounters) -> Self {
        Self { inner, counters }
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.counters.read.inc_by(n as u64);
        }
        result
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.counters.write.inc_by(*n as u64);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
