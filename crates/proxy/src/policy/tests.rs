//! Unit tests of inbound authorization and the declared-port decision.

use super::*;
use crate::path::check;

fn id(ns: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, ns).unwrap()
}

fn req<'a>(method: &'a http::Method, path: &'a str) -> Option<(&'a http::Method, CheckedPath<'a>)> {
    Some((method, check(path).unwrap()))
}

#[test]
fn prefixes_match_whole_segments_of_the_raw_path() {
    let get = http::Method::GET;
    let v1 = RouteMatch {
        methods: vec![],
        path_prefix: "/v1".into(),
    };
    assert!(v1.matches(&get, check("/v1").unwrap()));
    assert!(v1.matches(&get, check("/v1/pay").unwrap()));
    assert!(
        !v1.matches(&get, check("/v1admin").unwrap()),
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
        ports: DeclaredPorts::new([8080]),
        ..Default::default()
    };
    // Encoded spellings that would decode into another prefix cannot borrow /v1's authorization:
    // the raw string does not start with /v1 (and the ambiguous ones never reach policy).
    for other in ["/v1admin", "/%76%31/pay", "/admin"] {
        let d = authorize(&a, "bank", 8080, Some(&id("card")), req(&get, other));
        assert!(!d.allowed, "{other} borrowed /v1's authorization");
    }
    assert!(authorize(&a, "bank", 8080, Some(&id("card")), req(&get, "/v1/pay")).allowed);
    for ambiguous in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/..;/admin",
        "/v1%2fadmin",
    ] {
        assert!(check(ambiguous).is_err(), "{ambiguous} reaches policy");
    }
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
        ports: DeclaredPorts::new([8080, 9090]),
        ..Default::default()
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
    let post = http::Method::POST;
    let d = authorize(&a, "bank", 8080, Some(&id("card")), req(&post, "/v1/pay"));
    assert!(d.allowed);
    assert_eq!(&*d.policy, "allow-card");
    // same namespace is no longer enough once the port is named
    let d = authorize(&a, "bank", 8080, Some(&id("bank")), req(&post, "/v1/pay"));
    assert!(!d.allowed);
    assert_eq!(
        &*d.policy, "allow-card",
        "the 403 names the policy in force"
    );
    // wrong route
    let get = http::Method::GET;
    assert!(!authorize(&a, "bank", 8080, Some(&id("card")), req(&get, "/v1/pay")).allowed);
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
        ports: DeclaredPorts::default(),
        ..Default::default()
    };
    assert!(authorize(&a, "bank", 1, Some(&id("pg")), None).allowed);
    assert!(authorize(&a, "bank", 1, None, None).allowed);
    assert!(!authorize(&a, "bank", 1, Some(&id("order")), None).allowed);
}

#[test]
fn declared_ports_are_sorted_and_looked_up() {
    let ports = DeclaredPorts::new([9090, 8080, 9090, 80]);
    assert_eq!(ports.as_slice(), [80, 8080, 9090]);
    assert!(ports.contains(8080));
    assert!(!ports.contains(8081));
    assert!(
        !DeclaredPorts::default().contains(8080),
        "nothing by default"
    );
}

#[test]
fn only_declared_ports_that_are_not_the_proxys_own_are_forwarded() {
    let declared = DeclaredPorts::new([8080, 4191]);
    let own = [4140, 4143, 4191];
    assert_eq!(check_port(&declared, &own, 8080), Ok(8080));
    assert_eq!(
        check_port(&declared, &own, 9000),
        Err(PortRefusal::Undeclared(9000))
    );
    // the proxy's own ports are refused even when declared
    assert_eq!(
        check_port(&declared, &own, 4191),
        Err(PortRefusal::ProxyPort(4191))
    );
    assert_eq!(
        check_port(&declared, &own, 4143),
        Err(PortRefusal::ProxyPort(4143))
    );
    // before the first policy nothing is declared
    assert_eq!(
        check_port(&DeclaredPorts::default(), &own, 8080),
        Err(PortRefusal::Undeclared(8080))
    );
}

#[test]
fn plain_connections_go_only_to_a_declared_original_destination() {
    let declared = DeclaredPorts::new([8080]);
    let own = [4140, 4143, 4191];
    let dst = |port: u16| Some(SocketAddr::from(([10, 0, 0, 7], port)));
    assert_eq!(plain_target(dst(8080), &declared, &own), Ok(8080));
    assert_eq!(
        plain_target(dst(5432), &declared, &own),
        Err(PortRefusal::Undeclared(5432))
    );
    assert_eq!(
        plain_target(dst(4140), &declared, &own),
        Err(PortRefusal::ProxyPort(4140))
    );
    assert_eq!(
        plain_target(None, &declared, &own),
        Err(PortRefusal::NoOriginalDst)
    );
    let reasons: Vec<&str> = [
        PortRefusal::Undeclared(1),
        PortRefusal::ProxyPort(1),
        PortRefusal::NoOriginalDst,
    ]
    .iter()
    .map(|r| r.reason())
    .collect();
    assert_eq!(
        reasons,
        ["undeclared_port", "proxy_port", "no_original_dst"]
    );
}
