//! Unit tests of Certify: tokens, bindings, reserved, undeclared and revoked ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::{DEFAULT_TRUST_DOMAIN, Issuer, SpiffeId, TrustAnchor, WorkloadKey};

use tokio::sync::watch;

use super::{CertifyError, IdentityService, IdentityState};
use crate::config::tests::GOOD;
use crate::persist::tests::temp_dir;
use crate::pki::CaSnapshot;
use crate::services::trust::{Registry, TrustService};
use crate::state::MeshState;
use crate::store::StaticStore;

/// The mesh of `config::tests::GOOD`: workloads bank/bank (sa bank) and card/card (sa card).
fn mesh() -> MeshState {
    MeshState::local(
        &crate::config::parse(Path::new("mesh.yaml"), GOOD).unwrap(),
        &[],
    )
}

struct Setup {
    svc: IdentityService,
    store: Arc<StaticStore>,
    issuer: Arc<Issuer>,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An identity service signing with `issuer` (600 s leaves) over `store` and `dir`.
fn service(
    issuer: Arc<Issuer>,
    bundle: onemesh_identity::TrustBundle,
    store: Arc<StaticStore>,
    dir: &Path,
) -> IdentityService {
    let snapshot = CaSnapshot::new(issuer, bundle).unwrap();
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
        store,
        Duration::from_secs(600),
        IdentityState::load(dir).unwrap(),
    )
}

fn setup(tokens: &[(&str, &SpiffeId)]) -> Setup {
    setup_with(tokens, Duration::from_secs(3600))
}

/// As [`setup`], with an issuer that lives `issuer_lifetime`.
fn setup_with(tokens: &[(&str, &SpiffeId)], issuer_lifetime: Duration) -> Setup {
    let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(3600)).unwrap();
    let issuer = Arc::new(anchor.issue_issuer(issuer_lifetime).unwrap());
    let tokens: BTreeMap<String, SpiffeId> = tokens
        .iter()
        .map(|(t, id)| ((*t).to_string(), (*id).clone()))
        .collect();
    let dir = temp_dir("identity");
    let store = Arc::new(StaticStore::new(mesh(), tokens));
    let svc = service(issuer.clone(), anchor.bundle(), store.clone(), &dir);
    Setup {
        svc,
        store,
        issuer,
        dir,
    }
}

/// A service over the same state directory and issuer (a restarted control plane).
fn restart(s: &Setup, tokens: &[(&str, &SpiffeId)]) -> IdentityService {
    let tokens: BTreeMap<String, SpiffeId> = tokens
        .iter()
        .map(|(t, id)| ((*t).to_string(), (*id).clone()))
        .collect();
    let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(3600)).unwrap();
    service(
        s.issuer.clone(),
        anchor.bundle(),
        Arc::new(StaticStore::new(mesh(), tokens)),
        &s.dir,
    )
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_control_planes_own_id_is_never_issued() {
    let control = id("spiffe://cluster.local/ns/onemesh/sa/control");
    let s = setup(&[("t-control", &control)]);
    let svc = &s.svc;
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
async fn a_token_signs_its_id_and_binds_to_the_first_key() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let s = setup(&[("t-bank", &bank)]);
    let svc = &s.svc;
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

#[tokio::test]
async fn an_undeclared_id_is_refused_by_leaf_and_by_token() {
    let ghost = id("spiffe://cluster.local/ns/ghost/sa/ghost");
    let s = setup(&[("t-ghost", &ghost)]);
    let csr = WorkloadKey::generate().unwrap().csr_der(&ghost).unwrap();
    for (token, peer) in [("", Some(&ghost)), ("t-ghost", None)] {
        let refused = s.svc.certify(&csr, token, peer).await;
        assert!(
            matches!(&refused, Err(CertifyError::Undeclared(found)) if *found == ghost),
            "{refused:?}"
        );
        let status = tonic::Status::from(refused.unwrap_err());
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("not declared in the mesh"),
            "{status:?}"
        );
    }
    // Nothing was bound for the refused token.
    assert!(s.svc.bindings.is_empty());
}

#[tokio::test]
async fn a_workload_removed_from_the_mesh_renews_no_more() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let s = setup(&[]);
    let csr = WorkloadKey::generate().unwrap().csr_der(&bank).unwrap();
    s.svc.certify(&csr, "", Some(&bank)).await.unwrap();

    let mut without_bank = mesh();
    without_bank
        .mesh
        .workloads
        .retain(|(ns, _), _| ns != "bank");
    s.store.set(without_bank);
    let refused = s.svc.certify(&csr, "", Some(&bank)).await;
    assert!(
        matches!(refused, Err(CertifyError::Undeclared(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_revoked_id_is_refused_by_leaf_and_by_token_even_after_a_restart() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let card = id("spiffe://cluster.local/ns/card/sa/card");
    let tokens = [("t-bank", &bank)];
    let s = setup(&tokens);
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&bank).unwrap();
    s.svc.certify(&csr, "t-bank", None).await.unwrap();

    assert!(s.svc.revocations().revoke(&bank).unwrap());
    for (token, peer) in [("", Some(&bank)), ("t-bank", None)] {
        let refused = s.svc.certify(&csr, token, peer).await;
        assert!(
            matches!(&refused, Err(CertifyError::Revoked(found)) if *found == bank),
            "{refused:?}"
        );
        let status = tonic::Status::from(refused.unwrap_err());
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("revoked"), "{status:?}");
    }
    // Another id is not affected.
    let card_csr = WorkloadKey::generate().unwrap().csr_der(&card).unwrap();
    s.svc.certify(&card_csr, "", Some(&card)).await.unwrap();

    let restarted = restart(&s, &tokens);
    let refused = restarted.certify(&csr, "t-bank", None).await;
    assert!(
        matches!(refused, Err(CertifyError::Revoked(_))),
        "{refused:?}"
    );
    assert_eq!(restarted.revocations().list(), vec![bank]);
}

#[tokio::test]
async fn token_bindings_survive_a_restart() {
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let tokens = [("t-bank", &bank)];
    let s = setup(&tokens);
    let key = WorkloadKey::generate().unwrap();
    s.svc
        .certify(&key.csr_der(&bank).unwrap(), "t-bank", None)
        .await
        .unwrap();

    let restarted = restart(&s, &tokens);
    let thief = WorkloadKey::generate().unwrap();
    let stolen = restarted
        .certify(&thief.csr_der(&bank).unwrap(), "t-bank", None)
        .await;
    assert!(matches!(stolen, Err(CertifyError::OtherKey)), "{stolen:?}");
    let renewed = restarted
        .certify(&key.csr_der(&bank).unwrap(), "t-bank", None)
        .await
        .unwrap();
    assert_eq!(renewed.identity, bank.to_string());
}

#[tokio::test]
async fn the_operators_id_is_never_issued() {
    let operator = id("spiffe://cluster.local/ns/onemesh/sa/operator");
    let s = setup(&[("t-operator", &operator)]);
    let svc = &s.svc;
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
    let s = setup_with(&[("t-bank", &bank)], Duration::from_secs(100));
    let svc = &s.svc;
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
