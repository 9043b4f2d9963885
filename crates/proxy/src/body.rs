//! The one HTTP body type the proxy passes around: a boxed stream of `Bytes` frames (data and
//! trailers), so requests and responses from hyper, and the proxy's own short answers, share a
//! type.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed error from any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new())
}
