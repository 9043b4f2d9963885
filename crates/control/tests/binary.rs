//! Tests of the `onemesh-control` binary as `onemesh up` runs it: refuses an invalid mesh.yaml with
//! a message naming file and line; otherwise makes its CA, logs its bound addresses, and exits 0
//! on SIGTERM.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(20);

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-bin-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const MESH: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec:
  serviceAccount: bank
  ports: [{port: 8080}, {port: 8080}]
";

fn control(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onemesh-control"));
    cmd.arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen-identity", "127.0.0.1:0"])
        .args(["--listen-destination", "127.0.0.1:0"])
        .args(["--listen-policy", "127.0.0.1:0"])
        .args(["--listen-dashboard", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn an_invalid_mesh_yaml_is_refused_with_file_and_line() {
    let dir = temp_dir();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    let out = tokio::time::timeout(WAIT, control(&dir).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "mesh.yaml:10: spec.ports[1].port: duplicate port 8080 in workload bank/bank"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn starts_logs_its_addresses_and_stops_on_sigterm() {
    let dir = temp_dir();
    std::fs::write(dir.join("mesh.yaml"), MESH.replace(", {port: 8080}", "")).unwrap();
    let mut child = control(&dir).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("onemesh-control listening") {
                return line;
            }
        }
        panic!("the binary exited before listening");
    })
    .await
    .unwrap();
    assert!(line.contains("identity=127.0.0.1:"), "{line}");
    assert!(
        line.contains("spiffe://cluster.local/ns/onemesh/sa/control"),
        "{line}"
    );
    for file in ["trust-anchors.pem", "issuer.crt", "issuer.key"] {
        assert!(dir.join("state").join(file).exists(), "{file}");
    }
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
