use super::*;

#[test]
fn times_are_dates_or_ages() {
    let now = 1_780_000_000_000;
    assert_eq!(parse_time("2h", now).unwrap(), now - 7_200_000);
    assert_eq!(parse_time("7d", now).unwrap(), now - 7 * 86_400_000);
    assert_eq!(
        parse_time("2026-12-04T10:00:00Z", now).unwrap(),
        time::parse_rfc3339("2026-12-04T10:00:00Z").unwrap()
    );
    let err = parse_time("yesterday", now).unwrap_err().to_string();
    assert!(err.contains("15m"), "{err}");
}

#[test]
fn from_names_an_id_a_workload_or_nobody() {
    let none = Path::new("/nonexistent-onemesh-state");
    assert_eq!(callers(none, "unauthenticated").unwrap(), [""]);
    assert_eq!(
        callers(none, "spiffe://x.test/ns/a/sa/b").unwrap(),
        ["spiffe://x.test/ns/a/sa/b"]
    );
    assert_eq!(
        callers(none, "pg/pg").unwrap(),
        ["spiffe://cluster.local/ns/pg/sa/pg"]
    );
    assert!(callers(none, "pg").is_err());
}

/// A sealed log of 4 records in `<dir>/audit` and its anchors in `<dir>/trust-anchors.pem`.
fn sealed_log(dir: &Path) {
    use onemesh_audit::{Mode, Record, Sealer, Writer, WriterSettings};
    use onemesh_identity::{
        CredentialStore, DEFAULT_LEAF_LIFETIME, DEFAULT_TRUST_DOMAIN, SpiffeId, TrustAnchor,
        WorkloadKey,
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, Duration::from_secs(86_400)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(86_400)).unwrap();
    std::fs::write(dir.join(TRUST_ANCHORS_FILE), anchor.bundle().to_pem()).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/onemesh/sa/control"
        .parse()
        .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), DEFAULT_LEAF_LIFETIME, |_| true)
        .unwrap();
    let store = CredentialStore::new(id, key, issued, anchor.bundle()).unwrap();
    let sealer = Sealer::from_credentials(&store).unwrap();
    let (mut w, _) = Writer::open(&dir.join("audit"), WriterSettings::default(), sealer).unwrap();
    let now = now_ms();
    let records = (0..4)
        .map(|i| Record {
            time_ms: now,
            until_ms: now,
            caller: String::new(),
            namespace: "card".into(),
            workload: "card".into(),
            port: 8080,
            kind: "http".into(),
            method: "GET".into(),
            path: format!("/v1/{i}"),
            decision: Decision::Deny,
            policy: "card-allow-pg".into(),
            mode: Mode::Enforce,
            count: 1,
            instance: String::new(),
            batch: 0,
        })
        .collect();
    w.append("i-1", 1, records, now).unwrap();
    w.seal(now).unwrap();
}

#[test]
fn verify_succeeds_then_fails_naming_the_changed_entry() {
    let dir = std::env::temp_dir().join(format!("onemesh-cli-audit-{}", std::process::id()));
    sealed_log(&dir);
    assert!(
        run(
            &dir,
            AuditCommand::Verify {
                dir: None,
                trust_anchors: None
            },
            Output::Json
        )
        .unwrap()
    );
    let file = dir.join("audit").join("audit-000000000001.log");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("/v1/2", "/v1/9")).unwrap();
    assert!(
        !run(
            &dir,
            AuditCommand::Verify {
                dir: None,
                trust_anchors: None
            },
            Output::Table
        )
        .unwrap()
    );
    let report = verify_dir(
        &dir.join("audit"),
        &Trust::new(
            TrustBundle::from_pem(&std::fs::read_to_string(dir.join(TRUST_ANCHORS_FILE)).unwrap())
                .unwrap(),
        ),
    )
    .unwrap();
    let text = summary(Path::new("audit"), &report);
    assert!(
        text.starts_with("FAILED: audit/audit-000000000001.log:4: entry 4 was changed"),
        "{text}"
    );
    // No anchors: a usage problem, said so.
    let err = run(
        &dir,
        AuditCommand::Verify {
            dir: None,
            trust_anchors: Some(dir.join("nope.pem")),
        },
        Output::Table,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--trust-anchors"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
