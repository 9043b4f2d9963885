//! What `onemesh up` leaves on disk and who can read it, with the reference platform running and
//! a payment made (so every app has written its database and its WAL): every folder of the state
//! directory is 0700, and every file holding a secret or customer data — bootstrap tokens and
//! their bindings, CA and operator keys, the apps' SQLite databases with their `-wal`/`-shm`, anything in a proxy's state folder —
//! is 0600. And the dashboard answers only its own names: a forged `Host` (DNS rebinding) is
//! refused, a name given with `--dashboard-host` is served.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::Up;
use support::platform::{self, call};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every path under `root` (not following links), `root` included.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// Files that must be readable by this user only, by name or by the folder they are in.
fn secret(rel: &Path) -> bool {
    let name = rel.file_name().unwrap().to_string_lossy();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    [
        "tokens.json",
        "endpoints.json",
        "token-bindings.json",
        "issuer.key",
        "trust-anchor.key",
        "operator.key",
        "dashboard-token",
    ]
    .contains(&name.as_ref())
        || name.ends_with(".db")
        || name.ends_with(".db-wal")
        || name.ends_with(".db-shm")
        || first == "proxies"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_and_the_dashboard_answers_only_its_own_names() {
    platform::assert_platform_built();
    let up = Up::start_with(
        "files",
        &platform::platform_mesh(),
        &["--dashboard-host", "dash.example"],
    );
    // One payment, so that every app on the chain has written its database.
    let entry = platform::entry(&up);
    let outcome = platform::customer_order(
        &entry,
        "files-1",
        platform::Kind::AppcardCheck,
        std::time::Instant::now() + Duration::from_secs(30),
    )
    .await;
    assert_eq!(outcome.status, "PAID", "{outcome:?}\n{}", up.log());

    let state = up.dir.join("state");
    let mut secrets = Vec::new();
    let mut dbs = 0;
    for p in walk(&state) {
        let rel = p.strip_prefix(&state).unwrap().to_path_buf();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            assert_eq!(mode(&p), 0o700, "folder {} is {:o}", p.display(), mode(&p));
            continue;
        }
        // Nothing in the state directory may be writable by others.
        assert_eq!(mode(&p) & 0o022, 0, "{} is {:o}", p.display(), mode(&p));
        if rel.as_os_str().is_empty() || !secret(&rel) {
            continue;
        }
        assert_eq!(mode(&p), 0o600, "{} is {:o}", p.display(), mode(&p));
        dbs += usize::from(rel.to_string_lossy().ends_with(".db"));
        secrets.push(rel.display().to_string());
    }
    println!(
        "checked modes of {} secret files: {secrets:?}",
        secrets.len()
    );
    assert_eq!(dbs, 5, "one database per app: {secrets:?}");
    for must in [
        "tokens.json",
        "issuer.key",
        "trust-anchor.key",
        "operator.key",
        "dashboard-token",
    ] {
        assert!(
            secrets.iter().any(|s| s == must),
            "{must} not found: {secrets:?}"
        );
    }
    assert!(
        secrets.iter().any(|s| s.ends_with(".db-wal")),
        "no WAL seen while the apps run: {secrets:?}"
    );
    for w in platform::WORKLOADS {
        let (ns, name) = w.split_once('/').unwrap();
        let dir = state.join("proxies").join(format!("{ns}.{name}"));
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        // The proxy keeps its key there (and it was checked to be 0600 above).
        assert!(dir.join("key.pem").exists(), "no key in {}", dir.display());
    }

    // The dashboard (the control plane's): its own address and a name given with
    // --dashboard-host are served, with the token; a rebinding page's Host is not, even with it.
    let dash = up.status()["dashboard"].as_str().unwrap().to_string();
    let port = dash.rsplit_once(':').unwrap().1.to_string();
    let token = std::fs::read_to_string(state.join("dashboard-token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let get = |host: String| {
        let (dash, auth) = (dash.clone(), auth.clone());
        async move {
            let (status, body) = call(
                &dash,
                "GET",
                "/api/v1/targets",
                None,
                &[("host", &host), ("authorization", &auth)],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            (status, body)
        }
    };
    let (status, body) = get(format!("localhost:{port}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.is_array(), "{body}");
    // Without the token: 401, nothing shown.
    let (status, body) = call(
        &dash,
        "GET",
        "/api/v1/targets",
        None,
        &[],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.to_string().contains("spiffe://"), "{body}");
    let (status, _) = get("dash.example:443".into()).await;
    assert_eq!(status, 200);
    for forged in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        let (status, body) = get(forged.clone()).await;
        assert_eq!(status, 421, "{forged}: {body}");
        let text = body.as_str().unwrap_or_default();
        assert!(text.contains("DNS rebinding"), "{text}");
        assert!(!text.contains("spiffe://"), "{text}");
        assert_ne!(body, json!(null));
    }
    up.stop_and_clean();
}
