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
            admin: None,
            control_admin: None,
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

/// The local state with the bank service given a ClusterIP and its instance moved to a pod IP,
/// as the Kubernetes store fills them.
fn cluster_state() -> MeshState {
    let mut s = state();
    let key = ("bank".to_string(), "bank".to_string());
    let pod: SocketAddr = "10.244.0.7:4143".parse().unwrap();
    let service = s.mesh.services.get_mut(&key).unwrap();
    service.cluster_ips = vec!["10.96.0.20".parse().unwrap()];
    for e in service
        .ports
        .iter_mut()
        .flat_map(|p| p.endpoints.iter_mut())
    {
        e.addr = pod;
    }
    s.mesh.workloads.get_mut(&key).unwrap().instances[0].inbound = pod;
    s
}

#[test]
fn addresses_parse_as_addresses_and_never_as_names() {
    let addr = |a: &str| Ok(Some(Dest::Addr(a.parse().unwrap())));
    assert_eq!(resolve_dest("10.96.0.20:80", "bank"), addr("10.96.0.20:80"));
    assert_eq!(resolve_dest("[fd00::1]:5432", ""), addr("[fd00::1]:5432"));
    assert!(matches!(
        resolve_dest("10.96.0.20:0", ""),
        Err(NameError::BadPort(_))
    ));
    assert_eq!(
        resolve_dest("bank.bank:9000", ""),
        Ok(Some(Dest::Name(svc("bank", "bank", 9000))))
    );
    // A bare IP (no port) is not an address form the proxy sends: not a service name either.
    assert_eq!(resolve_dest("10.96.0.20", "bank"), Ok(None));
}

#[test]
fn a_cluster_ip_resolves_to_its_service_and_follows_the_state() {
    let s = cluster_state();
    let dest = resolve_dest("10.96.0.20:9000", "order").unwrap().unwrap();
    assert_eq!(dest.service(&s), Some(svc("bank", "bank", 9000)));
    let snap = destination(&s, "cluster.local", &dest);
    assert!(snap.exists);
    assert_eq!((snap.service.as_str(), snap.port), ("bank", 9000));
    assert_eq!(snap.endpoints[0].addr, "10.244.0.7:4143");
    assert_eq!(snap.endpoints[0].protocol, ProtocolHint::Opaque as i32);
    // Without the ClusterIP (the Service deleted or never known) the address is not a service.
    assert_eq!(dest.service(&state()), None);
}

#[test]
fn a_pod_ip_resolves_to_that_one_instance_with_its_identity() {
    let s = cluster_state();
    let dest = Dest::Addr("10.244.0.7:8080".parse().unwrap());
    let snap = destination(&s, "cluster.local", &dest);
    assert!(snap.exists);
    assert_eq!(snap.namespace, "bank");
    assert_eq!(snap.endpoints.len(), 1);
    let ep = &snap.endpoints[0];
    assert_eq!(ep.addr, "10.244.0.7:4143");
    assert_eq!(ep.target_port, 8080);
    assert_eq!(ep.identity, "spiffe://cluster.local/ns/bank/sa/bank");
    assert_eq!(ep.protocol, ProtocolHint::Http as i32);
    // An address of nothing in the mesh, and loopback (every local instance lives there): not
    // in the mesh, so the proxy passes it through.
    for other in ["10.244.0.99:8080", "127.0.0.1:14143", "0.0.0.0:8080"] {
        let dest = Dest::Addr(other.parse().unwrap());
        assert!(!destination(&s, "cluster.local", &dest).exists, "{other}");
    }
}

/// GOOD with a fault on bank's route, a canary service `bank-v2` over card's workload as a
/// backend, and a rate limit on bank's port 8080.
fn traffic_state() -> MeshState {
    let text = crate::config::tests::GOOD
        .replace(
            "  retryable: true\n",
            "  retryable: true\n  backends: [{service: bank}, {service: bank-v2}]\n  fault:\n    abort: {grpcStatus: 14, percent: 30}\n    delay: {duration: 3s, percent: 50}\n    header: {name: x-fault}\n",
        )
        + "---\napiVersion: onemesh.dev/v1\nkind: Service\nmetadata: {name: bank-v2, namespace: bank}\nspec:\n  selector: {app: bank-v2}\n  ports: [{port: 80, targetPort: 7000}]\n---\napiVersion: onemesh.dev/v1\nkind: Workload\nmetadata: {name: bank-v2, namespace: bank}\nspec:\n  serviceAccount: bank\n  labels: {app: bank-v2}\n  ports: [{port: 7000}]\n---\napiVersion: onemesh.dev/v1\nkind: RateLimitPolicy\nmetadata: {name: bank-limit, namespace: bank}\nspec:\n  target: {workload: bank, port: 8080}\n  identity: {requestsPerSecond: 10, burst: 20}\n";
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    let instance = |workload: &str, ports: &[(u16, u16)]| Instance {
        namespace: "bank".into(),
        workload: workload.into(),
        inbound: "127.0.0.1:14143".parse().unwrap(),
        admin: None,
        control_admin: None,
        ports: ports.iter().copied().collect(),
    };
    MeshState::local(
        &config,
        &[
            instance("bank", &[(8080, 41234), (9000, 41235)]),
            instance("bank-v2", &[(7000, 47000)]),
        ],
    )
}

#[test]
fn inbound_carries_the_faults_of_routes_over_the_workload_on_their_ports() {
    let s = traffic_state();
    let bank = inbound(&s, "bank", "bank", 0);
    assert_eq!(bank.faults.len(), 1);
    let f = &bank.faults[0];
    assert_eq!(f.route, "bank-reads");
    // bank's service reaches the workload on 8080, 9000 and 8080 (by name): real ports.
    assert_eq!(f.ports, vec![41234, 41235]);
    assert_eq!(
        (f.methods.clone(), f.path_prefix.as_str()),
        (vec!["GET".to_string()], "/")
    );
    assert_eq!((f.abort_http_status, f.abort_grpc_status), (0, 14));
    assert_eq!(
        (f.abort_percent, f.delay_ms, f.delay_percent),
        (30.0, 3000, 50.0)
    );
    assert_eq!(
        (f.header_name.as_str(), f.header_value.as_str()),
        ("x-fault", "")
    );
    // a backend's workload gets the fault on the port its service reaches
    let v2 = inbound(&s, "bank", "bank-v2", 0);
    assert_eq!(v2.faults.len(), 1);
    assert_eq!(v2.faults[0].ports, vec![47000]);
    // a workload behind no faulty route gets none
    assert!(inbound(&s, "card", "card", 0).faults.is_empty());
    assert!(
        inbound(&state(), "bank", "bank", 0).faults.is_empty(),
        "none declared"
    );
}

#[test]
fn inbound_carries_the_workloads_rate_limits_on_real_ports() {
    let s = traffic_state();
    let bank = inbound(&s, "bank", "bank", 0);
    assert_eq!(bank.rate_limits.len(), 1);
    let l = &bank.rate_limits[0];
    assert_eq!(l.name, "bank-limit");
    assert_eq!(l.ports, vec![41234]);
    assert_eq!(l.total, None);
    let identity = l.identity.as_ref().expect("a per-identity rate");
    assert_eq!((identity.requests_per_second, identity.burst), (10, 20));
    assert!(inbound(&s, "bank", "bank-v2", 0).rate_limits.is_empty());
}

#[test]
fn inbound_carries_the_policy_mode_and_the_namespace_default_mode() {
    use crate::config::PolicyMode;
    use onemesh_api::policy::Mode;
    let mut s = state();
    let policy = inbound(&s, "bank", "bank", 0);
    assert_eq!(policy.authorizations[0].mode(), Mode::Enforce);
    assert_eq!(policy.default_mode(), Mode::Enforce);
    s.mesh.policies[0].mode = PolicyMode::Audit;
    s.mesh.namespaces.get_mut("bank").unwrap().default_mode = PolicyMode::Audit;
    let policy = inbound(&s, "bank", "bank", 0);
    assert_eq!(policy.authorizations[0].mode(), Mode::Audit);
    assert_eq!(policy.default_mode(), Mode::Audit);
    assert_eq!(inbound(&s, "card", "card", 0).default_mode(), Mode::Enforce);
}
