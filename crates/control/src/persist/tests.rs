//! Unit tests of the atomic state-file writes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_file_reads_as_empty_and_a_written_one_reads_back() {
    let dir = temp_dir("persist");
    let path = dir.join("x.json");
    let empty: BTreeMap<String, u32> = load(&path).unwrap();
    assert!(empty.is_empty());

    let value: BTreeMap<String, u32> = [("a".to_string(), 1)].into();
    store(&path, &value).unwrap();
    assert_eq!(load::<BTreeMap<String, u32>>(&path).unwrap(), value);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "state files are private");
    // Nothing is left beside it.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_leftover_temp_file_or_a_readable_target_ends_up_private() {
    let dir = temp_dir("persist");
    let path = dir.join("x.json");
    std::fs::write(dir.join(".x.json.tmp"), "half a fi").unwrap();
    std::fs::set_permissions(
        dir.join(".x.json.tmp"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    store(&path, &vec![1, 2, 3]).unwrap();
    assert_eq!(load::<Vec<u32>>(&path).unwrap(), vec![1, 2, 3]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_file_is_an_error_that_names_it() {
    let dir = temp_dir("persist");
    let path = dir.join("x.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = load::<Vec<u32>>(&path).unwrap_err();
    assert!(matches!(err, PersistError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("x.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_write_into_a_missing_directory_fails_and_says_where() {
    let dir = temp_dir("persist");
    let path = dir.join("gone").join("x.json");
    let err = store(&path, &1u32).unwrap_err();
    assert!(matches!(err, PersistError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("gone/x.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
