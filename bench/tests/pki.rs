//! Whole-behaviour test of `bench-pki`: the files it writes load back with `onemesh-identity`
//! as a trust bundle and an issuer of the asked trust domain that can sign a workload's CSR.

use std::process::Command;
use std::time::Duration;

use onemesh_identity::{Issuer, SpiffeId, TrustBundle, WorkloadKey};

#[test]
fn writes_a_bundle_and_an_issuer_that_signs_workload_csrs() {
    let dir = std::env::temp_dir().join(format!(
        "bench-pki-test-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let status = Command::new(env!("CARGO_BIN_EXE_bench-pki"))
        .args([
            "--out",
            dir.to_str().unwrap(),
            "--trust-domain",
            "bench.test",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let anchors = std::fs::read_to_string(dir.join("anchors.pem")).unwrap();
    let bundle = TrustBundle::from_pem(&anchors).unwrap();
    assert_eq!(bundle.roots().len(), 1);

    let issuer = Issuer::from_pem(
        &std::fs::read_to_string(dir.join("issuer.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("issuer.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(issuer.trust_domain(), "bench.test");

    let id = SpiffeId::new("bench.test", "bench", "client").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(60), |_| {
            true
        })
        .unwrap();
    assert_eq!(issued.id, id);
    assert!(issued.chain.len() >= 2, "leaf then issuer");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A per-test-run suffix so parallel runs never share a directory.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
