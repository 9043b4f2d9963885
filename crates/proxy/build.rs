//! Code layout of the release `onemesh-proxy` binary.
//!
//! A sidecar's resident memory is mostly its own code: the kernel maps a binary's pages in 64 KiB
//! windows around each page the process touches, so code that runs (start-up, the request path,
//! the idle trim) scattered across the whole `.text` keeps most of it resident. The functions
//! listed in `link/hot-symbols.txt` (those that ran in a profiled benchmark run, made by
//! `bench/hot-symbols`) are laid out first and together, by lld's `--symbol-ordering-file`. A
//! stale list only costs that layout: names that no longer exist are skipped.
//!
//! Only release builds for x86_64 Linux on x86_64 Linux, and only when a trial link shows that
//! rustc's linker takes the option (rustup's rustc links with its own lld there since 1.90; a
//! distribution's rustc, or a linker of the user's choosing, may use GNU ld, which does not).

use std::path::Path;
use std::process::{Command, Stdio};

const ORDER_FLAG: &str = "-Wl,--symbol-ordering-file=";

fn main() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    for var in [
        "RUSTC_LINKER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let native = env("TARGET") == "x86_64-unknown-linux-gnu" && env("HOST") == env("TARGET");
    if env("PROFILE") != "release" || !native || !list.exists() || !linker_orders_symbols() {
        return;
    }
    println!("cargo:rustc-link-arg-bins={ORDER_FLAG}{}", list.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether a trial program links with the ordering option, through the same rustc and flags.
fn linker_orders_symbols() -> bool {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let probe = Path::new(&out_dir).join("link-probe");
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition=2021", "--crate-type=bin", "-o"])
        .arg(&probe)
        .arg(format!("-Clink-arg={ORDER_FLAG}/dev/null"))
        .arg("-Clink-arg=-Wl,--no-warn-symbol-ordering");
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg(format!("-Clinker={linker}"));
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    cmd.arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"fn main() {}\n");
    }
    let linked = child.wait().is_ok_and(|s| s.success());
    if !linked {
        println!(
            "cargo:warning=the linker does not take {ORDER_FLAG} (not lld?): the proxy's hot \
             functions are not laid out together, so its code takes more resident memory"
        );
    }
    linked
}
