//! Unit tests of the explain answer.

use super::*;
use crate::policy::{Authorization, DeclaredPorts, Mode, RouteMatch};

fn id(ns: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{ns}")
}

fn rules() -> Authorizations {
    Authorizations {
        list: vec![
            Authorization {
                name: "card-allow-pg".into(),
                ports: vec![8080],
                routes: vec![
                    RouteMatch {
                        methods: vec![http::Method::GET],
                        path_prefix: "/v1/status".into(),
                    },
                    RouteMatch {
                        methods: vec![http::Method::POST],
                        path_prefix: "/v1/".into(),
                    },
                ],
                identities: vec![id("pg").parse().unwrap()],
                namespaces: vec![],
                unauthenticated: false,
                mode: Mode::Enforce,
            },
            Authorization {
                name: "metrics-audit".into(),
                ports: vec![9090],
                routes: vec![],
                identities: vec![],
                namespaces: vec!["ops".into()],
                unauthenticated: false,
                mode: Mode::Audit,
            },
        ],
        ports: DeclaredPorts::new([8080, 9090, 7070]),
        ..Default::default()
    }
}

fn ask(caller: Option<&str>, port: u16, request: Option<(&str, &str)>) -> Answer {
    let query = Query {
        caller: caller.map(id),
        port,
        method: request.map(|r| r.0.to_string()),
        path: request.map(|r| r.1.to_string()),
    };
    explain(&rules(), "card", &[4143, 4191], &query).unwrap()
}

#[test]
fn allow_names_the_policy_and_the_route() {
    let a = ask(Some("pg"), 8080, Some(("POST", "/v1/pay?amount=1")));
    assert_eq!(
        (a.decision, a.policy.as_str(), a.default),
        ("allow", "card-allow-pg", false)
    );
    assert_eq!(
        a.port,
        PortAnswer {
            declared: true,
            refusal: None
        }
    );
    assert_eq!(
        a.path,
        PathAnswer {
            ok: true,
            error: None
        }
    );
    assert_eq!(a.default_mode, "enforce");
    assert_eq!(
        a.policies[0],
        PolicyAnswer {
            name: "card-allow-pg".into(),
            mode: "enforce",
            covers_port: true,
            admits_caller: true,
            matches_request: true,
            route: Some(1),
        }
    );
    assert!(!a.policies[1].covers_port);
}

#[test]
fn deny_by_policy_by_route_and_by_default() {
    let a = ask(Some("bank"), 8080, Some(("POST", "/v1/pay")));
    assert_eq!((a.decision, a.policy.as_str()), ("deny", "card-allow-pg"));
    assert!(!a.policies[0].admits_caller && a.policies[0].matches_request);
    let a = ask(Some("pg"), 8080, Some(("DELETE", "/v1/pay")));
    assert_eq!(a.decision, "deny");
    assert_eq!(
        (a.policies[0].matches_request, a.policies[0].route),
        (false, None)
    );
    // port 7070: no policy, the default decides
    let a = ask(Some("pg"), 7070, None);
    assert_eq!((a.decision, a.default), ("deny", true));
    assert_eq!(a.policy, crate::policy::DEFAULT_SAME_NAMESPACE);
    let a = ask(Some("card"), 7070, None);
    assert_eq!((a.decision, a.default), ("allow", true));
    // an opaque connection is not allowed by an authorization with routes
    let a = ask(Some("pg"), 8080, None);
    assert_eq!(a.decision, "deny");
}

#[test]
fn would_deny_under_an_audit_policy_or_default() {
    let a = ask(None, 9090, None);
    assert_eq!(
        (a.decision, a.policy.as_str()),
        ("would_deny", "metrics-audit")
    );
    assert_eq!(a.policies[1].mode, "audit");
    let mut r = rules();
    r.default_mode = Mode::Audit;
    let q = Query {
        caller: Some(id("pg")),
        port: 7070,
        method: None,
        path: None,
    };
    let a = explain(&r, "card", &[], &q).unwrap();
    assert_eq!(
        (a.decision, a.default, a.default_mode),
        ("would_deny", true, "audit")
    );
}

#[test]
fn refusals_before_policy_are_denials_without_a_policy() {
    let a = ask(Some("pg"), 8080, Some(("POST", "/v1/../admin")));
    assert_eq!((a.decision, a.policy.as_str()), ("deny", ""));
    assert!(!a.path.ok);
    assert!(a.path.error.unwrap().contains("dot segment"));
    assert!(!a.policies[0].matches_request);
    let a = ask(Some("pg"), 5432, None);
    assert_eq!((a.decision, a.policy.as_str()), ("deny", ""));
    assert_eq!(
        a.port,
        PortAnswer {
            declared: false,
            refusal: Some("undeclared_port")
        }
    );
    let a = ask(Some("card"), 4191, None);
    assert_eq!(a.port.refusal, Some("proxy_port"));
    // even a would_deny port: the refusal comes first
    let mut r = rules();
    r.default_mode = Mode::Audit;
    let q = Query {
        caller: None,
        port: 5432,
        method: None,
        path: None,
    };
    assert_eq!(explain(&r, "card", &[], &q).unwrap().decision, "deny");
}

#[test]
fn bad_questions_are_explained() {
    let err = |body: &[u8]| {
        parse(body)
            .and_then(|q| explain(&rules(), "card", &[], &q))
            .unwrap_err()
            .to_string()
    };
    assert!(err(b"{").contains("not an explain request"));
    assert!(err(br#"{"port": 70000}"#).contains("not an explain request"));
    assert!(err(br#"{"port": 1, "colour": 1}"#).contains("colour"));
    assert!(err(br#"{"caller": "pg", "port": 1}"#).contains("not a SPIFFE id"));
    assert!(err(br#"{"port": 1, "method": "G T", "path": "/"}"#).contains("not an HTTP method"));
    assert!(err(br#"{"port": 1, "method": "GET"}"#).contains("both method and path"));
    let big = format!(r#"{{"port": 1, "path": "{}"}}"#, "a".repeat(MAX_BODY_BYTES));
    assert!(err(big.as_bytes()).contains("larger than"));
    assert!(parse(br#"{"caller": null, "port": 8080, "method": null, "path": null}"#).is_ok());
}
