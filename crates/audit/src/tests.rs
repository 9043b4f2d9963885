use std::path::{Path, PathBuf};
use std::time::Duration;

use onemesh_identity::{
    CredentialStore, DEFAULT_LEAF_LIFETIME, DEFAULT_TRUST_DOMAIN, SpiffeId, TrustAnchor,
    WorkloadKey,
};

use super::*;

const T0: i64 = 1_780_000_000_000;

struct Pki {
    anchor: TrustAnchor,
    issuer: onemesh_identity::Issuer,
}

impl Pki {
    fn new() -> Self {
        let anchor =
            TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(365 * 86_400)).unwrap();
        let issuer = anchor
            .issue_issuer(Duration::from_secs(30 * 86_400))
            .unwrap();
        Pki { anchor, issuer }
    }

    fn sealer(&self, id: &str) -> Sealer {
        let id: SpiffeId = id.parse().unwrap();
        let key = WorkloadKey::generate().unwrap();
        let issued = self
            .issuer
            .sign_csr(&key.csr_der(&id).unwrap(), DEFAULT_LEAF_LIFETIME, |_| true)
            .unwrap();
        let store = CredentialStore::new(id, key, issued, self.anchor.bundle()).unwrap();
        Sealer::from_credentials(&store).unwrap()
    }

    fn control(&self) -> Sealer {
        self.sealer("spiffe://cluster.local/ns/onemesh/sa/control")
    }

    fn trust(&self) -> Trust {
        Trust::new(self.anchor.bundle())
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onemesh-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record(i: u64) -> Record {
    Record {
        time_ms: T0 + i as i64,
        until_ms: T0 + i as i64,
        caller: "spiffe://cluster.local/ns/pg/sa/pg".to_string(),
        namespace: "card".to_string(),
        workload: "card".to_string(),
        port: 8080,
        kind: "http".to_string(),
        method: "POST".to_string(),
        path: format!("/v1/pay/{i}"),
        decision: if i.is_multiple_of(3) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        policy: "card-allow-pg".to_string(),
        mode: Mode::Enforce,
        count: 1,
        instance: String::new(),
        batch: 0,
    }
}

/// A log of `batches` batches of 3 records, sealed at the end (when `seal`).
fn write_log(dir: &Path, pki: &Pki, batches: u64, max: u64, seal: bool) -> Writer {
    let settings = WriterSettings {
        max_file_bytes: max,
    };
    let (mut w, _) = Writer::open(dir, settings, pki.control()).unwrap();
    let now = now_ms();
    for b in 1..=batches {
        let records = (0..3).map(|i| record(b * 10 + i)).collect();
        w.append("proxy-a", b, records, now).unwrap();
    }
    if seal {
        w.seal(now).unwrap();
    }
    w
}

fn only_file(dir: &Path) -> PathBuf {
    let files = writer::list_files(dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].1.clone()
}

fn edit_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn failure(dir: &Path, pki: &Pki) -> Failure {
    let report = verify_dir(dir, &pki.trust()).unwrap();
    report.failure.expect("verification should fail")
}

fn cp_error(f: &Failure) -> &CheckpointError {
    match &f.problem {
        Problem::BadCheckpoint { error, .. } => error,
        other => panic!("not a checkpoint failure: {other:?}"),
    }
}

#[test]
fn a_written_and_sealed_log_verifies() {
    let (pki, dir) = (Pki::new(), tempdir("ok"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    // One starting checkpoint, 9 records, one seal.
    assert_eq!(
        (report.entries, report.records, report.checkpoints),
        (11, 9, 2)
    );
    assert_eq!((report.first_seq, report.last_seq), (1, 11));
    assert_eq!((report.last_checkpoint, report.unsealed), (11, 0));
    assert_eq!(report.pruned_before, 0);
    assert!(
        report
            .signers
            .contains("spiffe://cluster.local/ns/onemesh/sa/control")
    );
}

#[test]
fn records_after_the_last_checkpoint_are_reported_unsealed() {
    let (pki, dir) = (Pki::new(), tempdir("unsealed"));
    let mut w = write_log(&dir, &pki, 2, 1 << 20, true);
    w.append("proxy-a", 3, vec![record(1), record(2)], now_ms())
        .unwrap();
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok());
    assert_eq!(report.unsealed, 2);
    // Nothing new: no new checkpoint.
    assert!(w.seal(now_ms()).unwrap().is_some());
    assert_eq!(w.seal(now_ms()).unwrap(), None);
}

#[test]
fn a_resent_batch_is_appended_once() {
    let (pki, dir) = (Pki::new(), tempdir("dedup"));
    let mut w = write_log(&dir, &pki, 1, 1 << 20, false);
    let again = w
        .append(
            "proxy-a",
            1,
            vec![record(1), record(2), record(3)],
            now_ms(),
        )
        .unwrap();
    assert_eq!(again, Appended::Duplicate(4));
    // An older batch too; another instance's batch 1 is new.
    let other = w.append("proxy-b", 1, vec![record(7)], now_ms()).unwrap();
    assert_eq!(other, Appended::Written(5));
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert_eq!(report.records, 4);
    // Kept across a restart (rebuilt from the newest file).
    drop(w);
    let (mut w, opened) = Writer::open(&dir, WriterSettings::default(), pki.control()).unwrap();
    assert_eq!(opened.next_seq, 6);
    assert_eq!(
        w.append("proxy-a", 1, vec![record(1)], now_ms()).unwrap(),
        Appended::Duplicate(4)
    );
    assert_eq!(
        w.append("proxy-a", 2, vec![record(1)], now_ms()).unwrap(),
        Appended::Written(6)
    );
}

#[test]
fn a_group_of_batches_is_written_once_each_in_order() {
    let (pki, dir) = (Pki::new(), tempdir("group"));
    let (mut w, _) = Writer::open(&dir, WriterSettings::default(), pki.control()).unwrap();
    w.append("proxy-a", 1, vec![record(1)], now_ms()).unwrap();
    let answers = w
        .append_all(
            vec![
                Batch::new("proxy-a", 1, vec![record(1)]),
                Batch::new("proxy-b", 1, vec![record(2), record(3)]),
                Batch::new("proxy-a", 2, vec![]),
                Batch::new("proxy-b", 1, vec![record(2), record(3)]),
                Batch::new("proxy-a", 3, vec![record(4)]),
            ],
            now_ms(),
        )
        .unwrap();
    assert_eq!(
        answers,
        [
            Appended::Duplicate(2),
            Appended::Written(4),
            Appended::Written(0),
            Appended::Duplicate(4),
            Appended::Written(5),
        ]
    );
    w.seal(now_ms()).unwrap();
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 4);
}

#[test]
fn editing_one_byte_of_a_record_names_it() {
    let (pki, dir) = (Pki::new(), tempdir("edit"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    let file = only_file(&dir);
    // Line 5 is entry 5 (the file starts with checkpoint 1), batch 2's first record: pay/20.
    edit_lines(&file, |lines| {
        lines[4] = lines[4].replace("/v1/pay/20", "/v1/pay/29");
    });
    let f = failure(&dir, &pki);
    assert_eq!((f.line, f.after_seq), (5, 4));
    assert_eq!(f.problem, Problem::Changed { seq: 5 });
    assert!(
        f.message
            .starts_with("audit-000000000001.log:5: entry 5 was changed")
    );
}

#[test]
fn a_rewritten_chain_is_caught_by_the_next_checkpoint() {
    let (pki, dir) = (Pki::new(), tempdir("rechain"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    let file = only_file(&dir);
    // An attacker changes a decision and recomputes every hash after it (no key needed).
    edit_lines(&file, |lines| {
        let mut prev = entry::GENESIS;
        for line in lines.iter_mut() {
            let (stored, json) = line.split_at(64);
            let mut json = json[1..].to_string();
            if json.contains("/v1/pay/12") {
                json = json.replace("\"deny\"", "\"allow\"");
            }
            let hash = entry::chain_hash(&prev, json.as_bytes());
            let _ = stored;
            *line = format!("{} {json}", entry::to_hex(&hash));
            prev = hash;
        }
    });
    let f = failure(&dir, &pki);
    assert!(
        matches!(f.problem, Problem::SealMismatch { seq: 11, .. }),
        "{f:?}"
    );
    assert_eq!(f.line, 11);
}

#[test]
fn deleting_a_record_names_the_gap() {
    let (pki, dir) = (Pki::new(), tempdir("delete"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    edit_lines(&only_file(&dir), |lines| {
        lines.remove(6);
    });
    let f = failure(&dir, &pki);
    assert_eq!(
        f.problem,
        Problem::Removed {
            from: 7,
            to: 7,
            found: 8
        }
    );
    assert_eq!(f.line, 7);
    assert!(
        f.message.contains("entries 7..7 were removed"),
        "{}",
        f.message
    );
}

#[test]
fn swapping_two_records_names_the_first_out_of_place() {
    let (pki, dir) = (Pki::new(), tempdir("swap"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    edit_lines(&only_file(&dir), |lines| lines.swap(3, 4));
    let f = failure(&dir, &pki);
    assert_eq!(
        f.problem,
        Problem::OutOfOrder {
            found: 5,
            expected: 4
        }
    );
    assert_eq!(f.line, 4);
}

/// Replaces the last checkpoint of `dir`'s only file with one signed by `forger`.
fn forge_last_checkpoint(dir: &Path, forger: &Sealer) {
    forge_last_checkpoint_at(dir, forger, now_ms());
}

fn forge_last_checkpoint_at(dir: &Path, forger: &Sealer, time_ms: i64) {
    edit_lines(&only_file(dir), |lines| {
        let last = lines.len() - 1;
        let prev = entry::from_hex::<32>(&lines[last - 1].as_bytes()[..64]).unwrap();
        let seq = last as u64 + 1;
        let cp = forger.checkpoint(seq, seq - 1, &prev, time_ms).unwrap();
        let (line, _) = entry::encode(
            &prev,
            &Entry {
                seq,
                body: Body::Checkpoint(cp),
            },
        )
        .unwrap();
        lines[last] = String::from_utf8(line).unwrap().trim_end().to_string();
    });
}

#[test]
fn a_checkpoint_signed_outside_the_mesh_ca_is_refused() {
    let (pki, dir) = (Pki::new(), tempdir("forged"));
    write_log(&dir, &pki, 2, 1 << 20, true);
    // A minted CA and a leaf with the control plane's id: not from the mesh's anchors.
    let minted = Pki::new();
    forge_last_checkpoint(&dir, &minted.control());
    let f = failure(&dir, &pki);
    match &f.problem {
        Problem::BadCheckpoint { seq: 8, error, .. } => {
            assert!(
                matches!(**error, CheckpointError::Untrusted(_)),
                "{error:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(f.message.contains("not trusted"), "{}", f.message);
}

#[test]
fn a_checkpoint_dated_after_its_certificate_expired_is_refused() {
    let (pki, dir) = (Pki::new(), tempdir("expired"));
    let control = pki.control();
    let (mut w, _) = Writer::open(&dir, WriterSettings::default(), control.clone()).unwrap();
    w.append("proxy-a", 1, vec![record(1)], now_ms()).unwrap();
    w.seal(now_ms()).unwrap();
    drop(w);
    // The same key and chain (verified at the file's first checkpoint), two days later: the
    // leaf lives one day, so the chain cache must not vouch for it.
    let later = now_ms() + 2 * 86_400_000;
    forge_last_checkpoint_at(&dir, &control, later);
    let f = failure(&dir, &pki);
    assert!(
        matches!(
            cp_error(&f),
            CheckpointError::Untrusted(onemesh_identity::VerifyError::Expired { .. })
        ),
        "{f:?}"
    );
}

#[test]
fn a_checkpoint_signed_by_a_proxy_of_the_mesh_is_refused() {
    let (pki, dir) = (Pki::new(), tempdir("proxy-signed"));
    write_log(&dir, &pki, 2, 1 << 20, true);
    forge_last_checkpoint(&dir, &pki.sealer("spiffe://cluster.local/ns/pg/sa/pg"));
    let f = failure(&dir, &pki);
    assert!(
        matches!(cp_error(&f), CheckpointError::WrongSigner { .. }),
        "{f:?}"
    );
}

#[test]
fn an_altered_or_absent_signature_is_refused() {
    let (pki, dir) = (Pki::new(), tempdir("badsig"));
    write_log(&dir, &pki, 2, 1 << 20, true);
    let file = only_file(&dir);
    let original = std::fs::read_to_string(&file).unwrap();
    // Re-sign the entry's hash after flipping the signature: the chain holds, the signature not.
    let resign = |f: &dyn Fn(&mut Checkpoint)| {
        std::fs::write(&file, &original).unwrap();
        edit_lines(&file, |lines| {
            let last = lines.len() - 1;
            let prev = entry::from_hex::<32>(&lines[last - 1].as_bytes()[..64]).unwrap();
            let mut e: Entry = serde_json::from_str(&lines[last][65..]).unwrap();
            let Body::Checkpoint(cp) = &mut e.body else {
                panic!("not a checkpoint")
            };
            f(cp);
            let (line, _) = entry::encode(&prev, &e).unwrap();
            lines[last] = String::from_utf8(line).unwrap().trim_end().to_string();
        });
        failure(&dir, &pki)
    };
    let flipped = resign(&|cp| {
        let last = cp.signature.pop().unwrap();
        cp.signature.push(if last == '0' { '1' } else { '0' });
    });
    assert!(
        matches!(cp_error(&flipped), CheckpointError::BadSignature),
        "{flipped:?}"
    );
    let absent = resign(&|cp| cp.signature.clear());
    assert!(
        matches!(cp_error(&absent), CheckpointError::NoSignature),
        "{absent:?}"
    );
}

#[test]
fn a_torn_last_line_fails_verify_and_is_cut_by_the_writer() {
    let (pki, dir) = (Pki::new(), tempdir("torn"));
    drop(write_log(&dir, &pki, 2, 1 << 20, true));
    let file = only_file(&dir);
    let whole = std::fs::read(&file).unwrap();
    // A SIGKILL in the middle of a write.
    let mut torn = whole.clone();
    torn.extend_from_slice(b"0123abcd {\"seq\":9,\"rec");
    std::fs::write(&file, &torn).unwrap();
    let f = failure(&dir, &pki);
    assert_eq!((f.line, f.problem.clone()), (9, Problem::Incomplete));
    // The writer cuts it and continues the chain.
    let (mut w, opened) = Writer::open(&dir, WriterSettings::default(), pki.control()).unwrap();
    assert_eq!(opened.truncated_bytes, (torn.len() - whole.len()) as u64);
    assert_eq!(opened.next_seq, 9);
    w.append("proxy-a", 9, vec![record(99)], now_ms()).unwrap();
    w.seal(now_ms()).unwrap();
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.last_seq, 10);
}

#[test]
fn the_writer_cuts_only_a_bad_tail_never_a_tampered_middle() {
    let (pki, dir) = (Pki::new(), tempdir("keep-middle"));
    drop(write_log(&dir, &pki, 2, 1 << 20, true));
    let file = only_file(&dir);
    // A tampered middle line (no longer json) and a garbage last line.
    edit_lines(&file, |lines| {
        lines[3] = lines[3].replace('{', "<");
        lines.push("not an entry".to_string());
    });
    let before = std::fs::read(&file).unwrap();
    let (_, opened) = Writer::open(&dir, WriterSettings::default(), pki.control()).unwrap();
    assert_eq!(opened.truncated_bytes, "not an entry\n".len() as u64);
    let after = std::fs::read(&file).unwrap();
    assert_eq!(after, before[..after.len()]);
    // The tampered line is still there for verify to name.
    let f = failure(&dir, &pki);
    assert_eq!(f.line, 4);
    assert!(matches!(f.problem, Problem::Unreadable { .. }), "{f:?}");
}

#[test]
fn a_cut_after_the_last_checkpoint_is_not_detected_but_shows_as_fewer_unsealed() {
    let (pki, dir) = (Pki::new(), tempdir("cut"));
    let mut w = write_log(&dir, &pki, 2, 1 << 20, true);
    w.append("proxy-a", 3, vec![record(1), record(2)], now_ms())
        .unwrap();
    drop(w);
    edit_lines(&only_file(&dir), |lines| {
        lines.pop();
    });
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok());
    assert_eq!(report.unsealed, 1);
}

#[test]
fn rotation_carries_the_chain_and_retention_keeps_it_verifiable() {
    let (pki, dir) = (Pki::new(), tempdir("rotate"));
    // ~1.5 KB per checkpoint, ~330 bytes per record: a new file every few batches.
    let mut w = write_log(&dir, &pki, 12, 3000, true);
    let files = writer::list_files(&dir).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for (seq, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let first: Entry = serde_json::from_str(&text.lines().next().unwrap()[65..]).unwrap();
        assert_eq!(first.seq, *seq);
        assert!(matches!(first.body, Body::Checkpoint(_)), "{path:?}");
    }
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 36);

    // Nothing is old enough yet; a year later every file but the newest goes.
    assert!(
        w.prune(now_ms(), Duration::from_secs(3600))
            .unwrap()
            .is_empty()
    );
    let year = Duration::from_secs(365 * 86_400);
    let deleted = w
        .prune(now_ms() + year.as_millis() as i64 + 1000, year)
        .unwrap();
    assert_eq!(deleted.len(), files.len() - 1);
    let report = verify_dir(&dir, &pki.trust()).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.pruned_before, files.last().unwrap().0);
    assert_eq!(report.first_seq, files.last().unwrap().0);
    // The chain goes on after pruning.
    w.append("proxy-a", 100, vec![record(1)], now_ms()).unwrap();
    w.seal(now_ms()).unwrap();
    assert!(verify_dir(&dir, &pki.trust()).unwrap().ok());
}

#[test]
fn a_batch_resent_after_a_rotation_and_a_restart_is_still_known() {
    let (pki, dir) = (Pki::new(), tempdir("rotate-dedup"));
    let settings = || WriterSettings {
        max_file_bytes: 1500,
    };
    let (mut w, _) = Writer::open(&dir, settings(), pki.control()).unwrap();
    let big: Vec<Record> = (0..5).map(record).collect();
    assert_eq!(
        w.append("proxy-a", 1, big.clone(), now_ms()).unwrap(),
        Appended::Written(6)
    );
    // The file is full: the next write (a seal) rotates, so the newest file holds no record.
    w.seal(now_ms()).unwrap();
    drop(w);
    assert_eq!(writer::list_files(&dir).unwrap().len(), 2);
    let (mut w, _) = Writer::open(&dir, settings(), pki.control()).unwrap();
    assert_eq!(
        w.append("proxy-a", 1, big, now_ms()).unwrap(),
        Appended::Duplicate(6)
    );
    assert!(verify_dir(&dir, &pki.trust()).unwrap().ok());
}

#[test]
fn a_removed_middle_file_or_a_cut_older_file_is_a_removal() {
    let (pki, dir) = (Pki::new(), tempdir("midfile"));
    write_log(&dir, &pki, 12, 3000, true);
    let files = writer::list_files(&dir).unwrap();
    let keep = std::fs::read(&files[1].1).unwrap();
    std::fs::remove_file(&files[1].1).unwrap();
    let f = failure(&dir, &pki);
    assert!(
        matches!(f.problem, Problem::Removed { from, .. } if from == files[1].0),
        "{f:?}"
    );
    assert_eq!(
        (f.file.as_str(), f.line),
        (files[2].1.file_name().unwrap().to_str().unwrap(), 1)
    );
    // The file back, with its last record cut.
    std::fs::write(&files[1].1, &keep).unwrap();
    edit_lines(&files[1].1, |lines| {
        lines.pop();
    });
    let f = failure(&dir, &pki);
    assert!(matches!(f.problem, Problem::Removed { .. }), "{f:?}");
}

#[test]
fn query_filters_records() {
    let (pki, dir) = (Pki::new(), tempdir("query"));
    write_log(&dir, &pki, 3, 1 << 20, true);
    let all = query_dir(&dir, &Filter::default()).unwrap();
    assert_eq!(all.records.len(), 9);
    let denied = query_dir(
        &dir,
        &Filter {
            decision: Some(Decision::Deny),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(denied.records.len(), 3);
    let limited = query_dir(
        &dir,
        &Filter {
            since_ms: Some(T0 + 20),
            limit: Some(2),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(limited.left_out, 4);
    assert_eq!(limited.records[1].1.path, "/v1/pay/32");
    let nobody = query_dir(
        &dir,
        &Filter {
            callers: Some(vec![String::new()]),
            ..Filter::default()
        },
    )
    .unwrap();
    assert!(nobody.records.is_empty());
}

#[test]
fn times_round_trip() {
    assert_eq!(time::format_ms(0), "1970-01-01T00:00:00.000Z");
    let t = time::parse_rfc3339("2026-12-04T01:06:11.123Z").unwrap();
    assert_eq!(time::format_ms(t), "2026-12-04T01:06:11.123Z");
    assert_eq!(time::parse_rfc3339("2024-02-29"), Some(1_709_164_800_000));
    assert_eq!(time::parse_rfc3339("2024-13-01"), None);
    assert_eq!(time::parse_rfc3339("2024-01-01T10:00:00+02:00"), None);
}
