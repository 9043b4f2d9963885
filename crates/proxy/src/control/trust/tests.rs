use std::time::Duration;

use onemesh_identity::{SpiffeId, TrustAnchor, WorkloadKey};

use super::*;

fn store_under(anchor: &TrustAnchor) -> (CredentialStore, onemesh_identity::Issuer) {
    let issuer = anchor.issue_issuer(Duration::from_secs(3600)).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/pg/sa/pg".parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(600), |a| {
            a == &id
        })
        .unwrap();
    let store = CredentialStore::new(id, key, issued, anchor.bundle()).unwrap();
    (store, issuer)
}

fn update(anchors: &[&TrustAnchor], issuer: &[u8]) -> TrustUpdate {
    TrustUpdate {
        fingerprint: vec![7; 32],
        trust_anchors: anchors.iter().map(|a| a.cert_der().to_vec()).collect(),
        issuer: issuer.to_vec(),
        renew_within_ms: 1000,
    }
}

#[test]
fn an_update_replaces_the_bundle_and_a_broken_one_changes_nothing() {
    let old = TrustAnchor::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let new = TrustAnchor::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let (store, _) = store_under(&old);

    // An empty bundle, or bytes that are no certificate: refused, the old bundle stays.
    assert!(apply(&update(&[], b""), &store, None).is_err());
    let mut garbage = update(&[&new], b"");
    garbage.trust_anchors.push(b"not a certificate".to_vec());
    assert!(apply(&garbage, &store, None).is_err());
    assert_eq!(store.bundle(), old.bundle());

    // Old and new side by side, then the new alone.
    let both = apply(&update(&[&old, &new], b""), &store, None).unwrap();
    assert_eq!(both.roots().len(), 2);
    assert_eq!(store.bundle(), both);
    apply(&update(&[&new], b""), &store, None).unwrap();
    assert_eq!(store.bundle(), new.bundle());
}

#[test]
fn only_a_leaf_from_another_issuer_asks_for_a_renewal() {
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let (store, _) = store_under(&anchor);
    let own_issuer = store.current().chain[1].to_vec();
    assert!(signed_by(&store, &own_issuer));
    assert!(
        signed_by(&store, b""),
        "an update naming no issuer asks for nothing"
    );
    // A second issuer under the same anchor (an issuer rotation): its certificate is the second
    // link of the chains it signs.
    let (rotated, _) = store_under(&anchor);
    let other_issuer = rotated.current().chain[1].to_vec();
    assert_ne!(other_issuer, own_issuer);
    assert!(!signed_by(&store, &other_issuer));
}
