//! The names the dashboard answers to: its guard against DNS rebinding. Without it, a web page
//! from anywhere could rebind its own domain name to 127.0.0.1 and read the mesh's identities,
//! topology and traffic through an operator's browser. A request whose `Host` (or absolute-form
//! authority) is not one of these names gets a 421 before anything else is looked at.

use std::net::SocketAddr;

/// A `--dashboard-host` value that is not a host name.
#[derive(Debug, thiserror::Error)]
#[error(
    "--dashboard-host {0:?} is not a host name: give NAME or NAME:PORT (e.g. `dash.example` or `localhost:9084`)"
)]
pub struct BadHost(String);

/// The names the dashboard answers to (its DNS-rebinding guard). A name without a port given by
/// the user matches on any port (as a `kubectl port-forward` or a proxy in front would use it);
/// the built-in loopback names match only on the dashboard's own port. Any IP address on the
/// dashboard's own port is answered too (a pod's IP in Kubernetes): a rebinding page's requests
/// carry its own domain name as `Host`, never an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Lower-case name (IPv6 addresses in brackets) and the port it must come with, if any.
    names: Vec<(String, Option<u16>)>,
    /// The dashboard's own port.
    port: u16,
}

impl Hosts {
    /// The built-in names for a dashboard bound on `bound`, plus `extra` (`NAME` or `NAME:PORT`).
    pub fn new(bound: SocketAddr, extra: &[String]) -> Result<Self, BadHost> {
        let port = Some(bound.port());
        let mut names: Vec<(String, Option<u16>)> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(|n| (n.to_string(), port))
            .collect();
        if !bound.ip().is_unspecified() {
            let ip = match bound.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            names.push((ip, port));
        }
        for e in extra {
            let parsed = split_host(e)
                .filter(|(name, _)| {
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
                })
                .ok_or_else(|| BadHost(e.clone()))?;
            names.push(parsed);
        }
        Ok(Self {
            names,
            port: bound.port(),
        })
    }

    /// Whether a request's `Host` (or absolute-form authority) names this dashboard. A host
    /// without a port means port 80, as a browser sends it.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let port = port.unwrap_or(80);
        let address = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_unspecified());
        (address && port == self.port)
            || self
                .names
                .iter()
                .any(|(n, p)| *n == name && p.is_none_or(|p| p == port))
    }
}

/// `name[:port]` → (lower-case name, port); IPv6 names keep their brackets. None if malformed.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n.to_string(), Some(p)),
            None => (host.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name.to_ascii_lowercase(), port))
}
