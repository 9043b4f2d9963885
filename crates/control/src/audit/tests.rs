use std::collections::BTreeMap;
use std::net::SocketAddr;

use onemesh_api::audit::Record as WireRecord;

use super::*;
use crate::model::{Instance, Origin, Workload};

fn workload() -> Workload {
    let instance = |real: u16| Instance {
        inbound: SocketAddr::from(([127, 0, 0, 1], 41000)),
        admin: None,
        control_admin: None,
        ports: BTreeMap::from([(8080, real), (9090, real + 1)]),
    };
    Workload {
        namespace: "card".into(),
        name: "card".into(),
        service_account: "card".into(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        instances: vec![instance(42000), instance(43000)],
        origin: Origin::default(),
    }
}

fn wire() -> WireRecord {
    WireRecord {
        time_unix_ms: 1000,
        caller: "spiffe://cluster.local/ns/pg/sa/pg".into(),
        port: 43000,
        kind: "http".into(),
        method: "POST".into(),
        path: "/v1/pay".into(),
        decision: WireDecision::WouldDeny as i32,
        policy: "card-allow-appcard".into(),
        mode: onemesh_api::audit::Mode::Audit as i32,
        count: 1,
        until_unix_ms: 0,
    }
}

#[test]
fn a_real_port_of_any_instance_is_recorded_as_declared() {
    let w = workload();
    assert_eq!(declared_port(&w, 42000), 8080);
    assert_eq!(declared_port(&w, 43001), 9090);
    // Kubernetes (no mapping) or an unknown port: as seen.
    assert_eq!(declared_port(&w, 8080), 8080);
    let r = record(&w, wire(), 0).unwrap();
    assert_eq!(
        (r.port, r.decision, r.mode),
        (8080, Decision::WouldDeny, Mode::Audit)
    );
    assert_eq!(
        (r.namespace.as_str(), r.workload.as_str()),
        ("card", "card")
    );
    assert_eq!(r.until_ms, 1000);
}

#[test]
fn malformed_records_are_refused_with_their_index() {
    let w = workload();
    type Edit = Box<dyn Fn(&mut WireRecord)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("no decision", Box::new(|r| r.decision = 0)),
        ("kind", Box::new(|r| r.kind = "udp".into())),
        ("port", Box::new(|r| r.port = 70_000)),
        ("count", Box::new(|r| r.count = 0)),
        ("spiffe id", Box::new(|r| r.caller = "bob".into())),
        ("4096", Box::new(|r| r.path = "/".repeat(5000))),
    ];
    for (want, edit) in cases {
        let mut r = wire();
        edit(&mut r);
        let status = record(&w, r, 7).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("record 7: ") && status.message().contains(want),
            "{want}: {}",
            status.message()
        );
    }
    // Unauthenticated callers are recorded with an empty caller.
    let mut r = wire();
    r.caller.clear();
    assert!(record(&w, r, 0).is_ok());
    // The proxy's aggregate of callers beyond its key cap is `*` (crates/proxy/src/audit.rs).
    let mut r = wire();
    r.caller = "*".into();
    assert!(record(&w, r, 0).is_ok());
}
