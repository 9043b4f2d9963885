//! The transport header a client proxy writes right after the mTLS handshake, before any
//! application byte, so the server proxy knows how to handle the stream without detecting it
//! again, and where to send it.
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! magic "OMSH" (4) | version = 1 (1) | protocol (1) | target port (2) | authority length (2) | authority
//! ```
//!
//! `protocol` is 0 = HTTP/2 (multiplexed, the default between proxies), 1 = HTTP/1.1 (a request
//! that may upgrade, e.g. a WebSocket), 2 = opaque TCP. The target port is the application's port
//! on the server side. The authority (at most [`MAX_AUTHORITY_LEN`] bytes of UTF-8) is only for
//! logs. The header is bounded and read under a deadline, so a peer cannot hold a connection
//! open by sending it slowly.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The four bytes every header starts with.
pub const MAGIC: &[u8; 4] = b"OMSH";
/// The only version this proxy writes and reads.
pub const VERSION: u8 = 1;
/// The longest authority accepted.
pub const MAX_AUTHORITY_LEN: usize = 1024;
/// Length of the fixed part (magic .. authority length).
pub const FIXED_LEN: usize = 10;

/// How the stream after the header is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/2 between proxies; the original version is in a request header.
    H2,
    /// HTTP/1.1, used for requests that may upgrade (h2 cannot carry an upgrade).
    Http1,
    /// Opaque bytes.
    Opaque,
}

impl Protocol {
    fn to_byte(self) -> u8 {
        match self {
            Protocol::H2 => 0,
            Protocol::Http1 => 1,
            Protocol::Opaque => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Protocol::H2),
            1 => Some(Protocol::Http1),
            2 => Some(Protocol::Opaque),
            _ => None,
        }
    }
}

/// A decoded transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// How the rest of the stream is spoken.
    pub protocol: Protocol,
    /// The application port on the server side.
    pub target_port: u16,
    /// The destination as the client application named it (for logs only).
    pub authority: String,
}

/// Why a transport header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The first bytes are not the magic.
    #[error("transport header has a bad magic: the peer is not a onemesh proxy")]
    BadMagic,
    /// Another version.
    #[error("transport header version {0} is not supported: upgrade the older proxy")]
    UnsupportedVersion(u8),
    /// Unknown protocol byte.
    #[error("transport header names unknown protocol {0}")]
    UnknownProtocol(u8),
    /// Authority too long.
    #[error("transport header authority is {0} bytes, more than the {MAX_AUTHORITY_LEN} allowed")]
    AuthorityTooLong(usize),
    /// Authority not UTF-8.
    #[error("transport header authority is not utf-8")]
    AuthorityNotUtf8,
    /// Port zero.
    #[error("transport header names target port 0")]
    ZeroPort,
    /// Encoding an authority that is too long.
    #[error("authority of {0} bytes is too long for a transport header (max {MAX_AUTHORITY_LEN})")]
    EncodeTooLong(usize),
    /// The peer closed or failed before the header was complete.
    #[error("reading the transport header failed: {0}")]
    Io(#[from] std::io::Error),
    /// The header did not arrive in time.
    #[error("the transport header did not arrive within {0:?}")]
    Timeout(Duration),
}

impl TransportHeader {
    /// Encodes the header.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let authority = self.authority.as_bytes();
        if authority.len() > MAX_AUTHORITY_LEN {
            return Err(HeaderError::EncodeTooLong(authority.len()));
        }
        let mut out = Vec::with_capacity(FIXED_LEN + authority.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.protocol.to_byte());
        out.extend_from_slice(&self.target_port.to_be_bytes());
        out.extend_from_slice(&(authority.len() as u16).to_be_bytes());
        out.extend_from_slice(authority);
        Ok(out)
    }

    /// Decodes a header from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, used)))` gives the header and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(TransportHeader, usize)>, HeaderError> {
        let fixed = Self::check_fixed(buf)?;
        let Some((protocol, target_port, len)) = fixed else {
            return Ok(None);
        };
        if buf.len() < FIXED_LEN + len {
            return Ok(None);
        }
        let authority = std::str::from_utf8(&buf[FIXED_LEN..FIXED_LEN + len])
            .map_err(|_| HeaderError::AuthorityNotUtf8)?
            .to_string();
        Ok(Some((
            TransportHeader {
                protocol,
                target_port,
                authority,
            },
            FIXED_LEN + len,
        )))
    }

    /// Checks what is there of the fixed part; `Ok(None)` when it is not complete yet.
    fn check_fixed(buf: &[u8]) -> Result<Option<(Protocol, u16, usize)>, HeaderError> {
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            return Err(HeaderError::BadMagic);
        }
        if buf.len() > 4 && buf[4] != VERSION {
            return Err(HeaderError::UnsupportedVersion(buf[4]));
        }
        if buf.len() > 5 && Protocol::from_byte(buf[5]).is_none() {
            return Err(HeaderError::UnknownProtocol(buf[5]));
        }
        if buf.len() < FIXED_LEN {
            return Ok(None);
        }
        let protocol = Protocol::from_byte(buf[5]).ok_or(HeaderError::UnknownProtocol(buf[5]))?;
        let port = u16::from_be_bytes([buf[6], buf[7]]);
        if port == 0 {
            return Err(HeaderError::ZeroPort);
        }
        let len = usize::from(u16::from_be_bytes([buf[8], buf[9]]));
        if len > MAX_AUTHORITY_LEN {
            return Err(HeaderError::AuthorityTooLong(len));
        }
        Ok(Some((protocol, port, len)))
    }

    /// Reads exactly one header from `io` (no byte after it), within `timeout`.
    pub async fn read<I>(io: &mut I, timeout: Duration) -> Result<TransportHeader, HeaderError>
    where
        I: AsyncRead + Unpin + ?Sized,
    {
        let read = async {
            let mut fixed = [0u8; FIXED_LEN];
            io.read_exact(&mut fixed).await?;
            let (protocol, target_port, len) = Self::check_fixed(&fixed)?
                .ok_or(HeaderError::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
            let mut authority = vec![0u8; len];
            io.read_exact(&mut authority).await?;
            let authority =
                String::from_utf8(authority).map_err(|_| HeaderError::AuthorityNotUtf8)?;
            Ok(TransportHeader {
                protocol,
                target_port,
                authority,
            })
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| HeaderError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests;
