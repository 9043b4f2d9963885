//! Unit tests of the revoked-id set.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::persist::tests::temp_dir;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[test]
fn a_revocation_is_reported_once_and_survives_a_reload() {
    let dir = temp_dir("revoked");
    let ghost = id("spiffe://cluster.local/ns/ghost/sa/ghost");
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let r = Revocations::load(&dir).unwrap();
    assert!(!r.is_revoked(&ghost));
    assert!(r.list().is_empty());
    assert!(!dir.join(REVOCATIONS_FILE).exists(), "nothing written yet");

    assert!(r.revoke(&ghost).unwrap(), "newly revoked");
    assert!(!r.revoke(&ghost).unwrap(), "already revoked");
    assert!(r.is_revoked(&ghost));
    assert!(!r.is_revoked(&bank));

    let path = dir.join(REVOCATIONS_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = Revocations::load(&dir).unwrap();
    assert!(again.is_revoked(&ghost));
    assert_eq!(again.list(), vec![ghost]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_write_revokes_nothing() {
    let dir = temp_dir("revoked");
    let r = Revocations::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let ghost = id("spiffe://cluster.local/ns/ghost/sa/ghost");
    assert!(r.revoke(&ghost).is_err());
    assert!(!r.is_revoked(&ghost), "not on disk, so not in force either");
}

#[test]
fn a_corrupt_file_refuses_to_load() {
    let dir = temp_dir("revoked");
    std::fs::write(
        dir.join(REVOCATIONS_FILE),
        r#"{"revoked": {"not an id": 1}}"#,
    )
    .unwrap();
    assert!(Revocations::load(&dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
