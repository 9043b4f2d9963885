use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::{DEFAULT_TRUST_DOMAIN, SpiffeId, TrustAnchor, WorkloadKey};

use tokio::sync::watch;

use super::{CertifyError, IdentityService};
use crate::pki::CaSnapshot;
use crate::services::trust::{Registry, TrustService};
use crate::state::MeshState;
use crate::store::StaticStore;

fn service(tokens: &[(&str, &SpiffeId)]) -> IdentityService {
    service_with(tokens, Duration::from_secs(3600))
}

/// A service whose issuer lives `issuer_lifetime`, signing 600 s leaves.
fn service_with(tokens: &[(&str, &SpiffeId)], issuer_lifetime: Duration) -> IdentityService {
    let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(issuer_lifetime).unwrap();
    let tokens: BTreeMap<String, SpiffeId> = tokens
        .iter()
        .map(|(t, id)| ((*t).to_string(), (*id).clone()))
        .collect();
    let snapshot = CaSnapshot::new(Arc::new(issuer), anchor.bundle()).unwrap();
    let (_, ca) = watch::channel(Arc::new(snapshot));
    let trust = TrustService::new(
        Registry::new(),
        ca.clone(),
        Duration::from_secs(5),
        watch::channel(false).1,
    );
    IdentityService::new(
        ca,
        trust,
        Arc::new(StaticStore::new(MeshState::default(), tokens)),
        Duration::from_secs(600),
    )
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_control_planes_own_id_is_never_issued() {
    let control = id("spiffe://cluster.local/ns/onemesh/sa/control");
    let svc = service(&[("t-control", &control)]);
    let csr = WorkloadKey::generate().unwrap().csr_der(&control).unwrap();

    // Not with a token that names it (a workload declared as onemesh/control)...
    let by_token = svc.certify(&csr, "t-control", None).await;
    assert!(
        matches!(&by_token, Err(CertifyError::Reserved(found)) if *found == control),
        "{by_token:?}"
    );
    assert_eq!(
        tonic::Status::from(by_token.unwrap_err()).code(),
        tonic::Code::PermissionDenied
    );
    // ...nor as a renewal over a connection presenting that id.
    let by_peer = svc.certify(&csr, "", Some(&control)).await;
    assert!(
        matches!(&by_peer, Err(CertifyError::Reserved(_))),
        "{by_peer:?}"
    );
}

#[tokio::test]
async fn the_operators_id_is_never_issued() {
    let operator = id("spiffe://cluster.local/ns/onemesh/sa/operator");
    let svc = service(&[("t-operator", &operator)]);
    let csr = WorkloadKey::generate().unwrap().csr_der(&operator).unwrap();
    let by_token = svc.certify(&csr, "t-operator", None).await;
    assert!(
        matches!(&by_token, Err(CertifyError::Reserved(found)) if *found == operator),
        "{by_token:?}"
    );
    let by_peer = svc.certify(&csr, "", Some(&operator)).await;
    assert!(
        matches!(&by_peer, Err(CertifyError::Reserved(_))),
        "{by_peer:?}"
    );
}

#[tokio::test]
async fn a_leaf_never_outlives_its_issuer() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    // The issuer has 100 s left; leaves are asked for 600 s.
    let svc = service_with(&[("t-bank", &bank)], Duration::from_secs(100));
    let key = WorkloadKey::generate().unwrap();
    let issued = svc
        .certify(&key.csr_der(&bank).unwrap(), "t-bank", None)
        .await
        .unwrap();
    let issuer = crate::pki::cert::CertSummary::parse(&issued.chain[1]).unwrap();
    let issuer_not_after = crate::pki::cert::unix_secs(issuer.not_after);
    assert!(
        issued.not_after_unix_secs <= issuer_not_after,
        "leaf until {}, issuer until {issuer_not_after}",
        issued.not_after_unix_secs
    );
    assert!(issued.not_after_unix_secs >= issuer_not_after - 2);
}

#[tokio::test]
async fn a_token_signs_its_id_and_binds_to_the_first_key() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let svc = service(&[("t-bank", &bank)]);
    let key = WorkloadKey::generate().unwrap();
    let issued = svc
        .certify(&key.csr_der(&bank).unwrap(), "t-bank", None)
        .await
        .unwrap();
    assert_eq!(issued.identity, bank.to_string());

    let other = WorkloadKey::generate().unwrap();
    let stolen = svc
        .certify(&other.csr_der(&bank).unwrap(), "t-bank", None)
        .await;
    assert!(matches!(stolen, Err(CertifyError::OtherKey)), "{stolen:?}");
    let unknown = svc
        .certify(&key.csr_der(&bank).unwrap(), "t-nobody", None)
        .await;
    assert!(
        matches!(unknown, Err(CertifyError::UnknownToken)),
        "{unknown:?}"
    );
}
