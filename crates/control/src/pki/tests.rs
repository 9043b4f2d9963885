use std::os::unix::fs::PermissionsExt;

use super::*;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onemesh-pki-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_new_ca_keeps_its_keys_private_and_loads_again() {
    let dir = temp_dir();
    let made = load_or_create(&dir, "cluster.local").unwrap();
    for key in [ISSUER_KEY_FILE, TRUST_ANCHOR_KEY_FILE] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let loaded = load_or_create(&dir, "cluster.local").unwrap();
    assert_eq!(loaded.issuer.chain_pem(), made.issuer.chain_pem());
    assert_eq!(loaded.bundle.to_pem(), made.bundle.to_pem());

    // A key file left readable by others is tightened when it is written again.
    let key = dir.join(ISSUER_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&key, &made.issuer.key_pem(), true).unwrap();
    assert_eq!(mode(&key), 0o600);

    std::fs::remove_file(dir.join(ISSUER_CERT_FILE)).unwrap();
    assert!(matches!(
        load_or_create(&dir, "cluster.local"),
        Err(PkiError::Incomplete {
            missing: ISSUER_CERT_FILE,
            ..
        })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}
