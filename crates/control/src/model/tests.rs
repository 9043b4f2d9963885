//! Unit tests of the model: built from mesh.yaml with its endpoints, origins rendered, value
//! checks, unresolved references.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::tests::GOOD;

fn local() -> Mesh {
    let config = crate::config::parse(Path::new("mesh.yaml"), GOOD).unwrap();
    let instances = [LocalInstance {
        namespace: "bank".into(),
        workload: "bank".into(),
        inbound: "127.0.0.1:14143".parse().unwrap(),
        admin: None,
        control_admin: None,
        ports: BTreeMap::from([(8080, 41234)]),
    }];
    Mesh::from_config(&config, &instances)
}

#[test]
fn local_endpoints_are_the_selected_instances_at_their_real_port() {
    let mesh = local();
    let bank = &mesh.services[&("bank".to_string(), "bank".to_string())];
    let endpoints = &bank.ports[0].endpoints;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr.to_string(), "127.0.0.1:14143");
    assert_eq!(endpoints[0].target_port, 41234);
    assert_eq!(endpoints[0].service_account, "bank");
    assert!(matches!(bank.origin, Origin::File { line } if line > 1));
    assert!(mesh.runs_as("bank", "bank"));
    assert!(!mesh.runs_as("bank", "card"));
}

#[test]
fn errors_render_where_the_user_wrote_the_object() {
    let file = ModelError {
        origin: Origin::File { line: 42 },
        field: "spec.timeout".into(),
        problem: Problem::BadDuration("2 seconds".into()),
    };
    assert!(
        file.to_string()
            .starts_with("mesh.yaml:42: spec.timeout: \"2 seconds\""),
        "{file}"
    );
    let object = ModelError {
        origin: Origin::Object {
            kind: "Route",
            namespace: "bank".into(),
            name: "reads".into(),
            uid: "u".into(),
            generation: Some(3),
        },
        field: String::new(),
        problem: Problem::UnknownService("bank/vault".into()),
    };
    assert!(
        object
            .to_string()
            .starts_with("Route bank/reads: unknown service"),
        "{object}"
    );
    assert_eq!(object.reason(), "UnknownReference");
}

#[test]
fn checks_refuse_what_mesh_yaml_refuses() {
    assert!(check::port(0).is_err());
    assert!(check::port(70000).is_err());
    assert_eq!(check::port(8080).unwrap(), 8080);
    assert!(check::method("FETCH").is_err());
    assert!(check::method("get").is_err());
    assert!(check::path_prefix("v1").is_err());
    assert!(check::spiffe_id("spiffe://cluster.local/card").is_err());
    assert!(check::duration("2 seconds").is_err());
    assert_eq!(check::duration("1m30s").unwrap(), Duration::from_secs(90));
    assert!(check::name("Bank").is_err());
    assert!(check::name(&"a".repeat(64)).is_err());
}

#[test]
fn a_route_to_a_missing_service_is_reported() {
    let mut mesh = local();
    assert!(mesh.check_references().is_empty());
    let mut route = mesh.routes[0].clone();
    route.service = "vault".into();
    mesh.routes.push(route);
    let errors = mesh.check_references();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "spec.service");
}
