//! Unit tests of SPIFFE id parsing and formatting.

use super::*;

fn parse(s: &str) -> Result<SpiffeId, IdError> {
    s.parse()
}

#[test]
fn parses_a_good_id_and_prints_it_back() {
    let id = parse("spiffe://cluster.local/ns/order/sa/web").unwrap();
    assert_eq!(id.trust_domain(), "cluster.local");
    assert_eq!(id.namespace(), "order");
    assert_eq!(id.service_account(), "web");
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/order/sa/web");
    assert_eq!(id.as_str(), id.to_string());
    assert_eq!(SpiffeId::new("cluster.local", "order", "web").unwrap(), id);
}

#[test]
fn accepts_the_allowed_characters() {
    let id = parse("spiffe://my_domain-1.example/ns/a-1/sa/sa.with-dots.2").unwrap();
    assert_eq!(id.trust_domain(), "my_domain-1.example");
    assert_eq!(id.namespace(), "a-1");
    assert_eq!(id.service_account(), "sa.with-dots.2");
}

type ErrorCheck = fn(&IdError) -> bool;

#[test]
fn rejects_bad_forms_with_the_right_error() {
    let cases: Vec<(&str, ErrorCheck)> = vec![
        ("", |e| matches!(e, IdError::Empty)),
        ("https://cluster.local/ns/a/sa/b", |e| {
            matches!(e, IdError::WrongScheme { .. })
        }),
        ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
            matches!(e, IdError::WrongScheme { .. })
        }),
        ("spiffe:/cluster.local/ns/a/sa/b", |e| {
            matches!(e, IdError::WrongScheme { .. })
        }),
        ("cluster.local/ns/a/sa/b", |e| {
            matches!(e, IdError::WrongScheme { .. })
        }),
        ("spiffe:///ns/a/sa/b", |e| {
            matches!(e, IdError::MissingTrustDomain { .. })
        }),
        ("spiffe://cluster.local", |e| {
            matches!(e, IdError::MissingPath { .. })
        }),
        ("spiffe://cluster.local/", |e| {
            matches!(e, IdError::MissingPath { .. })
        }),
        ("spiffe://cluster.local/ns/a", |e| {
            matches!(e, IdError::BadPath { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa", |e| {
            matches!(e, IdError::BadPath { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
            matches!(e, IdError::BadPath { .. })
        }),
        ("spiffe://cluster.local/namespace/a/sa/b", |e| {
            matches!(e, IdError::BadPath { .. })
        }),
        ("spiffe://cluster.local/ns/a/serviceaccount/b", |e| {
            matches!(e, IdError::BadPath { .. })
        }),
        ("spiffe://cluster.local/ns//sa/b", |e| {
            matches!(e, IdError::EmptySegment { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/", |e| {
            matches!(e, IdError::EmptySegment { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b/", |e| {
            matches!(e, IdError::EmptySegment { .. })
        }),
        ("spiffe://cluster.local//ns/a/sa/b", |e| {
            matches!(e, IdError::EmptySegment { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
            matches!(e, IdError::QueryOrFragment { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b#frag", |e| {
            matches!(e, IdError::QueryOrFragment { .. })
        }),
        (
            "spiffe://Cluster.Local/ns/a/sa/b",
            |e| matches!(e, IdError::InvalidTrustDomain { reason, .. } if reason.contains("upper-case")),
        ),
        (
            "spiffe://cluster.local:8080/ns/a/sa/b",
            |e| matches!(e, IdError::InvalidTrustDomain { reason, .. } if reason.contains("port")),
        ),
        (
            "spiffe://user@cluster.local/ns/a/sa/b",
            |e| matches!(e, IdError::InvalidTrustDomain { reason, .. } if reason.contains("user")),
        ),
        ("spiffe://clu$ter/ns/a/sa/b", |e| {
            matches!(e, IdError::InvalidTrustDomain { .. })
        }),
        ("spiffe://cluster.local/ns/Order/sa/b", |e| {
            matches!(e, IdError::InvalidNamespace { .. })
        }),
        ("spiffe://cluster.local/ns/-a/sa/b", |e| {
            matches!(e, IdError::InvalidNamespace { .. })
        }),
        ("spiffe://cluster.local/ns/a.b/sa/b", |e| {
            matches!(e, IdError::InvalidNamespace { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/B", |e| {
            matches!(e, IdError::InvalidServiceAccount { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b..c", |e| {
            matches!(e, IdError::InvalidServiceAccount { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/b_c", |e| {
            matches!(e, IdError::InvalidServiceAccount { .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/%62", |e| {
            matches!(e, IdError::InvalidServiceAccount { .. })
        }),
    ];
    for (input, check) in cases {
        match parse(input) {
            Ok(id) => panic!("{input:?} parsed as {id}"),
            Err(e) => {
                assert!(check(&e), "{input:?} gave the wrong error: {e:?}");
                let msg = e.to_string();
                assert!(
                    !msg.is_empty() && !msg.starts_with(char::is_uppercase),
                    "{msg}"
                );
            }
        }
    }
}

#[test]
fn enforces_length_limits() {
    let long_ns = "a".repeat(64);
    assert!(matches!(
        SpiffeId::new("cluster.local", &long_ns, "b"),
        Err(IdError::InvalidNamespace { .. })
    ));
    assert!(SpiffeId::new("cluster.local", &"a".repeat(63), "b").is_ok());
    let long_label = "b".repeat(64);
    assert!(matches!(
        SpiffeId::new("cluster.local", "a", &long_label),
        Err(IdError::InvalidServiceAccount { .. })
    ));
    let huge = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(3000));
    assert!(matches!(parse(&huge), Err(IdError::TooLong { .. })));
}

#[test]
fn new_validates_parts_like_parse() {
    assert!(matches!(
        SpiffeId::new("", "a", "b"),
        Err(IdError::InvalidTrustDomain { .. })
    ));
    assert!(matches!(
        SpiffeId::new("cluster.local", "", "b"),
        Err(IdError::InvalidNamespace { .. })
    ));
    assert!(matches!(
        SpiffeId::new("cluster.local", "a", ""),
        Err(IdError::InvalidServiceAccount { .. })
    ));
    assert!(matches!(
        SpiffeId::new("cluster.local", "a/sa/c", "b"),
        Err(IdError::InvalidNamespace { .. })
    ));
}

#[test]
fn orders_and_hashes_by_uri() {
    let a = SpiffeId::new("cluster.local", "a", "z").unwrap();
    let b = SpiffeId::new("cluster.local", "b", "a").unwrap();
    assert!(a < b);
    let set: std::collections::HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
    assert_eq!(set.len(), 2);
}

#[test]
fn serde_uses_the_uri_string() {
    let id = SpiffeId::new("cluster.local", "pg", "api").unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"spiffe://cluster.local/ns/pg/sa/api\"");
    let back: SpiffeId = serde_json::from_str(&json).unwrap();
    assert_eq!(back, id);
    let err = serde_json::from_str::<SpiffeId>("\"spiffe://cluster.local/ns/pg\"").unwrap_err();
    assert!(
        err.to_string()
            .contains("/ns/<namespace>/sa/<service-account>"),
        "{err}"
    );
}

#[test]
fn tls_server_name_is_a_dns_name() {
    let id = SpiffeId::new("cluster.local", "pg", "api").unwrap();
    assert_eq!(id.tls_server_name().to_str(), "api.pg.sa.cluster.local");
    let long = SpiffeId::new("cluster.local", "pg", &vec!["b".repeat(60); 4].join(".")).unwrap();
    assert!(matches!(long.tls_server_name(), ServerName::IpAddress(_)));
}
