//! Unit tests of the trust commands' parsing and rendering, and of the expiry judgement in
//! `onemesh check` (on a CA made here, so the dates are real certificates' dates).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onemesh_api::admin::{Certificate, ProxyTrust, RotationProgress, TrustStatus};
use onemesh_control::pki::expiry::{CaPart, Expiry};
use onemesh_identity::TrustAnchor;

use super::*;

#[test]
fn deadlines_parse_with_units() {
    assert_eq!(parse_deadline("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_deadline("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_deadline("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_deadline("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "m", "5d", "-1m", "0s", "1.5m", "99999999999999999999h"] {
        let err = parse_deadline(bad).expect_err(bad);
        assert!(
            err.contains("5m") || err.contains("1s"),
            "{bad}: {err} says what to write"
        );
    }
}

#[test]
fn dates_are_utc_calendar_dates() {
    assert_eq!(date(0), "1970-01-01 00:00 UTC");
    // 2000-02-29 (a leap day of a century leap year) 12:34.
    assert_eq!(date(951_827_640), "2000-02-29 12:34 UTC");
    assert_eq!(date(4_102_444_799), "2099-12-31 23:59 UTC");
    assert_eq!(date(-86_400), "1969-12-31 00:00 UTC");
}

#[test]
fn remaining_time_reads_in_the_largest_units() {
    assert_eq!(remaining(3 * 86_400 + 4 * 3600 + 59), "in 3d 4h");
    assert_eq!(remaining(5 * 3600 + 7 * 60), "in 5h 07m");
    assert_eq!(remaining(42), "in 42s");
    assert_eq!(remaining(-(2 * 3600)), "expired 2h 00m ago");
}

#[test]
fn progress_lines_show_step_counts_and_stragglers() {
    let p = RotationProgress {
        step: "new anchor in the bundle".into(),
        done_proxies: 3,
        total_proxies: 5,
        stragglers: vec!["spiffe://cluster.local/ns/bank/sa/bank @ 127.0.0.1:1".into()],
        done: false,
    };
    let line = progress_line(&p, Duration::from_millis(1500));
    assert!(
        line.starts_with("[   1.5s] new anchor in the bundle"),
        "{line}"
    );
    assert!(line.contains("  3/5\n"), "{line}");
    assert!(
        line.contains("stragglers: spiffe://cluster.local/ns/bank/sa/bank @ 127.0.0.1:1"),
        "{line}"
    );
    let quiet = RotationProgress {
        stragglers: Vec::new(),
        ..p
    };
    assert_eq!(progress_line(&quiet, Duration::ZERO).lines().count(), 1);
}

fn expiry(part: CaPart, left_secs: i64, now: SystemTime) -> Expiry {
    let not_after = if left_secs >= 0 {
        now + Duration::from_secs(left_secs as u64)
    } else {
        now - Duration::from_secs((-left_secs) as u64)
    };
    Expiry {
        part,
        subject: "CN=test".into(),
        sha256: "ab".repeat(32),
        not_after,
    }
}

#[test]
fn expiry_lines_warn_at_60_days_fail_at_7_and_name_the_fix() {
    let now = SystemTime::now();
    let day = 86_400;
    let lines = judge_expiries(
        &[
            expiry(CaPart::Anchor, 61 * day, now),
            expiry(CaPart::Anchor, 59 * day, now),
            expiry(CaPart::Issuer, 6 * day, now),
            expiry(CaPart::Issuer, -day, now),
        ],
        now,
    );
    let marks: Vec<Mark> = lines.iter().map(|l| l.mark).collect();
    assert_eq!(marks, [Mark::Pass, Mark::Warn, Mark::Fail, Mark::Fail]);
    assert!(
        lines[0].what.starts_with("trust anchor expiry"),
        "{lines:?}"
    );
    assert!(
        lines[1].hint.contains("onemesh identity rotate-anchor"),
        "{lines:?}"
    );
    assert!(lines[2].what.starts_with("issuer expiry"), "{lines:?}");
    assert!(
        lines[2].hint.contains("onemesh identity rotate-issuer"),
        "{lines:?}"
    );
    assert!(lines[3].what.contains("expired 1d 0h ago"), "{lines:?}");
}

#[test]
fn expiry_checks_read_the_ca_files_of_the_state_directory() {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-cli-expiry-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // An anchor of 30 days (a warning) signing an issuer of 3 days (a failure).
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(30 * 86_400)).unwrap();
    let issuer = anchor
        .issue_issuer(Duration::from_secs(3 * 86_400))
        .unwrap();
    std::fs::write(dir.join(TRUST_ANCHORS_FILE), anchor.cert_pem()).unwrap();
    std::fs::write(
        dir.join(onemesh_control::pki::ISSUER_CERT_FILE),
        issuer.chain_pem(),
    )
    .unwrap();
    let lines = expiry_checks(&dir, SystemTime::now());
    let marks: Vec<(Mark, bool)> = lines
        .iter()
        .map(|l| (l.mark, l.what.starts_with("issuer")))
        .collect();
    // Soonest first: the issuer, then the anchor.
    assert_eq!(
        marks,
        [(Mark::Fail, true), (Mark::Warn, false)],
        "{lines:?}"
    );

    // Without CA files the check fails and says where it looked.
    std::fs::remove_file(dir.join(TRUST_ANCHORS_FILE)).unwrap();
    let lines = expiry_checks(&dir, SystemTime::now());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].mark, Mark::Fail);
    assert!(
        lines[0].hint.contains(&dir.display().to_string()),
        "{lines:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cert(subject: &str, sha: &str, after: i64) -> Certificate {
    Certificate {
        subject: subject.into(),
        id: String::new(),
        serial: "0a0b".into(),
        sha256: sha.into(),
        not_before_unix_secs: 0,
        not_after_unix_secs: after,
    }
}

#[test]
fn trust_renders_as_tables_and_json() {
    let now = 1_000_000;
    let status = TrustStatus {
        anchors: vec![cert("CN=anchor", &"11".repeat(32), now + 400 * 86_400)],
        issuer: Some(cert("CN=issuer", &"22".repeat(32), now + 30 * 86_400)),
        proxies: vec![ProxyTrust {
            id: "spiffe://cluster.local/ns/bank/sa/bank".into(),
            addr: "127.0.0.1:5000".into(),
            leaf: Some(Certificate {
                id: "spiffe://cluster.local/ns/bank/sa/bank".into(),
                ..cert("", "33", now + 3600)
            }),
            current_issuer: true,
            current_bundle: false,
        }],
        revoked: vec!["spiffe://cluster.local/ns/x/sa/y".into()],
        rotation: String::new(),
    };
    let text = render_trust(&status, now, false);
    assert!(text.contains("anchor  CN=anchor"), "{text}");
    assert!(text.contains("1111111111111111"), "{text}");
    assert!(
        !text.contains(&"11".repeat(32)),
        "short digest only: {text}"
    );
    assert!(text.contains("in 30d 0h"), "{text}");
    assert!(
        text.contains("spiffe://cluster.local/ns/bank/sa/bank  0a0b"),
        "{text}"
    );
    assert!(text.contains("in 1h 00m  yes"), "{text}");
    assert!(text.contains("rotation: none under way"), "{text}");
    assert!(
        text.contains("revoked:  spiffe://cluster.local/ns/x/sa/y"),
        "{text}"
    );
    let wide = render_trust(&status, now, true);
    assert!(wide.contains(&"11".repeat(32)), "{wide}");
    assert!(wide.contains("127.0.0.1:5000"), "{wide}");

    let json = serde_json::to_value(TrustView::from(&status)).unwrap();
    assert_eq!(json["anchors"][0]["subject"], "CN=anchor");
    assert_eq!(json["issuer"]["not_after_unix_secs"], now + 30 * 86_400);
    assert_eq!(json["proxies"][0]["current_bundle"], false);
    assert_eq!(
        json["proxies"][0]["leaf"]["id"],
        "spiffe://cluster.local/ns/bank/sa/bank"
    );
    assert_eq!(json["rotation"], serde_json::Value::Null);
}

#[test]
fn workloads_whose_proxy_is_not_connected_are_named() {
    use crate::layout::{Control, Layout, Workload};
    let workload = |ns: &str| Workload {
        namespace: ns.into(),
        name: ns.into(),
        identity: format!("spiffe://cluster.local/ns/{ns}/sa/{ns}"),
        app_ports: Default::default(),
        inbound: String::new(),
        outbound: String::new(),
        admin: String::new(),
        control_admin: String::new(),
        app_pid: None,
        proxy_pid: None,
        restarts: 0,
        netns: None,
        address: None,
    };
    let layout = Layout {
        pid: 1,
        config: "mesh.yaml".into(),
        trust_domain: "cluster.local".into(),
        control: Control {
            identity: String::new(),
            destination: String::new(),
            policy: String::new(),
            id: String::new(),
            pid: None,
        },
        dashboard: String::new(),
        entries: Default::default(),
        workloads: vec![workload("bank"), workload("card")],
        isolation: None,
    };
    let status = TrustStatus {
        proxies: vec![ProxyTrust {
            id: "spiffe://cluster.local/ns/card/sa/card".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(not_connected(&layout, &status), ["bank/bank"]);
    assert!(not_connected(&layout, &TrustStatus::default()).len() == 2);
}
