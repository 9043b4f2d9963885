//! Helpers for the tests against the test cluster (`scripts/k8s-testenv up`, then `KUBECONFIG`
//! from `scripts/k8s-testenv env`): kubectl and the onemesh CLI as an operator runs them. These
//! tests are `#[ignore]`d so a plain `cargo nextest run` needs no cluster; `scripts/test` starts
//! the cluster and runs them with `--run-ignored only`. Run without a cluster they fail, loudly.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The reason every cluster test is ignored by default.
pub const NEEDS_CLUSTER: &str =
    "needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\"";

/// The admin kubeconfig of the running test cluster.
pub fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("KUBECONFIG")
        .unwrap_or_else(|| panic!("KUBECONFIG is not set: this test {NEEDS_CLUSTER}"));
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "KUBECONFIG={} does not exist: {NEEDS_CLUSTER}",
        path.display()
    );
    path
}

/// The onemesh CLI of this build.
pub fn onemesh(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("run onemesh");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `kubectl ARGS` with `stdin`, as the operator would run it; (success, stdout + stderr).
pub fn kubectl_in(args: &[&str], stdin: &str) -> (bool, String) {
    let program = kubectl_program();
    let (first, rest) = program.split_first().expect("a kubectl command");
    let mut child = Command::new(first)
        .args(rest)
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write kubectl's stdin");
    let out = child.wait_with_output().expect("kubectl output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `kubectl apply --server-side` of `manifests`, which must succeed.
pub fn apply(manifests: &str) {
    let (ok, out) = kubectl_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        manifests,
    );
    assert!(ok, "kubectl apply failed: {out}");
}

/// Runs a program in a pod's network namespace; (success, stdout, stderr). Names resolve through
/// the cluster DNS, as in the pod (`ip netns exec` mounts `/etc/netns/<name>/resolv.conf`).
pub fn in_pod(
    uid: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let etc = PathBuf::from(format!("/etc/netns/onemesh-pod-{uid}"));
    if !etc.join("resolv.conf").exists() {
        std::fs::create_dir_all(&etc).expect("/etc/netns");
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.250.0.2\n").expect("resolv.conf");
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("onemesh-pod-{uid}"), program])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl ARGS`, which must succeed; its output.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, text) = kubectl_in(args, "");
    assert!(ok, "kubectl {} failed: {text}", args.join(" "));
    text
}

/// The kubectl command: `$ONEMESH_KUBECTL` split at spaces (`scripts/test` sets it to the test
/// cluster's own, `scripts/k8s-testenv kubectl`, of the server's version), else `kubectl`.
fn kubectl_program() -> Vec<String> {
    std::env::var("ONEMESH_KUBECTL")
        .unwrap_or_else(|_| "kubectl".to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes the mesh as `onemesh uninstall | kubectl delete -f -` does, if it is there, and waits.
pub fn uninstall() {
    let (ok, heads) = onemesh(&["uninstall"]);
    assert!(ok, "{heads}");
    let _ = kubectl_in(
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=90s",
            "-f",
            "-",
        ],
        &heads,
    );
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a test's clean-up when dropped while the test panics: a failed test leaves no mesh
/// behind for the next one (its control plane would go on publishing trust anchors and holding
/// the Lease, and the next test would fail for it). A panic of the clean-up itself is swallowed:
/// the test has failed already.
pub struct CleanOnPanic(pub fn());

impl Drop for CleanOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the test failed: cleaning up the cluster for the next one");
            let _ = std::panic::catch_unwind(self.0);
        }
    }
}
