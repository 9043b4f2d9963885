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
            mode: Mode::Enforce,
        }],
        ports: DeclaredPorts::new([8080]),
        ..Default::default()
    };
    // Encoded spellings that would decode into another prefix cannot borrow /v1's authorization:
    // the raw string does not start with /v1 (and the ambiguous ones never reach policy).
    for other in ["/v1admin", "/%76%31/pay", "/admin"] {
        let d = authorize(&a, "bank", 8080, Some(&id("card")), req(&get, other));
        assert!(!d.lets_through(), "{other} borrowed /v1's authorization");
    }
    assert!(authorize(&a, "bank", 8080, Some(&id("card")), req(&get, "/v1/pay")).lets_through());
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
            mode: Mode::Enforce,
        }],
        ports: DeclaredPorts::new([8080, 9090]),
        ..Default::default()
    }
}

#[test]
fn default_allows_same_namespace_only() {
    let none = Authorizations::default();
    let d = authorize(&none, "bank", 8080, Some(&id("bank")), None);
    assert!(d.lets_through());
    assert_eq!(&*d.policy, DEFAULT_SAME_NAMESPACE);
    assert!(!authorize(&none, "bank", 8080, Some(&id("card")), None).lets_through());
    assert!(!authorize(&none, "bank", 8080, None, None).lets_through());
}

#[test]
fn named_port_allows_only_listed_callers_and_routes() {
    let a = allow_card();
    let post = http::Method::POST;
    let d = authorize(&a, "bank", 8080, Some(&id("card")), req(&post, "/v1/pay"));
    assert!(d.lets_through());
    assert_eq!(&*d.policy, "allow-card");
    // same namespace is no longer enough once the port is named
    let d = authorize(&a, "bank", 8080, Some(&id("bank")), req(&post, "/v1/pay"));
    assert!(!d.lets_through());
    assert_eq!(
        &*d.policy, "allow-card",
        "the 403 names the policy in force"
    );
    // wrong route
    let get = http::Method::GET;
    assert!(!authorize(&a, "bank", 8080, Some(&id("card")), req(&get, "/v1/pay")).lets_through());
    // opaque connection: the authorization has routes, so it does not allow raw TCP
    assert!(!authorize(&a, "bank", 8080, Some(&id("card")), None).lets_through());
    // another port falls back to the default
    assert!(authorize(&a, "bank", 9090, Some(&id("bank")), None).lets_through());
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
            mode: Mode::Enforce,
        }],
        ports: DeclaredPorts::default(),
        ..Default::default()
    };
    assert!(authorize(&a, "bank", 1, Some(&id("pg")), None).lets_through());
    assert!(authorize(&a, "bank", 1, None, None).lets_through());
    assert!(!authorize(&a, "bank", 1, Some(&id("order")), None).lets_through());
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

fn auth(name: &str, ports: &[u16], caller_ns: &str, mode: Mode) -> Authorization {
    Authorization {
        name: name.into(),
        ports: ports.to_vec(),
        routes: vec![],
        identities: vec![],
        namespaces: vec![caller_ns.into()],
        unauthenticated: false,
        mode,
    }
}

fn with(list: Vec<Authorization>, default_mode: Mode) -> Authorizations {
    Authorizations {
        list,
        ports: DeclaredPorts::new([8080, 9090]),
        default_mode,
        ..Default::default()
    }
}

#[test]
fn an_audit_policy_lets_a_denied_caller_through_as_would_deny() {
    let a = with(
        vec![auth("pay-audit", &[8080], "card", Mode::Audit)],
        Mode::Enforce,
    );
    let d = authorize(&a, "bank", 8080, Some(&id("mallory")), None);
    assert_eq!(d.verdict, Verdict::WouldDeny);
    assert!(d.lets_through());
    assert_eq!(&*d.policy, "pay-audit");
    assert_eq!(d.mode, Mode::Audit);
    assert!(!d.default);
    let unauth = authorize(&a, "bank", 8080, None, None);
    assert_eq!(unauth.verdict, Verdict::WouldDeny);
    // the caller it admits is simply allowed, in audit mode
    let d = authorize(&a, "bank", 8080, Some(&id("card")), None);
    assert_eq!((d.verdict, d.mode), (Verdict::Allow, Mode::Audit));
}

#[test]
fn an_audit_policy_on_another_port_does_not_soften_this_one() {
    // forged: the operator put a port of the workload in audit mode; a caller denied on another
    // port (by an enforce policy, or by the default) must stay denied
    let a = with(
        vec![
            auth("other-port-audit", &[9090], "card", Mode::Audit),
            auth("pay", &[8080], "card", Mode::Enforce),
        ],
        Mode::Enforce,
    );
    let d = authorize(&a, "bank", 8080, Some(&id("mallory")), None);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        &*d.policy, "pay",
        "only the policies on this port are in force"
    );
    let only_audit_elsewhere = with(
        vec![auth("other-port-audit", &[9090], "card", Mode::Audit)],
        Mode::Enforce,
    );
    let d = authorize(
        &only_audit_elsewhere,
        "bank",
        8080,
        Some(&id("mallory")),
        None,
    );
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "the enforce default decides port 8080"
    );
    assert!(d.default);
    assert_eq!(
        authorize(
            &only_audit_elsewhere,
            "bank",
            9090,
            Some(&id("mallory")),
            None
        )
        .verdict,
        Verdict::WouldDeny
    );
}

#[test]
fn one_enforce_policy_on_the_port_keeps_denials_enforced() {
    for order in [[Mode::Audit, Mode::Enforce], [Mode::Enforce, Mode::Audit]] {
        let a = with(
            vec![
                auth("first", &[8080], "card", order[0]),
                auth("second", &[], "order", order[1]),
            ],
            Mode::Audit,
        );
        let d = authorize(&a, "bank", 8080, Some(&id("mallory")), None);
        assert_eq!(d.verdict, Verdict::Deny, "{order:?}");
        assert_eq!(d.mode, Mode::Enforce);
        assert_eq!(&*d.policy, "first,second");
        // each admits its own callers
        assert!(authorize(&a, "bank", 8080, Some(&id("order")), None).lets_through());
    }
    let both_audit = with(
        vec![
            auth("first", &[8080], "card", Mode::Audit),
            auth("second", &[8080], "order", Mode::Audit),
        ],
        Mode::Enforce,
    );
    let d = authorize(&both_audit, "bank", 8080, Some(&id("mallory")), None);
    assert_eq!(
        (d.verdict, &*d.policy),
        (Verdict::WouldDeny, "first,second")
    );
}

#[test]
fn the_default_in_audit_mode_softens_only_ports_no_policy_covers() {
    let a = with(
        vec![auth("pay", &[8080], "card", Mode::Enforce)],
        Mode::Audit,
    );
    // port 9090: the default decides, in audit mode
    let d = authorize(&a, "bank", 9090, Some(&id("mallory")), None);
    assert_eq!(d.verdict, Verdict::WouldDeny);
    assert_eq!(&*d.policy, DEFAULT_SAME_NAMESPACE);
    assert_eq!(d.mode, Mode::Audit);
    assert!(d.default);
    assert_eq!(
        authorize(&a, "bank", 9090, None, None).verdict,
        Verdict::WouldDeny
    );
    let same = authorize(&a, "bank", 9090, Some(&id("bank")), None);
    assert_eq!((same.verdict, same.mode), (Verdict::Allow, Mode::Audit));
    // forged: the namespace's default in audit mode must not soften a port with an enforce
    // policy
    let d = authorize(&a, "bank", 8080, Some(&id("mallory")), None);
    assert_eq!((d.verdict, &*d.policy), (Verdict::Deny, "pay"));
    let d = authorize(&a, "bank", 8080, Some(&id("bank")), None);
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "the same namespace is not enough on a named port"
    );
    // and with the default enforced, a denial by the default is a denial
    let enforced = with(vec![], Mode::Enforce);
    assert_eq!(
        authorize(&enforced, "bank", 9090, Some(&id("mallory")), None).verdict,
        Verdict::Deny
    );
}

#[test]
fn a_route_mismatch_under_an_audit_policy_is_would_deny() {
    let mut a = allow_card();
    a.list[0].mode = Mode::Audit;
    let get = http::Method::GET;
    let d = authorize(&a, "bank", 8080, Some(&id("card")), req(&get, "/v1/pay"));
    assert_eq!(d.verdict, Verdict::WouldDeny);
    let e = a.list[0].evaluate(8080, Some(&id("card")), req(&get, "/v1/pay"));
    assert_eq!(
        e,
        Evaluation {
            covers_port: true,
            admits_caller: true,
            matches_request: false,
            route: None
        }
    );
    let post = http::Method::POST;
    let e = a.list[0].evaluate(8080, Some(&id("card")), req(&post, "/v1/pay"));
    assert_eq!((e.matches_request, e.route), (true, Some(0)));
}

#[test]
fn verdict_and_mode_names() {
    assert_eq!(
        [Verdict::Allow, Verdict::Deny, Verdict::WouldDeny].map(Verdict::as_str),
        ["allow", "deny", "would_deny"]
    );
    assert_eq!(
        [Mode::Enforce, Mode::Audit].map(Mode::as_str),
        ["enforce", "audit"]
    );
    assert_eq!(Mode::default(), Mode::Enforce);
}
