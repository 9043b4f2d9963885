//! SPIFFE ids of onemesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict on purpose: an id is compared byte for byte in authorization decisions, so
//! there is exactly one spelling of each id (lower-case trust domain, no port, query, fragment,
//! trailing slash or empty segment). The namespace must be a Kubernetes namespace name (a DNS
//! label) and the service account a Kubernetes service-account name (a DNS subdomain), which also
//! keeps the ids usable as metric label values without escaping.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use rustls_pki_types::{DnsName, ServerName};

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_NAMESPACE_LEN: usize = 63;
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid onemesh SPIFFE id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "spiffe id is empty: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Empty,
    #[error("spiffe id is {len} bytes long, more than the {MAX_ID_LEN} allowed: use shorter names")]
    TooLong { len: usize },
    #[error(
        "spiffe id {id:?} does not start with \"spiffe://\": write it as spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    WrongScheme { id: String },
    #[error(
        "spiffe id {id:?} has no trust domain: put one after \"spiffe://\", e.g. spiffe://cluster.local/..."
    )]
    MissingTrustDomain { id: String },
    #[error("trust domain {trust_domain:?} is invalid: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: &'static str,
    },
    #[error(
        "spiffe id {id:?} has no path: expected /ns/<namespace>/sa/<service-account> after the trust domain"
    )]
    MissingPath { id: String },
    #[error("spiffe id {id:?} contains a query or fragment: remove everything from '?' or '#'")]
    QueryOrFragment { id: String },
    #[error("spiffe id path {path:?} has an empty segment (\"//\" or a trailing '/'): remove it")]
    EmptySegment { path: String },
    #[error(
        "spiffe id path {path:?} is not of the form /ns/<namespace>/sa/<service-account>: fix the segments"
    )]
    BadPath { path: String },
    #[error("namespace {namespace:?} is invalid: {reason}")]
    InvalidNamespace {
        namespace: String,
        reason: &'static str,
    },
    #[error("service account {service_account:?} is invalid: {reason}")]
    InvalidServiceAccount {
        service_account: String,
        reason: &'static str,
    },
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Ordering and hashing follow the URI form, so ids sort as their strings do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The full URI; the parts below are byte ranges into it.
    uri: String,
    td_end: usize,
    ns_start: usize,
    ns_end: usize,
    sa_start: usize,
}

impl SpiffeId {
    /// Builds an id from its parts, validating each one.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        validate_trust_domain(trust_domain)?;
        validate_namespace(namespace)?;
        validate_service_account(service_account)?;
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        if uri.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: uri.len() });
        }
        let td_end = SCHEME.len() + trust_domain.len();
        let ns_start = td_end + "/ns/".len();
        let ns_end = ns_start + namespace.len();
        let sa_start = ns_end + "/sa/".len();
        Ok(Self {
            uri,
            td_end,
            ns_start,
            ns_end,
            sa_start,
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns_start..self.ns_end]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start..]
    }

    /// The URI form, same as `to_string()` without allocating.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// A TLS server name for connecting to a workload with this id:
    /// `<service-account>.<namespace>.sa.<trust-domain>` when that is a valid DNS name (it is
    /// unless the parts are very long), else the loopback address, for which rustls sends no SNI.
    /// onemesh verifiers ignore the server name (they check the SPIFFE id), so this only gives
    /// the SNI a stable, readable value.
    pub fn tls_server_name(&self) -> ServerName<'static> {
        let name = format!(
            "{}.{}.sa.{}",
            self.service_account(),
            self.namespace(),
            self.trust_domain()
        );
        match DnsName::try_from(name) {
            Ok(dns) => ServerName::DnsName(dns),
            Err(_) => ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into()),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(IdError::WrongScheme { id: s.to_string() });
        };
        if rest.contains(['?', '#']) {
            return Err(IdError::QueryOrFragment { id: s.to_string() });
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(IdError::MissingTrustDomain { id: s.to_string() });
        }
        validate_trust_domain(trust_domain)?;
        if path.is_empty() || path == "/" {
            return Err(IdError::MissingPath { id: s.to_string() });
        }
        let segments: Vec<&str> = path[1..].split('/').collect();
        if segments.iter().any(|seg| seg.is_empty()) {
            return Err(IdError::EmptySegment {
                path: path.to_string(),
            });
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                SpiffeId::new(trust_domain, namespace, service_account)
            }
            _ => Err(IdError::BadPath {
                path: path.to_string(),
            }),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a trust domain: lower-case letters, digits, '.', '-', '_' (the SPIFFE character set),
/// at most 255 bytes.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    let err = |reason| IdError::InvalidTrustDomain {
        trust_domain: td.to_string(),
        reason,
    };
    if td.is_empty() {
        return Err(err("it is empty: use e.g. \"cluster.local\""));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(err("it is longer than 255 bytes: use a shorter name"));
    }
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(err("it has upper-case letters: write it in lower case"));
    }
    if td.contains(':') {
        return Err(err(
            "it has a port or user info: remove everything from ':'",
        ));
    }
    if td.contains('@') {
        return Err(err("it has user info: remove everything up to '@'"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(err(
            "it may contain only lower-case letters, digits, '.', '-' and '_'",
        ));
    }
    Ok(())
}

fn validate_namespace(ns: &str) -> Result<(), IdError> {
    let err = |reason| IdError::InvalidNamespace {
        namespace: ns.to_string(),
        reason,
    };
    if ns.is_empty() {
        return Err(err("it is empty: name a kubernetes namespace"));
    }
    if ns.len() > MAX_NAMESPACE_LEN {
        return Err(err(
            "it is longer than 63 bytes (a kubernetes namespace is a dns label)",
        ));
    }
    check_dns_label(ns).map_err(err)
}

fn validate_service_account(sa: &str) -> Result<(), IdError> {
    let err = |reason| IdError::InvalidServiceAccount {
        service_account: sa.to_string(),
        reason,
    };
    if sa.is_empty() {
        return Err(err("it is empty: name a kubernetes service account"));
    }
    if sa.len() > MAX_SERVICE_ACCOUNT_LEN {
        return Err(err(
            "it is longer than 253 bytes (a kubernetes service account is a dns subdomain)",
        ));
    }
    for label in sa.split('.') {
        if label.is_empty() {
            return Err(err(
                "it has an empty dns label ('..' or a leading/trailing '.')",
            ));
        }
        check_dns_label(label).map_err(err)?;
    }
    Ok(())
}

/// A DNS label as Kubernetes wants it: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn check_dns_label(label: &str) -> Result<(), &'static str> {
    if label.len() > 63 {
        return Err("it has a dns label longer than 63 bytes: use a shorter name");
    }
    if label.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("it has upper-case letters: kubernetes names are lower case");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(
            "it may contain only lower-case letters, digits and '-' (and '.' between labels of a service account)",
        );
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
