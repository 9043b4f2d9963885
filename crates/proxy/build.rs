//! Link layout of the release `onemesh-proxy` binary (x86_64 Linux, where rustc links with its
//! own lld since 1.90; skipped when another linker is configured).
//!
//! A sidecar's resident memory is mostly its own code: the kernel maps a binary's pages in 64 KiB
//! windows around each page the process touches, so code that runs (start-up, the request path,
//! the idle trim) scattered across the whole `.text` keeps most of it resident. The functions
//! listed in `link/hot-symbols.txt` (those that ran in a profiled benchmark run, made by
//! `bench/hot-symbols`) are laid out first and together. A stale list only costs that layout:
//! names that no longer exist are skipped. Relative relocations are packed (`DT_RELR`, glibc 2.36
//! and later) so the loader reads a few KiB instead of 200.

use std::path::Path;

fn main() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    // A linker of the user's choosing may not be lld (GNU ld has no symbol ordering file).
    let own_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    if !release || target != "x86_64-unknown-linux-gnu" || own_linker || !list.exists() {
        return;
    }
    for arg in [
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
        "-Wl,-z,pack-relative-relocs".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
