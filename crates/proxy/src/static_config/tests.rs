//! Unit tests for the static configuration.

use super::*;

const EXAMPLE: &str = r#"
{ "services": [ { "name": "bank", "namespace": "bank", "port": 80,
      "endpoints": [ { "addr": "127.0.0.1:14143", "target_port": 8080,
                       "identity": "spiffe://cluster.local/ns/bank/sa/bank",
                       "workload": "bank", "namespace": "bank", "weight": 1, "protocol": "http" } ],
      "routes": [ { "name": "get", "methods": ["GET"], "path_prefix": "/", "timeout_ms": 2000, "retryable": true } ] } ],
  "tcp_forwards": [ { "listen": "127.0.0.1:0", "service": "db.data", "port": 5432 } ],
  "inbound": { "ports": [8080, 9090, 8080], "authorizations": [ { "name": "allow-card", "ports": [8080],
        "routes": [ { "methods": ["POST"], "path_prefix": "/v1/" } ],
        "identities": ["spiffe://cluster.local/ns/card/sa/card"], "namespaces": [], "unauthenticated": false } ] } }
"#;

#[test]
fn the_documented_example_loads() {
    let loaded = StaticConfig::from_json(EXAMPLE).unwrap().load().unwrap();
    assert_eq!(loaded.services.len(), 1);
    let s = &loaded.services[0];
    assert_eq!(&*s.name, "bank.bank");
    assert_eq!(s.endpoints[0].target_port, 8080);
    assert_eq!(s.routes[0].timeout, Some(Duration::from_secs(2)));
    assert_eq!(loaded.tcp_forwards[0].target.authority(), "db.data:5432");
    assert_eq!(&*loaded.authorizations.list[0].name, "allow-card");
    assert_eq!(loaded.authorizations.ports.as_slice(), [8080, 9090]);
}

#[test]
fn inbound_ports_default_to_none_and_reject_zero() {
    let loaded = StaticConfig::from_json("{}").unwrap().load().unwrap();
    assert!(
        loaded.authorizations.ports.as_slice().is_empty(),
        "no inbound.ports: nothing is forwarded"
    );
    let err = StaticConfig::from_json(r#"{"inbound": {"ports": [0]}}"#)
        .unwrap()
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("inbound.ports"), "{err}");
}

#[test]
fn unknown_fields_are_named() {
    let err = StaticConfig::from_json(r#"{"servicez": []}"#).unwrap_err();
    assert!(err.to_string().contains("servicez"), "{err}");
    let err = StaticConfig::from_json(
        r#"{"services": [{"name": "a", "namespace": "b", "endpoints": [{"addr": "1.2.3.4:1", "target_port": 1,
            "identity": "spiffe://cluster.local/ns/b/sa/a", "workload": "a", "namespace": "b", "wieght": 2}]}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("wieght"), "{err}");
}

#[test]
fn bad_values_name_the_field() {
    let err = StaticConfig::from_json(
        r#"{"services": [{"name": "a", "namespace": "b", "routes": [{"name": "r", "methods": ["GE T"]}]}]}"#,
    )
    .unwrap()
    .load()
    .unwrap_err();
    assert!(
        err.to_string().contains("services[0].routes[0].methods"),
        "{err}"
    );
    let err = StaticConfig::from_json(
        r#"{"services": [{"name": "a", "namespace": "b", "endpoints": [{"addr": "1.2.3.4:1", "target_port": 1,
            "identity": "spiffe://cluster.local/ns/b/sa/a", "workload": "a", "namespace": "b", "weight": 0}]}]}"#,
    )
    .unwrap()
    .load()
    .unwrap_err();
    assert!(
        err.to_string().contains("services[0].endpoints[0]"),
        "{err}"
    );
    let err = StaticConfig::from_json(
        r#"{"services": [{"name": "a", "namespace": "b", "endpoints": [{"addr": "1.2.3.4:1", "target_port": 1,
            "identity": "not-an-id", "workload": "a", "namespace": "b"}]}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn service_names_follow_the_mesh_rules() {
    assert_eq!(service_name("bank", "pg"), Some(("bank", "pg")));
    assert_eq!(service_name("bank.bank", "pg"), Some(("bank", "bank")));
    assert_eq!(
        service_name("bank.bank.svc.cluster.local", "pg"),
        Some(("bank", "bank"))
    );
    assert_eq!(service_name("example.com.evil", "pg"), None);
    assert_eq!(service_name("a.b.svc", "pg"), None);
}

#[tokio::test]
async fn discover_resolves_names_and_passes_others_through() {
    let loaded = StaticConfig::from_json(EXAMPLE).unwrap().load().unwrap();
    let d = StaticDiscover::new(&loaded, "pg");
    for host in ["bank.bank", "bank.bank.svc.cluster.local"] {
        let t = Target::Name {
            host: host.into(),
            port: 80,
        };
        assert!(
            matches!(d.resolve(&t).await.unwrap(), Resolution::Mesh(_)),
            "{host}"
        );
    }
    let other_port = Target::Name {
        host: "bank.bank".into(),
        port: 81,
    };
    assert!(matches!(
        d.resolve(&other_port).await.unwrap(),
        Resolution::External
    ));
    let same_ns = StaticDiscover::new(&loaded, "bank");
    let short = Target::Name {
        host: "bank".into(),
        port: 80,
    };
    let Resolution::Mesh(mut rx) = same_ns.resolve(&short).await.unwrap() else {
        panic!("bank should resolve in namespace bank");
    };
    same_ns.set_endpoints("bank", "bank", 80, vec![]);
    rx.changed().await.unwrap();
    assert!(rx.borrow().endpoints.is_empty());
}

#[test]
fn modes_load_and_default_to_enforce() {
    use crate::policy::Mode;
    let loaded = StaticConfig::from_json(EXAMPLE).unwrap().load().unwrap();
    assert_eq!(loaded.authorizations.list[0].mode, Mode::Enforce);
    assert_eq!(loaded.authorizations.default_mode, Mode::Enforce);
    let loaded = StaticConfig::from_json(
        r#"{"inbound": {"ports": [8080], "default_mode": "audit",
            "authorizations": [{"name": "a", "mode": "audit", "namespaces": ["x"]}]}}"#,
    )
    .unwrap()
    .load()
    .unwrap();
    assert_eq!(loaded.authorizations.list[0].mode, Mode::Audit);
    assert_eq!(loaded.authorizations.default_mode, Mode::Audit);
    let err = StaticConfig::from_json(r#"{"inbound": {"default_mode": "dry-run"}}"#).unwrap_err();
    assert!(err.to_string().contains("dry-run"), "{err}");
}
