//! Checks the head of the first HTTP/1 request on a connection before hyper sees it, so that an
//! oversized, malformed or too-slow head gets the proxy's own answer (431 / 400 / 408 with an
//! `onemesh-error` header and a metric) instead of a bare close.
//!
//! Only the first request of a connection is checked here; later requests on a keep-alive
//! connection are held to the same limits by hyper (`max_buf_size`, `header_read_timeout`), which
//! answers 431/400 itself, and the connection error is counted. [`check`] is pure, so it is also
//! the fuzz target for the request-head parsing path.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most headers a request may have.
pub const MAX_HEADERS: usize = 128;

/// What is known about the bytes read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A complete, well-formed head of this many bytes.
    Complete(usize),
    /// Not complete yet.
    Partial,
    /// Larger than allowed (or too many headers).
    TooLarge,
    /// Not a valid HTTP/1 request head.
    Malformed,
}

/// Classifies `buf` as a request head, with `max` bytes allowed for the head.
pub fn check(buf: &[u8], max: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max => Head::TooLarge,
        Ok(httparse::Status::Complete(n)) => {
            // Conflicting framing is refused up front (request smuggling).
            let mut cl = None;
            let mut te = false;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let Some(v) = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    else {
                        return Head::Malformed;
                    };
                    if cl.is_some_and(|c| c != v) {
                        return Head::Malformed;
                    }
                    cl = Some(v);
                }
                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    te = true;
                }
            }
            if cl.is_some() && te {
                return Head::Malformed;
            }
            Head::Complete(n)
        }
        Ok(httparse::Status::Partial) if buf.len() > max => Head::TooLarge,
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
        Err(_) => Head::Malformed,
    }
}

/// Why the first head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the size limit.
    TooLarge,
    /// Not HTTP/1.
    Malformed,
    /// Did not arrive in time.
    Timeout,
    /// The client went away (nothing to answer).
    Closed,
}

/// Reads (into `buf`, which may already hold bytes) until a complete head is buffered, within
/// `timeout` and `max` bytes.
pub async fn read_first<I>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
    max: usize,
) -> Result<(), Refusal>
where
    I: AsyncRead + Unpin + ?Sized,
{
    let read = async {
        loop {
            match check(buf, max) {
                Head::Complete(_) => return Ok(()),
                Head::TooLarge => return Err(Refusal::TooLarge),
                Head::Malformed => return Err(Refusal::Malformed),
                Head::Partial => {}
            }
            buf.reserve(4096);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(Refusal::Closed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Refusal::Timeout))
}

#[cfg(test)]
mod tests;
