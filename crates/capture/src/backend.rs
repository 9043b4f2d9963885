//! Running the iptables programs of one backend: `iptables-nft-*` (nf_tables, the default of
//! current distributions) or `iptables-legacy-*` (x_tables, older nodes). A pod's rules must be
//! in the backend the node's kernel and other tools use, and both work the same here.
//!
//! Each change is one `<backend>-restore --noflush -w 5` run fed the whole input on stdin, so a
//! namespace never holds half of our rules. The `nat` table is read with `<backend>-save -t nat`
//! first; between that read and the restore nobody else should be editing the pod's `nat` table
//! (the init step runs alone, before any other container of the pod).

use crate::Rules;
use crate::render::{ours, plan_apply, plan_remove};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Seconds `iptables-restore` waits for the xtables lock before giving up (`-w`).
const LOCK_WAIT_SECONDS: &str = "5";

/// Directories searched after `PATH`: Debian puts the iptables programs in `sbin`, which is not
/// on a non-login shell's `PATH`.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Which iptables implementation's programs to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft-restore` / `iptables-nft-save` (rules in nf_tables).
    Nft,
    /// `iptables-legacy-restore` / `iptables-legacy-save` (rules in x_tables).
    Legacy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    pub fn restore_program(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }

    pub fn save_program(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }

    /// The backend to use in this network namespace: one that already holds our chains, else
    /// one that holds any rule (the node's tools, or whatever ran before us, chose it), else nft
    /// when `iptables-nft-restore` is installed, else legacy. Mixing the two in one namespace
    /// works in the kernel but makes `iptables-save` of either show half the picture.
    pub fn detect() -> Backend {
        let dumps: Vec<(Backend, String)> = [Backend::Nft, Backend::Legacy]
            .into_iter()
            .filter_map(|b| run(b.save_program(), &[], None).ok().map(|d| (b, d)))
            .collect();
        if let Some((b, _)) = dumps.iter().find(|(_, d)| !ours(d).is_empty()) {
            return *b;
        }
        if let Some((b, _)) = dumps
            .iter()
            .find(|(_, d)| d.lines().any(|l| l.starts_with("-A ")))
        {
            return *b;
        }
        if find_program(Backend::Nft.restore_program()).is_some() {
            Backend::Nft
        } else {
            Backend::Legacy
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Running an iptables program failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "{program} is not installed (looked in PATH and /usr/sbin, /sbin, /usr/local/sbin): the \
         image needs iptables 1.8 or later, or choose the other backend with --backend"
    )]
    NotInstalled { program: &'static str },
    #[error("could not run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}; {}", hint(stderr))]
    Failed {
        program: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error(
        "a proxy uid of 0 would exempt every process running as root from capture: run the proxy \
         as a uid of its own (default 2102)"
    )]
    RootProxyUid,
}

/// What to do about a failed iptables run, from what it printed.
fn hint(stderr: &str) -> &'static str {
    let has = |s: &str| stderr.contains(s);
    if has("Permission denied") || has("Operation not permitted") || has("must be root") {
        "it needs CAP_NET_ADMIN and CAP_NET_RAW: the init container must add NET_ADMIN and NET_RAW \
         to its capabilities (and run as uid 0)"
    } else if has("xtables lock") || has("Resource temporarily unavailable") {
        "another program held the xtables lock for 5 s: run the init step again"
    } else if has("Couldn't load")
        || has("No such file or directory")
        || has("does not exist")
        || has("not supported")
        || has("Could not fetch rule set")
    {
        "the kernel may lack a module the rules need (iptable_nat or nf_tables, xt_owner, \
         xt_REDIRECT, xt_comment, xt_multiport): load them on the node, or try the other backend \
         with --backend"
    } else {
        "see the rules it was given with `onemesh-proxy init --dry-run`"
    }
}

/// Installs `rules` (replacing any of ours already there) in the current network namespace.
pub fn apply(rules: &Rules, backend: Backend) -> Result<(), CaptureError> {
    if rules.proxy_uid == 0 {
        return Err(CaptureError::RootProxyUid);
    }
    let current = save_nat(backend)?;
    let input = plan_apply(rules, &current);
    run(
        backend.restore_program(),
        &["--noflush", "-w", LOCK_WAIT_SECONDS],
        Some(&input),
    )
    .map(drop)
}

/// Deletes our jumps and chains; `Ok(false)` when there were none.
pub fn remove(backend: Backend) -> Result<bool, CaptureError> {
    let current = save_nat(backend)?;
    match plan_remove(&current) {
        None => Ok(false),
        Some(input) => run(
            backend.restore_program(),
            &["--noflush", "-w", LOCK_WAIT_SECONDS],
            Some(&input),
        )
        .map(|_| true),
    }
}

/// Our lines of `iptables-save -t nat`: chain declarations (with counters), the jumps to our
/// chains, and our rules. Empty when nothing of ours is installed.
pub fn show(backend: Backend) -> Result<String, CaptureError> {
    save_nat(backend).map(|dump| ours(&dump))
}

fn save_nat(backend: Backend) -> Result<String, CaptureError> {
    run(backend.save_program(), &["-t", "nat"], None)
}

/// Runs `program` with `input` on stdin, returns stdout.
fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, CaptureError> {
    let path = find_program(program).ok_or(CaptureError::NotInstalled { program })?;
    let spawn_err = |source| CaptureError::Spawn {
        program: path.clone(),
        source,
    };
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // The inputs are a few kilobytes, well under a pipe's buffer: no deadlock with stdout.
        stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program` in `PATH`, then in the `sbin` directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
