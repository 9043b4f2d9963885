//! Unit tests of the inbound-policy caller check.

use std::path::Path;

use tonic::Code;

use super::runs_as;
use crate::config::tests::GOOD;
use crate::state::MeshState;

fn mesh() -> MeshState {
    MeshState::local(
        &crate::config::parse(Path::new("mesh.yaml"), GOOD).unwrap(),
        &[],
    )
}

#[test]
fn only_the_workloads_own_identity_may_watch_its_inbound_policy() {
    let state = mesh();
    let bank = "spiffe://cluster.local/ns/bank/sa/bank".parse().unwrap();
    let card = "spiffe://cluster.local/ns/card/sa/card".parse().unwrap();
    // Same service account, other namespace.
    let other_ns = "spiffe://cluster.local/ns/card/sa/bank".parse().unwrap();
    assert!(runs_as(&state, &bank, "bank", "bank").is_ok());
    for (caller, ns, workload) in [
        (&card, "bank", "bank"),
        (&other_ns, "bank", "bank"),
        (&bank, "card", "card"),
        (&bank, "ghost", "ghost"),
    ] {
        let status = runs_as(&state, caller, ns, workload).unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let status = runs_as(&state, &bank, "ghost", "ghost").unwrap_err();
    assert!(status.message().contains("not declared"), "{status:?}");
}
