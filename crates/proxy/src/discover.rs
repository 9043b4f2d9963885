//! The seams between the data path and whatever configures it: service discovery
//! ([`Discover`]), inbound authorization ([`InboundPolicy`]) and certificate issuance
//! ([`Certifier`]).
//!
//! Today the implementations are static (see [`crate::static_config`]): a JSON file and a local
//! issuer. The next step replaces them with a gRPC control-plane client without touching the data
//! path, because the data path only ever sees these traits and the `tokio::sync::watch` receivers
//! they hand out:
//!
//! - [`Discover::resolve`] turns a name (or an original destination address) into a
//!   [`Resolution`]: either a watch of the [`Service`] (endpoints with their expected identities,
//!   routes) or "not in the mesh" (egress passthrough). A control-plane client returns a receiver
//!   at once and keeps sending updates; the data path reads `borrow()` per request, which is an
//!   `Arc` clone.
//! - [`InboundPolicy::authorizations`] gives a watch of the [`Authorizations`] in force, with the
//!   workload's declared ports (the only ports the inbound forwards to).
//! - [`Certifier::certify`] turns a CSR (DER) into an [`Issued`] chain. The private key never
//!   leaves the proxy.
//!
//! Each trait has its static implementation beside it in `static_config`, which doubles as the
//! test double.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::{Issued, SpiffeId};
use tokio::sync::watch;

use crate::policy::Authorizations;

/// A boxed, sendable future (the seams are object-safe).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the application asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A host name and port (from a URI, a Host header or a tcp forward).
    Name {
        /// The host as written (lower-cased, no trailing dot).
        host: String,
        /// The port.
        port: u16,
    },
    /// An original destination address (iptables redirect) or a literal IP in a Host header.
    Addr(SocketAddr),
}

impl Target {
    /// Parses `host[:port]` (port defaults to `default_port`). IP literals become [`Target::Addr`].
    pub fn from_authority(authority: &str, default_port: u16) -> Option<Target> {
        let authority: http::uri::Authority = authority.parse().ok()?;
        // `host:` means the default port; a port that is not a u16 makes the authority invalid
        // (`http` would read it as no port at all).
        let host_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, hp)| hp);
        let port = match host_port[authority.host().len()..].strip_prefix(':') {
            None | Some("") => default_port,
            Some(port) => port.parse().ok()?,
        };
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Some(Target::Addr(SocketAddr::new(ip, port)));
        }
        Some(Target::Name { host, port })
    }

    /// `host:port` for logs and the transport header.
    pub fn authority(&self) -> String {
        match self {
            Target::Name { host, port } => format!("{host}:{port}"),
            Target::Addr(addr) => addr.to_string(),
        }
    }
}

/// How an endpoint's traffic is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointProtocol {
    /// HTTP (detected per connection on the client side).
    Http,
    /// Always opaque TCP.
    Opaque,
}

/// One endpoint of a service: another workload's inbound proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The inbound proxy's address.
    pub addr: SocketAddr,
    /// The application port behind that proxy.
    pub target_port: u16,
    /// The identity the endpoint must prove in the TLS handshake.
    pub identity: SpiffeId,
    /// The endpoint's workload name (metric label).
    pub workload: Arc<str>,
    /// The endpoint's namespace (metric label).
    pub namespace: Arc<str>,
    /// Relative weight for load balancing (at least 1).
    pub weight: u32,
    /// How to carry its traffic.
    pub protocol: EndpointProtocol,
}

/// An outbound HTTP route of a service: per-route timeout and retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The route's name (metric label).
    pub name: Arc<str>,
    /// Methods it matches; empty matches all.
    pub methods: Vec<http::Method>,
    /// Path prefix it matches, in whole segments.
    pub path_prefix: String,
    /// Request timeout (504 after it).
    pub timeout: Option<Duration>,
    /// Whether a failed request may be retried even if its method is not idempotent.
    pub retryable: bool,
    /// Where matched requests go, split by weight (`None`: the service itself).
    pub backends: Option<Arc<[Backend]>>,
    /// How failed requests are retried (`None`: [`RetryPolicy::DEFAULT`]).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The route's own circuit breaker (it counts only this route's requests); `None`: the
    /// service's breaker, if any, covers the route.
    pub breaker: Option<Arc<BreakerConfig>>,
}

/// How a route's failed requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: none).
    pub attempts: u32,
    /// Retry when no answer came (connect, TLS, a broken connection) or the endpoint's proxy
    /// could not deliver.
    pub on_connect_failure: bool,
    /// HTTP statuses retried: bit `status - 400` (400-599).
    pub on_statuses: [u64; 4],
    /// gRPC status codes retried: bit `code`.
    pub on_grpc: u32,
    /// Each attempt's own deadline (its expiry counts as a `504`).
    pub per_try_timeout: Option<Duration>,
    /// The header that makes a non-idempotent request retryable.
    pub idempotency_header: http::HeaderName,
    /// Bodies up to this size are kept to be sent again.
    pub max_body_bytes: u32,
    /// Retries allowed: this percent of requests…
    pub budget_percent: u32,
    /// …plus this many per second.
    pub budget_min_per_second: u32,
}

/// [`RetryPolicy::DEFAULT`], to borrow.
pub static DEFAULT_RETRY: RetryPolicy = RetryPolicy::DEFAULT;

impl RetryPolicy {
    /// Two attempts, on connect failures, 502, 503, 504 and gRPC `UNAVAILABLE`, for idempotent
    /// requests and those with `Idempotency-Key`; bodies up to 64 KiB; a budget of 20 % of
    /// requests plus 10 per second.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 2,
        on_connect_failure: true,
        on_statuses: RetryPolicy::statuses(&[502, 503, 504]),
        on_grpc: 1 << 14,
        per_try_timeout: None,
        idempotency_header: http::HeaderName::from_static("idempotency-key"),
        max_body_bytes: 64 * 1024,
        budget_percent: 20,
        budget_min_per_second: 10,
    };

    /// The statuses bitmap of `codes` (those outside 400-599 are left out).
    pub const fn statuses(codes: &[u16]) -> [u64; 4] {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < codes.len() {
            let c = codes[i];
            if c >= 400 && c <= 599 {
                let bit = (c - 400) as usize;
                bits[bit / 64] |= 1 << (bit % 64);
            }
            i += 1;
        }
        bits
    }

    /// Whether `status` is retried.
    pub fn retries_status(&self, status: http::StatusCode) -> bool {
        let code = status.as_u16();
        (400..=599).contains(&code) && {
            let bit = usize::from(code - 400);
            self.on_statuses[bit / 64] & (1 << (bit % 64)) != 0
        }
    }

    /// Whether gRPC status `code` is retried.
    pub fn retries_grpc(&self, code: u32) -> bool {
        code < 32 && self.on_grpc & (1 << code) != 0
    }
}

/// One backend of a route's split: a service, and its relative weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `<service>.<namespace>`, resolved on the port the request was sent to.
    pub name: Arc<str>,
    /// Relative weight (0: never chosen).
    pub weight: u32,
}

/// A circuit breaker's settings (see [`crate::outbound::breaker`]). At least one of the two
/// failure-accrual rules is set (the control plane checks; a breaker with neither never trips).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Eject an endpoint after this many failures in a row (0: off).
    pub consecutive_failures: u32,
    /// Eject an endpoint whose success rate falls below a threshold.
    pub success_rate: Option<SuccessRate>,
    /// The first ejection's length; each ejection in a row doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The most endpoints ejected at once, in percent of the service's endpoints (an endpoint
    /// beyond it stays in rotation, unless every endpoint is failing).
    pub max_ejection_percent: u8,
}

/// The success-rate rule of a [`BreakerConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessRate {
    /// The lowest acceptable success rate, in per mille (0-1000).
    pub min_permille: u16,
    /// The window the rate is measured over.
    pub window: Duration,
    /// Fewer requests than this in the window never trip the rule.
    pub min_requests: u32,
}

impl Route {
    /// Whether the route matches a request. The prefix matches whole path segments, as an
    /// authorization's routes do and as Gateway API's `PathPrefix`: `/pay` matches `/pay` and
    /// `/pay/1`, never `/payments` (one byte compared beyond the prefix).
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        let prefix = self.path_prefix.as_str();
        let path_ok = match path.strip_prefix(prefix) {
            Some(rest) => {
                prefix.is_empty()
                    || prefix.ends_with('/')
                    || rest.is_empty()
                    || rest.starts_with('/')
            }
            None => false,
        };
        path_ok && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// A meshed service as the outbound side sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `<service>.<namespace>` (log/metric label).
    pub name: Arc<str>,
    /// The service's namespace.
    pub namespace: Arc<str>,
    /// The service port.
    pub port: u16,
    /// Current endpoints (may be empty: requests get 503).
    pub endpoints: Vec<Endpoint>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// The service's circuit breaker (for requests whose route has none of its own).
    pub breaker: Option<Arc<BreakerConfig>>,
}

impl Service {
    /// The first route matching the request.
    pub fn route_for(&self, method: &http::Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(method, path))
    }
}

/// The answer to a resolution.
#[derive(Clone, Debug)]
pub enum Resolution {
    /// In the mesh: follow this watch.
    Mesh(watch::Receiver<Arc<Service>>),
    /// Not in the mesh: forward plain to the destination as named (egress passthrough).
    External,
}

/// Why a resolution failed (the request gets 503).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The discovery source could not answer.
    #[error("service discovery is unavailable: {0}")]
    Unavailable(String),
}

/// Resolves destinations to services.
pub trait Discover: Send + Sync + 'static {
    /// Resolves a target. Cheap to call repeatedly; the data path caches per target anyway.
    fn resolve(&self, target: &Target) -> BoxFuture<Result<Resolution, DiscoverError>>;
}

/// Gives the inbound authorizations in force.
pub trait InboundPolicy: Send + Sync + 'static {
    /// A watch of the current authorizations.
    fn authorizations(&self) -> watch::Receiver<Arc<Authorizations>>;
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The issuer refused or failed to sign.
    #[error("the issuer refused the certificate signing request: {0}")]
    Refused(#[from] onemesh_identity::Error),
    /// The issuer could not be reached.
    #[error("the issuer is unreachable: {0}")]
    Unreachable(String),
    /// The bootstrap token could not be read (retried: a projected token may appear later).
    #[error("no bootstrap token: {0}")]
    NoToken(String),
}

/// Obtains certificates for this proxy's key.
pub trait Certifier: Send + Sync + 'static {
    /// Sends a CSR (DER) and returns the issued chain.
    fn certify(&self, csr_der: Vec<u8>) -> BoxFuture<Result<Issued, CertifyError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_parse() {
        assert_eq!(
            Target::from_authority("Bank.Bank:8080", 80),
            Some(Target::Name {
                host: "bank.bank".into(),
                port: 8080
            })
        );
        assert_eq!(
            Target::from_authority("bank", 80),
            Some(Target::Name {
                host: "bank".into(),
                port: 80
            })
        );
        assert_eq!(
            Target::from_authority("127.0.0.1:9", 80),
            Some(Target::Addr("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            Target::from_authority("[::1]:9", 80),
            Some(Target::Addr("[::1]:9".parse().unwrap()))
        );
        assert_eq!(Target::from_authority("", 80), None);
        assert_eq!(Target::from_authority("bank:99999", 80), None);
        assert_eq!(Target::from_authority("bank:x", 80), None);
        assert_eq!(
            Target::from_authority("bank:", 80),
            Target::from_authority("bank:80", 80)
        );
        assert_eq!(
            Target::from_authority("me@Bank:81", 80),
            Some(Target::Name {
                host: "bank".into(),
                port: 81
            })
        );
        assert_eq!(Target::from_authority("a b", 80), None);
    }

    #[test]
    fn routes_match_method_and_prefix() {
        let r = Route {
            name: "get".into(),
            methods: vec![http::Method::GET],
            path_prefix: "/v1/".into(),
            timeout: None,
            retryable: false,
            backends: None,
            retry: None,
            breaker: None,
        };
        assert!(r.matches(&http::Method::GET, "/v1/x"));
        assert!(!r.matches(&http::Method::POST, "/v1/x"));
        assert!(!r.matches(&http::Method::GET, "/v2/x"));
    }

    #[test]
    fn a_route_prefix_matches_whole_segments() {
        let r = |prefix: &str| Route {
            name: "r".into(),
            methods: Vec::new(),
            path_prefix: prefix.into(),
            timeout: None,
            retryable: false,
            backends: None,
            retry: None,
            breaker: None,
        };
        let get = &http::Method::GET;
        assert!(r("/pay").matches(get, "/pay"));
        assert!(r("/pay").matches(get, "/pay/1"));
        assert!(r("/pay").matches(get, "/pay/"));
        assert!(!r("/pay").matches(get, "/payments"));
        assert!(r("/pay/").matches(get, "/pay/1"));
        assert!(!r("/pay/").matches(get, "/pay"));
        assert!(r("/").matches(get, "/anything"));
        assert!(r("").matches(get, "/anything"));
    }
}
