//! Small I/O helpers shared by both directions: a stream that replays bytes already read
//! (detection, transport header) before reading from the socket, and a byte-counting splice for
//! opaque TCP and upgraded connections.
//!
//! Nothing here knows about TLS or HTTP; the callers own the metrics handles they pass in.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of TLS records gathered under each mTLS connection before they are written: the
/// records of one flush go out in one syscall. A record is at most ~16 KiB, so one fits.
pub const TLS_WRITE_BUFFER: usize = 17 * 1024;

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

/// Copies bytes both ways between `accepted` and `upstream` until both directions are closed,
/// adding the byte counts to `counters` when done. Returns (bytes from accepted, bytes to accepted).
pub async fn splice<A, U>(
    accepted: &mut A,
    upstream: &mut U,
    counters: &ByteCounters,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let result = tokio::io::copy_bidirectional(accepted, upstream).await;
    if let Ok((from_accepted, to_accepted)) = result {
        counters.read.inc_by(from_accepted);
        counters.write.inc_by(to_accepted);
    }
    result
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
