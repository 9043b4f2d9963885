//! HTTP helpers shared by both directions: hop-by-hop header handling, upgrade detection, the
//! original-protocol header and response classification.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::io::{ByteCounters, SpliceError};
use crate::metrics::{Classification, Direction, Metrics, TcpGuard};

/// The `proxy_error_total` reason of a spliced stream closed for idleness.
pub const IDLE_TIMEOUT_REASON: &str = "stream_idle_timeout";

/// Request header carrying the application's original HTTP version across the h2 hop between
/// proxies (`HTTP/1.1` or `HTTP/1.0`); absent means the application spoke HTTP/2.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("onemesh-orig-proto");
/// Request header the inbound sets to the verified caller identity (and strips from outside).
pub const CLIENT_ID: HeaderName = HeaderName::from_static("onemesh-client-id");
/// Set on egress requests without an original destination to this proxy's random id: a request
/// that comes back to the same outbound with it went round a loop (its destination leads to the
/// proxy itself). The inbound removes it, so none from outside reaches the app.
pub const EGRESS_ID: HeaderName = HeaderName::from_static("onemesh-egress-id");

/// gRPC's status, in a trailers-only response's headers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The value of `name`, found by comparing names rather than hashing one: cheaper for the few
/// headers of a typical message, and what the per-request checks below use for names that are
/// usually absent.
pub fn find<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    headers.iter().find_map(|(k, v)| (k == name).then_some(v))
}

/// Removes `name` (every value) and returns its first value; nothing is hashed when it is
/// absent (see [`find`]).
pub fn take(headers: &mut HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    if headers.keys().any(|k| k == name) {
        headers.remove(name)
    } else {
        None
    }
}

/// `HTTP2-Settings`, sent with an `Upgrade: h2c` request.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Whether the request asks to upgrade to cleartext HTTP/2: its `Upgrade` header lists `h2c`,
/// or it carries `HTTP2-Settings`. Such an upgrade would turn the connection into an HTTP/2
/// tunnel whose later requests no proxy sees, so both directions refuse it. One pass over the
/// header names; a value is read only for an `Upgrade` header.
pub fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        (*name == header::UPGRADE
            && value.to_str().is_ok_and(|v| {
                v.split(',').any(|t| {
                    let t = t.trim();
                    // `h2c`, or a versioned spelling of it (`h2c/1`)
                    t.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("h2c"))
                        && matches!(t.as_bytes().get(3), None | Some(b'/'))
                })
            }))
            || *name == HTTP2_SETTINGS
    })
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Whether `name` is a hop-by-hop header that [`strip_hop_by_hop`] looks at.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::TE
        || *name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes hop-by-hop headers (and any header named in `Connection`), keeping `te: trailers`;
/// returns whether there were any.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages have none: one pass over the names instead of a hashed lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("trailers")));
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    true
}

/// The HTTP/1 version name for [`ORIG_PROTO`].
pub fn version_name(v: Version) -> Option<HeaderValue> {
    match v {
        Version::HTTP_10 => Some(HeaderValue::from_static("HTTP/1.0")),
        Version::HTTP_11 | Version::HTTP_09 => Some(HeaderValue::from_static("HTTP/1.1")),
        _ => None,
    }
}

/// `onemesh-error`: the header of every answer a proxy made itself ([`crate::error::ERROR_HEADER`]).
const PROXY_ERROR: HeaderName = HeaderName::from_static(crate::error::ERROR_HEADER);

/// Classifies a response as the client gets it, whoever made it (the one rule of
/// [`crate::telemetry`]): a 5xx, a gRPC error in the headers, or an answer made by a proxy (it
/// carries `onemesh-error`: a refusal, a failure to deliver) is a failure; anything else,
/// an app's own 4xx included, is a success. One pass over the header names.
pub fn classify<B>(rsp: &Response<B>) -> Classification {
    if rsp.status().is_server_error() {
        return Classification::Failure;
    }
    let mut grpc_seen = false;
    for (name, value) in rsp.headers() {
        if *name == PROXY_ERROR {
            return Classification::Failure;
        }
        if *name == GRPC_STATUS && !grpc_seen {
            if value.as_bytes() != b"0" {
                return Classification::Failure;
            }
            grpc_seen = true;
        }
    }
    Classification::Success
}

/// How a spliced upgrade is counted in the TCP metrics.
#[derive(Debug)]
pub enum UpgradeCount {
    /// The accepted connection is counted already (inbound: its bytes through
    /// [`crate::io::CountingIo`]); its guard is held until the splice ends, so its close and
    /// duration come when the upgraded stream really closes.
    Connection(Arc<TcpGuard>),
    /// A stream of its own (outbound: to the destination of the request), counted from the
    /// `101` on: bytes read from and written to the client side.
    Stream(TcpGuard),
}

/// After a `101 Switching Protocols`, joins the two upgraded streams and copies bytes both ways
/// until both close, or no byte moved for `idle` (counted in `proxy_error_total` with reason
/// `stream_idle_timeout`). Counted as `count` says.
pub fn splice_upgrades(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    metrics: Arc<Metrics>,
    direction: Direction,
    count: UpgradeCount,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                debug!(%error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let uncounted = ByteCounters::default();
        let counters = match &count {
            UpgradeCount::Connection(_) => &uncounted,
            UpgradeCount::Stream(guard) => guard.counters(),
        };
        let spliced = crate::io::splice(&mut client, &mut upstream, counters, idle).await;
        if let Err(error @ SpliceError::Idle(_)) = spliced {
            debug!(%error, "upgraded stream closed");
            metrics.error(direction, IDLE_TIMEOUT_REASON);
        }
        drop(count);
    });
}

#[cfg(test)]
mod tests;
