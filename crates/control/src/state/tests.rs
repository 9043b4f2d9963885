//! Unit tests of the views: name resolution, endpoints (with real ports), inbound and outbound.

use std::path::Path;

use super::*;
use crate::config::parse;

fn state() -> MeshState {
    let config = parse(Path::new("mesh.yaml"), crate::config::tests::GOOD).unwrap();
    MeshState::local(
        &config,
        &[Instance {
            namespace: "bank".into(),
            workload: "bank".into(),
            inbound: "127.0.0.1:14143".parse().unwrap(),
            ports: BTreeMap::from([(8080, 41234)]),
        }],
    )
}

fn svc(ns: &str, name: &str, port: u16) -> ServiceRef {
    ServiceRef {
        namespace: ns.into(),
        service: name.into(),
        port,
    }
}

#[test]
fn names_resolve_in_every_form() {
    let want = Some(svc("bank", "bank", 80));
    assert_eq!(
        resolve_name("bank.bank.svc.cluster.local", "x"),
        Ok(want.clone())
    );
    assert_eq!(resolve_name("bank.bank", ""), Ok(want.clone()));
    assert_eq!(resolve_name("bank", "bank"), Ok(want));
    assert_eq!(
        resolve_name("bank.bank.svc.cluster.local:9000", ""),
        Ok(Some(svc("bank", "bank", 9000)))
    );
    assert_eq!(resolve_name("www.example.com", "bank"), Ok(None));
    assert_eq!(resolve_name("", "bank"), Err(NameError::Empty));
    assert_eq!(
        resolve_name("bank", ""),
        Err(NameError::NoCallerNamespace("bank".into()))
    );
    assert!(matches!(
        resolve_name("bank.bank:http", ""),
        Err(NameError::BadPort(_))
    ));
}

#[test]
fn endpoints_carry_identity_real_port_and_protocol() {
    let s = state();
    let snap = endpoints(&s, "cluster.local", &svc("bank", "bank", 80));
    assert!(snap.exists);
    assert_eq!(snap.endpoints.len(), 1);
    let ep = &snap.endpoints[0];
    assert_eq!(ep.addr, "127.0.0.1:14143");
    assert_eq!(ep.target_port, 41234);
    assert_eq!(ep.identity, "spiffe://cluster.local/ns/bank/sa/bank");
    assert_eq!(ep.protocol, ProtocolHint::Http as i32);
    assert_eq!(
        (ep.workload.as_str(), ep.namespace.as_str()),
        ("bank", "bank")
    );

    // Port 9000 is opaque and not remapped; port 81 targets the port named `http`.
    let opaque = endpoints(&s, "cluster.local", &svc("bank", "bank", 9000));
    assert_eq!(opaque.endpoints[0].target_port, 9000);
    assert_eq!(opaque.endpoints[0].protocol, ProtocolHint::Opaque as i32);
    let named = endpoints(&s, "cluster.local", &svc("bank", "bank", 81));
    assert_eq!(named.endpoints[0].target_port, 41234);

    // A port the service lacks: exists, no endpoints. An unknown service: does not exist.
    let none = endpoints(&s, "cluster.local", &svc("bank", "bank", 82));
    assert!(none.exists && none.endpoints.is_empty());
    assert!(!endpoints(&s, "cluster.local", &svc("bank", "vault", 80)).exists);
}

#[test]
fn a_workload_without_instances_has_no_endpoints() {
    let config = parse(Path::new("mesh.yaml"), crate::config::tests::GOOD).unwrap();
    let s = MeshState::local(&config, &[]);
    assert!(
        endpoints(&s, "cluster.local", &svc("bank", "bank", 80))
            .endpoints
            .is_empty()
    );
}

#[test]
fn inbound_maps_policy_ports_to_real_ports() {
    let s = state();
    let policy = inbound(&s, "bank", "bank", 0);
    assert!(policy.exists);
    assert_eq!(policy.authorizations.len(), 1);
    let a = &policy.authorizations[0];
    assert_eq!(a.name, "allow-card");
    assert_eq!(a.ports, vec![41234]);
    assert_eq!(a.identities, vec!["spiffe://cluster.local/ns/card/sa/card"]);
    assert_eq!(a.namespaces, vec!["card"]);
    assert_eq!(a.routes[0].methods, vec!["POST"]);
    assert_eq!(a.routes[0].path_prefix, "/v1/");
    assert!(inbound(&s, "bank", "bank", 9000).authorizations.is_empty());
    assert_eq!(inbound(&s, "bank", "bank", 41234).authorizations.len(), 1);
    assert!(inbound(&s, "card", "card", 0).authorizations.is_empty());
    assert!(!inbound(&s, "card", "nobody", 0).exists);
}

#[test]
fn outbound_lists_the_service_routes() {
    let s = state();
    let out = outbound(&s, &svc("bank", "bank", 80));
    assert!(out.exists);
    assert_eq!(out.routes.len(), 1);
    assert_eq!(out.routes[0].name, "bank-reads");
    assert_eq!(out.routes[0].timeout_ms, 2000);
    assert!(out.routes[0].retryable);
    assert_eq!(out.routes[0].methods, vec!["GET"]);
    assert!(!outbound(&s, &svc("card", "card", 80)).exists);
}
