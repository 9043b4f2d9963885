//! Unit tests of the token bindings.

use super::*;
use crate::persist::tests::temp_dir;

#[test]
fn the_first_key_binds_and_a_reload_keeps_it() {
    let dir = temp_dir("bindings");
    let b = TokenBindings::load(&dir).unwrap();
    assert!(b.is_empty());
    assert_eq!(b.bind("t-bank", b"key one").unwrap(), Binding::New);
    assert_eq!(b.bind("t-bank", b"key one").unwrap(), Binding::Same);
    assert_eq!(b.bind("t-bank", b"key two").unwrap(), Binding::OtherKey);
    assert_eq!(b.bind("t-card", b"key two").unwrap(), Binding::New);

    let again = TokenBindings::load(&dir).unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again.bind("t-bank", b"key two").unwrap(), Binding::OtherKey);
    assert_eq!(again.bind("t-bank", b"key one").unwrap(), Binding::Same);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_file_holds_no_token() {
    let dir = temp_dir("bindings");
    let b = TokenBindings::load(&dir).unwrap();
    b.bind("3f2a9c0de1b4a5f6", b"key").unwrap();
    let text = std::fs::read_to_string(dir.join(TOKEN_BINDINGS_FILE)).unwrap();
    assert!(!text.contains("3f2a9c0de1b4a5f6"), "{text}");
    assert!(text.contains(&sha256_hex(b"3f2a9c0de1b4a5f6")), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_write_binds_nothing() {
    let dir = temp_dir("bindings");
    let b = TokenBindings::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(b.bind("t", b"key").is_err());
    assert!(b.is_empty());
}
