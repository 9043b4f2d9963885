//! Unit tests of the local store: first load, valid and invalid edits, state files.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::tests::GOOD;

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-local-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    // A directory left by an earlier process with the same pid must not leak its files in.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn setup() -> (PathBuf, PathBuf, LocalStore) {
    let dir = temp_dir();
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, GOOD).unwrap();
    let store = LocalStore::open(&mesh, &dir).unwrap();
    (dir, mesh, store)
}

/// Every running instance of every workload.
fn instances(state: &crate::state::MeshState) -> impl Iterator<Item = &crate::model::Instance> {
    state.mesh.workloads.values().flat_map(|w| &w.instances)
}

#[test]
fn opens_without_state_files() {
    let (_dir, _mesh, store) = setup();
    let state = store.subscribe().borrow().clone();
    assert_eq!(state.mesh.workloads.len(), 2);
    assert_eq!(instances(&state).count(), 0);
    assert!(store.errors().is_empty());
}

#[test]
fn refuses_to_open_an_invalid_file() {
    let dir = temp_dir();
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, GOOD.replace("kind: Route", "kind: Rout")).unwrap();
    let err = LocalStore::open(&mesh, &dir).err().unwrap();
    assert!(err.to_string().contains("mesh.yaml:"), "{err}");
    assert!(err.to_string().contains("unknown kind"), "{err}");
}

#[test]
fn a_valid_edit_is_published_and_an_invalid_one_refused() {
    let (_dir, mesh, store) = setup();
    let mut rx = store.subscribe();
    assert!(!store.poll(), "nothing changed yet");

    std::fs::write(&mesh, GOOD.replace("timeout: 2s", "timeout: 3s")).unwrap();
    assert!(store.poll());
    assert!(rx.has_changed().unwrap());
    let timeout = rx.borrow_and_update().mesh.routes[0].rules.timeout;
    assert_eq!(timeout, Some(Duration::from_secs(3)));

    std::fs::write(&mesh, GOOD.replace("timeout: 2s", "timeout: later")).unwrap();
    assert!(!store.poll());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(
        rx.borrow().mesh.routes[0].rules.timeout,
        Some(Duration::from_secs(3)),
        "the last good state stays in force"
    );
    let errors = store.errors();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("spec.timeout"), "{}", errors[0]);

    std::fs::remove_file(&mesh).unwrap();
    assert!(!store.poll());
    assert!(store.errors()[0].contains("file removed"));

    std::fs::write(&mesh, GOOD).unwrap();
    assert!(store.poll());
    assert!(store.errors().is_empty());
}

#[test]
fn endpoints_and_tokens_are_read_and_reloaded() {
    let (dir, _mesh, store) = setup();
    std::fs::write(
        dir.join(ENDPOINTS_FILE),
        r#"[{"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41000", "ports": {"8080": 41234}}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.join(TOKENS_FILE),
        r#"{"t1": "spiffe://cluster.local/ns/bank/sa/bank"}"#,
    )
    .unwrap();
    assert!(store.poll());
    let state = store.subscribe().borrow().clone();
    assert_eq!(instances(&state).next().unwrap().ports[&8080], 41234);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = rt.block_on(store.token_identity("t1")).unwrap();
    assert_eq!(
        id.unwrap().to_string(),
        "spiffe://cluster.local/ns/bank/sa/bank"
    );
    assert_eq!(rt.block_on(store.token_identity("t2")).unwrap(), None);

    std::fs::write(dir.join(ENDPOINTS_FILE), "[\n{\"namespace\": 1}]").unwrap();
    assert!(!store.poll());
    let errors = store.errors();
    assert!(errors[0].contains("endpoints.json:2:"), "{}", errors[0]);
    assert_eq!(instances(&store.subscribe().borrow()).count(), 1);
}
