use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use onemesh_identity::{TrustBundle, WorkloadKey, verify_peer};

use super::cert::{self, CertSummary};
use super::expiry::{self, CaPart, Expiry, ExpiryLevel};
use super::files::{self, *};
use super::rotation::{Fleet, FleetProgress, Goal, RotateError, Rotator, rotation_due};
use super::state::{CaState, RotationKind, Step};
use super::*;

const TD: &str = "cluster.local";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-pki-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    TempDir(dir)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Short lifetimes, as tests use them.
fn settings() -> CaSettings {
    CaSettings {
        anchor_lifetime: Duration::from_secs(3600),
        issuer_lifetime: Duration::from_secs(600),
        ..CaSettings::default()
    }
}

/// A leaf from the CA's current issuer verifies against its current bundle, and the files on disk
/// are what is published.
fn assert_consistent(dir: &Path, ca: &CaState) {
    let snapshot = ca.current();
    let id: SpiffeId = "spiffe://cluster.local/ns/bank/sa/bank".parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = snapshot
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(60), |_| {
            true
        })
        .unwrap();
    verify_peer(&snapshot.bundle, &issued.chain, SystemTime::now(), TD, None).unwrap();
    assert_eq!(
        TrustBundle::from_pem(&read(dir, TRUST_ANCHORS_FILE)).unwrap(),
        snapshot.bundle
    );
    assert_eq!(read(dir, ISSUER_CERT_FILE), snapshot.issuer.chain_pem());
    for key in [ISSUER_KEY_FILE, TRUST_ANCHOR_KEY_FILE] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
}

/// No staged, leftover or temporary file, and no journal.
fn assert_settled(dir: &Path) {
    for name in files::ALL_FILES {
        let tmp = dir.join(format!(".{name}.tmp"));
        assert!(!tmp.exists(), "{}", tmp.display());
    }
    for name in [
        ROTATION_FILE,
        NEXT_ANCHOR_CERT_FILE,
        NEXT_ANCHOR_KEY_FILE,
        OLD_ANCHOR_CERT_FILE,
        OLD_ANCHOR_KEY_FILE,
        NEXT_ISSUER_CERT_FILE,
        NEXT_ISSUER_KEY_FILE,
        CREATING_FILE,
    ] {
        assert!(!dir.join(name).exists(), "{name} left behind");
    }
}

#[test]
fn a_new_ca_keeps_its_keys_private_and_loads_again() {
    let dir = temp_dir();
    let made = CaState::open(&dir.0, TD, settings()).unwrap();
    assert_consistent(&dir.0, &made);
    assert_settled(&dir.0);
    let loaded = CaState::open(&dir.0, TD, settings()).unwrap();
    assert_eq!(loaded.current().fingerprint, made.current().fingerprint);
    assert_eq!(loaded.anchor(), made.anchor());
    assert!(loaded.anchor().is_some());

    // A key file left readable by others is tightened when it is written again.
    let key = dir.0.join(ISSUER_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    Files::new(&dir.0)
        .write(ISSUER_KEY_FILE, &made.current().issuer.key_pem(), true)
        .unwrap();
    assert_eq!(mode(&key), 0o600);

    std::fs::remove_file(dir.0.join(ISSUER_CERT_FILE)).unwrap();
    assert!(matches!(
        CaState::open(&dir.0, TD, settings()),
        Err(PkiError::Incomplete {
            missing: ISSUER_CERT_FILE,
            ..
        })
    ));
}

#[test]
fn a_state_dir_from_before_rotation_finds_its_anchor_in_the_bundle() {
    let dir = temp_dir();
    let made = CaState::open(&dir.0, TD, settings()).unwrap();
    let anchor_pem = read(&dir.0, TRUST_ANCHOR_CERT_FILE);
    std::fs::remove_file(dir.0.join(TRUST_ANCHOR_CERT_FILE)).unwrap();
    let loaded = CaState::open(&dir.0, TD, settings()).unwrap();
    assert_eq!(loaded.anchor(), made.anchor());
    assert_eq!(read(&dir.0, TRUST_ANCHOR_CERT_FILE), anchor_pem);
}

#[test]
fn a_ca_without_the_anchor_key_works_but_cannot_rotate() {
    let dir = temp_dir();
    let made = CaState::open(&dir.0, TD, settings()).unwrap();
    drop(made);
    std::fs::remove_file(dir.0.join(TRUST_ANCHOR_KEY_FILE)).unwrap();
    let ca = CaState::open(&dir.0, TD, settings()).unwrap();
    assert!(ca.anchor().is_none());
    assert!(matches!(
        ca.rotate_issuer(Duration::from_secs(1)),
        Err(PkiError::NoAnchorKey)
    ));
    assert!(matches!(
        ca.begin_anchor_rotation(Duration::from_secs(1)),
        Err(PkiError::NoAnchorKey)
    ));
    assert!(!dir.0.join(ROTATION_FILE).exists());
}

#[test]
fn issuer_rotation_signs_under_the_same_anchor() {
    let dir = temp_dir();
    let ca = CaState::open(&dir.0, TD, settings()).unwrap();
    let before = ca.current();
    let journal = ca.rotate_issuer(Duration::from_secs(7)).unwrap();
    assert_eq!(
        (journal.kind, journal.step),
        (RotationKind::Issuer, Step::Swap)
    );
    let after = ca.current();
    assert_ne!(after.issuer_sha256(), before.issuer_sha256());
    assert_ne!(after.fingerprint, before.fingerprint);
    assert_eq!(after.bundle, before.bundle);
    assert_consistent(&dir.0, &ca);
    // A second rotation is refused while this one is under way.
    assert!(matches!(
        ca.rotate_issuer(Duration::from_secs(7)),
        Err(PkiError::RotationUnderWay(_))
    ));
    ca.finish().unwrap();
    assert_settled(&dir.0);
    let reopened = CaState::open(&dir.0, TD, settings()).unwrap();
    assert_eq!(reopened.current().fingerprint, after.fingerprint);
}

#[test]
fn anchor_rotation_adds_swaps_then_removes() {
    let dir = temp_dir();
    let ca = CaState::open(&dir.0, TD, settings()).unwrap();
    let old_root = ca.current().bundle.roots()[0].clone();

    ca.begin_anchor_rotation(Duration::from_secs(7)).unwrap();
    let joined = ca.current();
    assert_eq!(joined.bundle.roots().len(), 2);
    assert_eq!(joined.bundle.roots()[0], old_root);
    let new_root = joined.bundle.roots()[1].clone();
    assert_consistent(&dir.0, &ca);

    ca.anchor_swap_issuer().unwrap();
    let swapped = ca.current();
    assert_eq!(swapped.bundle, joined.bundle);
    // The new issuer chains to the new anchor alone.
    let only_new = TrustBundle::from_roots(vec![new_root.clone()]).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let leaf = swapped
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(60), |_| {
            true
        })
        .unwrap();
    verify_peer(&only_new, &leaf.chain, SystemTime::now(), TD, None).unwrap();
    assert_eq!(
        cert::pem_certs(&read(&dir.0, TRUST_ANCHOR_CERT_FILE)).unwrap(),
        vec![new_root.clone()]
    );
    assert_eq!(
        cert::pem_certs(&read(&dir.0, OLD_ANCHOR_CERT_FILE)).unwrap(),
        vec![old_root.clone()]
    );
    assert!(dir.0.join(OLD_ANCHOR_KEY_FILE).exists());
    assert_consistent(&dir.0, &ca);

    ca.anchor_leave().unwrap();
    assert_eq!(ca.current().bundle.roots(), std::slice::from_ref(&new_root));
    assert_consistent(&dir.0, &ca);
    ca.finish().unwrap();
    assert_settled(&dir.0);
    assert!(ca.journal().is_none());
}

/// Runs what is left of an anchor rotation, from whatever the journal says.
fn finish_anchor_rotation(ca: &CaState, original: &rustls::pki_types::CertificateDer<'static>) {
    match ca.journal().map(|j| j.step) {
        None if ca.current().bundle.roots().contains(original) => {
            ca.begin_anchor_rotation(Duration::from_secs(1)).unwrap();
            finish_anchor_rotation(ca, original);
        }
        None => {}
        Some(Step::Join) => {
            ca.anchor_swap_issuer().unwrap();
            finish_anchor_rotation(ca, original);
        }
        Some(Step::Swap) => {
            ca.anchor_leave().unwrap();
            finish_anchor_rotation(ca, original);
        }
        Some(Step::Leave) => ca.finish().unwrap(),
    }
}

#[test]
fn an_anchor_rotation_killed_at_any_change_finishes_after_a_restart() {
    let mut crash_at = 0;
    loop {
        let dir = temp_dir();
        let ca = CaState::open(&dir.0, TD, settings()).unwrap();
        let original = ca.current().bundle.roots()[0].clone();
        files::CRASH_AFTER.with(|c| c.set(Some(crash_at)));
        let run = (|| {
            ca.begin_anchor_rotation(Duration::from_secs(1))?;
            ca.anchor_swap_issuer()?;
            ca.anchor_leave()?;
            ca.finish()
        })();
        files::CRASH_AFTER.with(|c| c.set(None));
        drop(ca);
        let finished = run.is_ok();

        let ca = CaState::open(&dir.0, TD, settings())
            .unwrap_or_else(|e| panic!("killed after {crash_at} changes: {e}"));
        assert_consistent(&dir.0, &ca);
        finish_anchor_rotation(&ca, &original);
        assert_consistent(&dir.0, &ca);
        assert_settled(&dir.0);
        let roots = ca.current().bundle.roots().to_vec();
        assert_eq!(roots.len(), 1, "killed after {crash_at} changes");
        assert_ne!(roots[0], original, "killed after {crash_at} changes");
        assert_eq!(
            cert::pem_certs(&read(&dir.0, TRUST_ANCHOR_CERT_FILE)).unwrap(),
            roots
        );
        if finished {
            break;
        }
        crash_at += 1;
    }
    // Every change of the rotation was a place to be killed at.
    assert!(crash_at > 10, "{crash_at}");
}

#[test]
fn an_issuer_rotation_killed_at_any_change_leaves_one_consistent_issuer() {
    let mut crash_at = 0;
    loop {
        let dir = temp_dir();
        let ca = CaState::open(&dir.0, TD, settings()).unwrap();
        let before = ca.current().issuer_sha256();
        files::CRASH_AFTER.with(|c| c.set(Some(crash_at)));
        let run = ca
            .rotate_issuer(Duration::from_secs(1))
            .and_then(|_| ca.finish());
        files::CRASH_AFTER.with(|c| c.set(None));
        drop(ca);
        let ca = CaState::open(&dir.0, TD, settings()).unwrap();
        assert_consistent(&dir.0, &ca);
        // Either the rotation was committed (and goes on) or it never happened.
        match ca.journal() {
            Some(j) => {
                assert_eq!(j.kind, RotationKind::Issuer);
                assert_ne!(ca.current().issuer_sha256(), before);
                ca.finish().unwrap();
            }
            None if run.is_ok() => assert_ne!(ca.current().issuer_sha256(), before),
            None => {}
        }
        assert_settled(&dir.0);
        if run.is_ok() {
            break;
        }
        crash_at += 1;
    }
}

#[test]
fn making_a_ca_killed_at_any_change_makes_it_again() {
    let mut crash_at = 0;
    loop {
        let dir = temp_dir();
        files::CRASH_AFTER.with(|c| c.set(Some(crash_at)));
        let run = CaState::open(&dir.0, TD, settings());
        files::CRASH_AFTER.with(|c| c.set(None));
        let done = run.is_ok();
        drop(run);
        let ca = CaState::open(&dir.0, TD, settings())
            .unwrap_or_else(|e| panic!("killed after {crash_at} changes: {e}"));
        assert_consistent(&dir.0, &ca);
        assert_settled(&dir.0);
        if done {
            break;
        }
        crash_at += 1;
    }
}

#[test]
fn an_unreadable_journal_is_an_error_that_says_what_to_do() {
    let dir = temp_dir();
    drop(CaState::open(&dir.0, TD, settings()).unwrap());
    std::fs::write(dir.0.join(ROTATION_FILE), "{\"kind\": \"anchor\"").unwrap();
    let err = CaState::open(&dir.0, TD, settings()).err().unwrap();
    assert!(matches!(err, PkiError::Journal { .. }), "{err}");
    assert!(err.to_string().contains("remove it"), "{err}");
}

#[test]
fn the_issuer_is_due_at_the_configured_fraction_of_its_life() {
    let dir = temp_dir();
    let ca = CaState::open(&dir.0, TD, settings()).unwrap();
    let snapshot = ca.current();
    let issuer = &snapshot.issuer_summary;
    let life = issuer.not_after.duration_since(issuer.not_before).unwrap();
    assert_eq!(
        rotation_due(&snapshot, 0.7),
        issuer.not_before + life.mul_f64(0.7)
    );
    assert_eq!(rotation_due(&snapshot, 2.0), issuer.not_after);
    // Leaves are cut at the issuer's expiry.
    let now = SystemTime::now();
    let left = issuer.not_after.duration_since(now).unwrap();
    assert_eq!(
        snapshot.leaf_lifetime(Duration::from_secs(24 * 3600), now),
        Some(left)
    );
    assert_eq!(
        snapshot.leaf_lifetime(Duration::from_secs(3600), issuer.not_after),
        None
    );
}

#[test]
fn expiry_reads_the_state_dir_and_judges_each_certificate() {
    let dir = temp_dir();
    let ca = CaState::open(&dir.0, TD, settings()).unwrap();
    ca.begin_anchor_rotation(Duration::from_secs(1)).unwrap();
    let found = expiry::expiries(&dir.0).unwrap();
    let parts: Vec<CaPart> = found.iter().map(|e| e.part).collect();
    // The issuer (600 s) expires first, then the two anchors (3600 s).
    assert_eq!(parts, [CaPart::Issuer, CaPart::Anchor, CaPart::Anchor]);
    let now = SystemTime::now();
    assert_eq!(found[0].level(now), ExpiryLevel::Fail);
    let in_days = |days: u64| Expiry {
        part: CaPart::Anchor,
        subject: String::new(),
        sha256: String::new(),
        not_after: now + Duration::from_secs(days * 24 * 3600),
    };
    assert_eq!(in_days(61).level(now), ExpiryLevel::Ok);
    assert_eq!(in_days(59).level(now), ExpiryLevel::Warn);
    assert_eq!(in_days(6).level(now), ExpiryLevel::Fail);
    assert_eq!(
        in_days(0).level(now + Duration::from_secs(1)),
        ExpiryLevel::Fail
    );

    let issuer = CertSummary::parse(&ca.current().issuer_cert).unwrap();
    let status = onemesh_api::admin::TrustStatus {
        issuer: Some(issuer.to_api()),
        ..Default::default()
    };
    let from_status = expiry::expiries_from_status(&status);
    assert_eq!(from_status.len(), 1);
    assert_eq!(from_status[0].sha256, found[0].sha256);
    assert_eq!(from_status[0].not_after, found[0].not_after);
}

/// A fleet whose proxies the test moves by hand.
#[derive(Default)]
struct FakeFleet {
    /// (name, done with every goal)
    proxies: Mutex<Vec<(String, bool)>>,
    changes: tokio::sync::watch::Sender<()>,
}

impl Fleet for FakeFleet {
    fn progress(&self, _goal: &Goal) -> FleetProgress {
        let proxies = self.proxies.lock().unwrap();
        let mut p = FleetProgress {
            total: proxies.len() as u32,
            ..Default::default()
        };
        for (name, done) in proxies.iter() {
            if *done {
                p.done += 1;
            } else {
                p.pending.push(name.clone());
            }
        }
        p
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }
}

#[tokio::test]
async fn a_rotation_goes_on_without_a_straggler_after_each_deadline() {
    let dir = temp_dir();
    let ca = Arc::new(CaState::open(&dir.0, TD, settings()).unwrap());
    let fleet = Arc::new(FakeFleet::default());
    fleet.proxies.lock().unwrap().extend([
        (
            "spiffe://cluster.local/ns/a/sa/a @ 127.0.0.1:1".to_string(),
            true,
        ),
        (
            "spiffe://cluster.local/ns/b/sa/b @ 127.0.0.1:2".to_string(),
            false,
        ),
    ]);
    let rotator = Rotator::new(ca.clone(), fleet.clone());
    let started = std::time::Instant::now();
    let mut progress = rotator
        .start(RotationKind::Anchor, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(
        rotator.status().starts_with("anchor rotation"),
        "{}",
        rotator.status()
    );
    let second = rotator.start(RotationKind::Issuer, None).await;
    assert!(
        matches!(second, Err(RotateError::InProgress(_))),
        "{second:?}"
    );

    let mut stragglers = Vec::new();
    let last = loop {
        let p = tokio::time::timeout(Duration::from_secs(10), progress.recv())
            .await
            .unwrap()
            .unwrap();
        if !p.stragglers.is_empty() {
            stragglers.push((p.step.clone(), p.stragglers.clone()));
        }
        if p.done {
            break p;
        }
    };
    assert_eq!((last.done_proxies, last.total_proxies), (1, 2));
    // Each of the three steps waited for its deadline.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let steps: Vec<&str> = stragglers.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        steps,
        [
            "new anchor in the bundle",
            "leaves re-issued",
            "old anchor removed"
        ]
    );
    for (_, names) in &stragglers {
        assert_eq!(names, &["spiffe://cluster.local/ns/b/sa/b @ 127.0.0.1:2"]);
    }
    assert_eq!(rotator.status(), "");
    assert_eq!(ca.current().bundle.roots().len(), 1);
    assert_settled(&dir.0);
}

#[tokio::test]
async fn a_rotation_waits_for_every_proxy_not_for_its_deadline() {
    let dir = temp_dir();
    let ca = Arc::new(CaState::open(&dir.0, TD, settings()).unwrap());
    let fleet = Arc::new(FakeFleet::default());
    fleet
        .proxies
        .lock()
        .unwrap()
        .push(("p @ 127.0.0.1:1".to_string(), false));
    let rotator = Rotator::new(ca.clone(), fleet.clone());
    let mut progress = rotator
        .start(RotationKind::Issuer, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let first = progress.recv().await.unwrap();
    assert_eq!(
        (first.done_proxies, first.total_proxies, first.done),
        (0, 1, false)
    );
    // Nothing moves while the proxy has not renewed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), progress.recv())
            .await
            .is_err()
    );
    fleet.proxies.lock().unwrap()[0].1 = true;
    fleet.changes.send_replace(());
    let started = std::time::Instant::now();
    let mut last = first;
    while !last.done {
        last = tokio::time::timeout(Duration::from_secs(5), progress.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(last.stragglers.is_empty(), "{last:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(ca.journal().is_none());
}

#[tokio::test]
async fn the_issuer_rotates_by_itself_when_due() {
    let dir = temp_dir();
    let short = CaSettings {
        issuer_lifetime: Duration::from_secs(4),
        issuer_rotate_at: 0.5,
        ..settings()
    };
    let ca = Arc::new(CaState::open(&dir.0, TD, short).unwrap());
    let first = ca.current().issuer_sha256();
    let rotator = Rotator::new(ca.clone(), Arc::new(FakeFleet::default()));
    rotator.spawn_auto(None);
    let mut rx = ca.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.issuer_sha256() != first),
    )
    .await
    .unwrap()
    .unwrap();
    rotator.stop();
}

#[tokio::test]
async fn only_the_leading_replica_rotates_the_issuer_by_itself() {
    let dir = temp_dir();
    let short = CaSettings {
        issuer_lifetime: Duration::from_secs(4),
        issuer_rotate_at: 0.25,
        ..settings()
    };
    let ca = Arc::new(CaState::open(&dir.0, TD, short).unwrap());
    let first = ca.current().issuer_sha256();
    let rotator = Rotator::new(ca.clone(), Arc::new(FakeFleet::default()));
    let (leader, leading) = tokio::sync::watch::channel(false);
    rotator.spawn_auto(Some(leading));
    // Due after 1 s; not leading: nothing happens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ca.current().issuer_sha256(), first, "a follower rotated");
    leader.send_replace(true);
    let mut rx = ca.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.issuer_sha256() != first),
    )
    .await
    .expect("the leader rotates")
    .unwrap();
    rotator.stop();
}

#[tokio::test]
async fn without_the_anchor_key_the_automatic_rotation_says_it_is_blocked() {
    let dir = temp_dir();
    let short = CaSettings {
        issuer_lifetime: Duration::from_secs(2),
        issuer_rotate_at: 0.1,
        ..settings()
    };
    drop(CaState::open(&dir.0, TD, short.clone()).unwrap());
    std::fs::remove_file(dir.0.join(TRUST_ANCHOR_KEY_FILE)).unwrap();
    let ca = Arc::new(CaState::open(&dir.0, TD, short).unwrap());
    let rotator = Rotator::new(ca.clone(), Arc::new(FakeFleet::default()));
    rotator.spawn_auto(None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rotator.status().starts_with("blocked") {
        assert!(std::time::Instant::now() < deadline, "{}", rotator.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotator.status().contains(TRUST_ANCHOR_KEY_FILE),
        "{}",
        rotator.status()
    );
    let refused = rotator.start(RotationKind::Issuer, None).await;
    assert!(
        matches!(refused, Err(RotateError::Pki(PkiError::NoAnchorKey))),
        "{refused:?}"
    );
    rotator.stop();
}
