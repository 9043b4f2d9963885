use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use onemesh_identity::{SpiffeId, TrustAnchor, WorkloadKey};

use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-state-dir-{name}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_chain_and_bundle_survive_a_reopen_with_private_modes() {
    let dir = temp_dir("roundtrip");
    let state = StateDir::open(&dir.join("proxy")).unwrap();
    assert_eq!(mode(state.path()), 0o700);
    assert!(state.load_key().unwrap().is_none());
    assert!(state.load_chain().is_none());
    assert!(state.load_bundle().is_none());

    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(3600)).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/bank/sa/bank".parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(600), |a| {
            a == &id
        })
        .unwrap();
    state.save_key(&key).unwrap();
    state.save_chain(&issued);
    state.save_bundle(&anchor.bundle());
    state.save_blob("inbound.pb", b"\x08\x01");

    let again = StateDir::open(state.path()).unwrap();
    assert_eq!(again.load_key().unwrap().unwrap().to_pem(), key.to_pem());
    assert_eq!(again.load_chain().unwrap().chain, issued.chain);
    assert_eq!(again.load_bundle().unwrap(), anchor.bundle());
    assert_eq!(again.load_blob("inbound.pb").unwrap(), b"\x08\x01");
    for file in [KEY_FILE, CHAIN_FILE, BUNDLE_FILE, "inbound.pb"] {
        assert_eq!(mode(&state.path().join(file)), 0o600, "{file}");
    }
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_key_is_an_error_but_a_damaged_chain_or_bundle_is_ignored() {
    let dir = temp_dir("damaged");
    let state = StateDir::open(&dir).unwrap();
    std::fs::write(
        dir.join(KEY_FILE),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n",
    )
    .unwrap();
    std::fs::write(dir.join(CHAIN_FILE), "garbage").unwrap();
    std::fs::write(dir.join(BUNDLE_FILE), "garbage").unwrap();
    let err = state.load_key().unwrap_err();
    assert!(matches!(err, StateDirError::BadKey { .. }), "{err}");
    assert!(err.to_string().contains("remove it"), "{err}");
    assert!(state.load_chain().is_none());
    assert!(state.load_bundle().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_existing_directory_is_restricted_to_its_owner() {
    let dir = temp_dir("restrict");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    StateDir::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    let _ = std::fs::remove_dir_all(&dir);
}
