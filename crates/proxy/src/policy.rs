//! Inbound authorization: may this caller (a SPIFFE id, or unauthenticated) use this port and,
//! for HTTP, this method and path?
//!
//! The model (DESIGN.md): when no authorization names a port of this workload, meshed callers
//! from the same namespace are allowed and everyone else is denied (policy
//! [`DEFAULT_SAME_NAMESPACE`]). When any authorization names the port, only callers matching one
//! of them are allowed; a caller matching none is denied by the authorizations in force on that
//! port, and the 403 names them (their names joined by `,`), so an operator knows which policy
//! to edit. An authorization
//! with an empty `ports` list applies to every port. Routes (method + path prefix) only filter
//! HTTP requests; an opaque TCP connection is allowed only by an authorization without routes.
//!
//! [`authorize`] is a pure function over a snapshot, so the data path just reads the current
//! `Arc<Authorizations>` from a watch and calls it.

use std::sync::Arc;

use onemesh_identity::SpiffeId;

/// The policy name of the default (no authorization names the port).
pub const DEFAULT_SAME_NAMESPACE: &str = "default:same-namespace";

/// A method + path prefix filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// Methods; empty matches all.
    pub methods: Vec<http::Method>,
    /// Path prefix.
    pub path_prefix: String,
}

impl RouteMatch {
    /// `path` must already be [`normalize`]d. The prefix matches whole segments: `/v1` matches
    /// `/v1` and `/v1/pay`, never `/v1admin`.
    fn matches(&self, method: &http::Method, path: &str) -> bool {
        let prefix = self.path_prefix.as_str();
        let path_ok = match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
            None => false,
        };
        (self.methods.is_empty() || self.methods.contains(method)) && path_ok
    }
}

/// The path as an application would resolve it, for matching routes: the query dropped,
/// percent-encoded dots decoded and dot segments removed (RFC 3986 §5.2.4), so `/v1/../admin`
/// and `/v1/%2e%2e/admin` are both `/admin` and cannot borrow `/v1`'s authorization.
pub fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let suspicious = path.contains("/.") || path.contains('%');
    if !suspicious {
        return path.into();
    }
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/")).into()
}

/// One authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Its name (metric label, 403 body).
    pub name: Arc<str>,
    /// Ports of this workload it covers; empty = all.
    pub ports: Vec<u16>,
    /// HTTP routes it allows; empty = all requests (and opaque connections).
    pub routes: Vec<RouteMatch>,
    /// Identities allowed.
    pub identities: Vec<SpiffeId>,
    /// Namespaces whose meshed callers are allowed.
    pub namespaces: Vec<String>,
    /// Whether callers without a mesh identity are allowed.
    pub unauthenticated: bool,
}

impl Authorization {
    fn covers(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn admits(&self, caller: Option<&SpiffeId>) -> bool {
        match caller {
            Some(id) => {
                self.identities.contains(id) || self.namespaces.iter().any(|n| n == id.namespace())
            }
            None => self.unauthenticated,
        }
    }

    fn allows_request(&self, request: Option<(&http::Method, &str)>) -> bool {
        match request {
            Some((method, path)) => {
                self.routes.is_empty() || self.routes.iter().any(|r| r.matches(method, path))
            }
            None => self.routes.is_empty(),
        }
    }
}

/// The authorizations in force for this workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizations {
    /// All of them.
    pub list: Vec<Authorization>,
}

/// The outcome of an authorization check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The policy that allowed or denied (bounded: from config or a constant).
    pub policy: Arc<str>,
}

/// Decides whether `caller` may reach `port`; `request` is the HTTP method and path, or `None`
/// for an opaque connection.
pub fn authorize(
    auths: &Authorizations,
    own_namespace: &str,
    port: u16,
    caller: Option<&SpiffeId>,
    request: Option<(&http::Method, &str)>,
) -> Decision {
    let normalized = request.map(|(m, p)| (m, normalize(p)));
    let request = normalized.as_ref().map(|(m, p)| (*m, p.as_ref()));
    let mut in_force: Option<Arc<str>> = None;
    for auth in auths.list.iter().filter(|a| a.covers(port)) {
        if auth.admits(caller) && auth.allows_request(request) {
            return Decision {
                allowed: true,
                policy: auth.name.clone(),
            };
        }
        // Only the deny path pays for naming several policies.
        in_force = Some(match in_force {
            None => auth.name.clone(),
            Some(names) => format!("{names},{}", auth.name).into(),
        });
    }
    if let Some(policy) = in_force {
        return Decision {
            allowed: false,
            policy,
        };
    }
    Decision {
        allowed: caller.is_some_and(|id| id.namespace() == own_namespace),
        policy: default_policy_name(),
    }
}

/// [`DEFAULT_SAME_NAMESPACE`] as a decision's policy (built once: most requests are decided by
/// the default, and a decision must not allocate).
fn default_policy_name() -> Arc<str> {
    static NAME: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| DEFAULT_SAME_NAMESPACE.into());
    NAME.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize("/v1/pay?x=1"), "/v1/pay");
        assert_eq!(normalize("/v1/../admin"), "/admin");
        assert_eq!(normalize("/v1/%2e%2e/admin"), "/admin");
        assert_eq!(normalize("/v1/%2E%2E/%2e/admin/"), "/admin/");
        assert_eq!(normalize("/../../x"), "/x");
        assert_eq!(normalize("/v1/."), "/v1/");
        let get = http::Method::GET;
        let v1 = RouteMatch {
            methods: vec![],
            path_prefix: "/v1".into(),
        };
        assert!(v1.matches(&get, "/v1"));
        assert!(v1.matches(&get, "/v1/pay"));
        assert!(
            !v1.matches(&get, "/v1admin"),
            "a prefix matches whole segments only"
        );
        let a = Authorizations {
            list: vec![Authorization {
                name: "v1-only".into(),
                ports: vec![8080],
                routes: vec![v1],
                identities: vec![id("card")],
                namespaces: vec![],
                unauthenticated: false,
            }],
        };
        for sneaky in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1admin"] {
            let d = authorize(&a, "bank", 8080, Some(&id("card")), Some((&get, sneaky)));
            assert!(!d.allowed, "{sneaky} borrowed /v1's authorization");
        }
        assert!(authorize(&a, "bank", 8080, Some(&id("card")), Some((&get, "/v1/pay"))).allowed);
    }

    fn id(ns: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, ns).unwrap()
    }

    fn allow_card() -> Authorizations {
        Authorizations {
            list: vec![Authorization {
                name: "allow-card".into(),
                ports: vec![8080],
                routes: vec![RouteMatch {
                    methods: vec![http::Method::POST],
                    path_prefix: "/v1/".into(),
                }],
                identities: vec![id("card")],
                namespaces: vec![],
                unauthenticated: false,
            }],
        }
    }

    #[test]
    fn default_allows_same_namespace_only() {
        let none = Authorizations::default();
        let d = authorize(&none, "bank", 8080, Some(&id("bank")), None);
        assert!(d.allowed);
        assert_eq!(&*d.policy, DEFAULT_SAME_NAMESPACE);
        assert!(!authorize(&none, "bank", 8080, Some(&id("card")), None).allowed);
        assert!(!authorize(&none, "bank", 8080, None, None).allowed);
    }

    #[test]
    fn named_port_allows_only_listed_callers_and_routes() {
        let a = allow_card();
        let post = (&http::Method::POST, "/v1/pay");
        let d = authorize(&a, "bank", 8080, Some(&id("card")), Some(post));
        assert!(d.allowed);
        assert_eq!(&*d.policy, "allow-card");
        // same namespace is no longer enough once the port is named
        let d = authorize(&a, "bank", 8080, Some(&id("bank")), Some(post));
        assert!(!d.allowed);
        assert_eq!(
            &*d.policy, "allow-card",
            "the 403 names the policy in force"
        );
        // wrong route
        let get = (&http::Method::GET, "/v1/pay");
        assert!(!authorize(&a, "bank", 8080, Some(&id("card")), Some(get)).allowed);
        // opaque connection: the authorization has routes, so it does not allow raw TCP
        assert!(!authorize(&a, "bank", 8080, Some(&id("card")), None).allowed);
        // another port falls back to the default
        assert!(authorize(&a, "bank", 9090, Some(&id("bank")), None).allowed);
    }

    #[test]
    fn namespaces_and_unauthenticated() {
        let a = Authorizations {
            list: vec![Authorization {
                name: "open".into(),
                ports: vec![],
                routes: vec![],
                identities: vec![],
                namespaces: vec!["pg".into()],
                unauthenticated: true,
            }],
        };
        assert!(authorize(&a, "bank", 1, Some(&id("pg")), None).allowed);
        assert!(authorize(&a, "bank", 1, None, None).allowed);
        assert!(!authorize(&a, "bank", 1, Some(&id("order")), None).allowed);
    }
}
