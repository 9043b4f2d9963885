//! Protocol detection: is the first thing a client sends an HTTP/1 request line, the HTTP/2
//! connection preface (prior knowledge, as gRPC clients send), or something else?
//!
//! Detection reads into one bounded buffer ([`MAX_DETECT_BYTES`]) under one deadline, and stops
//! as soon as the answer is known. It returns a [`Detected`] value, never an error: a read error or
//! EOF before anything arrived is [`Detected::Opaque`] with whatever was read (the opaque path then
//! sees the same EOF), and a client that sends nothing within the first-byte window (a
//! server-speaks-first protocol such as SMTP or MySQL) is [`Detected::Timeout`], which callers
//! treat as opaque. The bytes
//! read are always handed back so they can be replayed ([`crate::io::PrefixedIo`]).
//!
//! It deliberately does not validate the whole request head: that is hyper's job (and
//! [`crate::head`]'s for the first request); a line that looks like a request line is enough.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest number of bytes read while detecting. A request line longer than this is opaque.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The outcome of protocol detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detected {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 preface (prior knowledge).
    Http2,
    /// Bytes that are not HTTP (or EOF / a read error).
    Opaque,
    /// Nothing arrived before the deadline: the peer waits for the server to speak first.
    Timeout,
}

impl Detected {
    /// A bounded metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Opaque => "opaque",
            Detected::Timeout => "timeout",
        }
    }
}

/// Classifies the bytes read so far; `None` means more bytes are needed to decide.
///
/// The verdict does not depend on how the bytes were split: once a prefix decides, every longer
/// input decides the same (the `detect` fuzz target checks this). Bytes past [`MAX_DETECT_BYTES`]
/// are ignored, as detection would never have read them before deciding.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let buf = &buf[..buf.len().min(MAX_DETECT_BYTES)];
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 preface, possibly still partial.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    // HTTP/1: METHOD SP request-target SP HTTP/1.x CRLF
    let method_end = buf.iter().position(|&b| b == b' ');
    let method = &buf[..method_end.unwrap_or(buf.len())];
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Some(Detected::Opaque);
    }
    let Some(method_end) = method_end else {
        return if buf.len() >= MAX_DETECT_BYTES {
            Some(Detected::Opaque)
        } else {
            None
        };
    };
    let rest = &buf[method_end + 1..];
    let line_end = rest.iter().position(|&b| b == b'\n');
    // A request line never holds a control byte other than the CR before its LF. Checked on the
    // whole line as on a partial one, so that the verdict never depends on where the bytes were
    // split.
    let line = &rest[..line_end.unwrap_or(rest.len())];
    if line.iter().any(|&b| b < 0x20 && b != b'\r') {
        return Some(Detected::Opaque);
    }
    if line_end.is_none() {
        return if buf.len() >= MAX_DETECT_BYTES {
            Some(Detected::Opaque)
        } else {
            None
        };
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let is_http1 = (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && line.len() > b" HTTP/1.1".len()
        && !line[..line.len() - 9].contains(&b' ')
        && !line.contains(&b'\r');
    Some(if is_http1 {
        Detected::Http1
    } else {
        Detected::Opaque
    })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, `timeout` passes or [`MAX_DETECT_BYTES`] are read.
/// Returns the outcome and every byte read (to be replayed).
///
/// `first_byte` bounds the wait for the first byte: a client still silent then is taken for a
/// server-speaks-first protocol ([`Detected::Timeout`]) at once, so its server's greeting is not
/// held back for the whole `timeout`. (An HTTP client writes its request as soon as it is
/// connected; one slower than `first_byte` is relayed as opaque TCP, which still works.)
pub async fn detect<I>(io: &mut I, first_byte: Duration, timeout: Duration) -> (Detected, BytesMut)
where
    I: AsyncRead + Unpin + ?Sized,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    match tokio::time::timeout(first_byte.min(timeout), io.read_buf(&mut buf)).await {
        Err(_) => return (Detected::Timeout, buf),
        Ok(Ok(0) | Err(_)) => return (Detected::Opaque, buf),
        Ok(Ok(_)) => {
            if let Some(found) = classify(&buf) {
                return (found, buf);
            }
        }
    }
    let read_loop = async {
        loop {
            if buf.len() >= MAX_DETECT_BYTES {
                return Detected::Opaque;
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(1024.min(MAX_DETECT_BYTES - buf.len()).max(512));
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Detected::Opaque,
                Ok(_) => {
                    if let Some(found) = classify(&buf) {
                        return found;
                    }
                }
            }
        }
    };
    // Bytes arrived but did not decide in time: not a well-behaved HTTP client.
    let outcome = tokio::time::timeout_at(deadline, read_loop)
        .await
        .unwrap_or(Detected::Opaque);
    (outcome, buf)
}

#[cfg(test)]
mod tests;
