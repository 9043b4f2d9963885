//! Unit tests of the decision log: aggregation by minute, the denial rate then aggregation,
//! masking, the key cap. (Shipping against a real `Audit` server is in `control/tests.rs`.)

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

const T0: i64 = 1_800_000_000_000; // a minute boundary

fn log(rate: u32) -> AuditLog {
    AuditLog::new(rate, Arc::new(Metrics::new()))
}

fn key(caller: &str, policy: &str) -> Key {
    Key {
        caller: Some(caller.into()),
        port: 8080,
        kind: Kind::Http,
        verdict: Verdict::Allow,
        policy: policy.into(),
        mode: Mode::Enforce,
    }
}

fn outcome(log: &AuditLog, outcome: &'static str) -> u64 {
    log.shared
        .metrics
        .audit_decisions_total
        .get_or_create(&OutcomeLabels { outcome })
        .get()
}

#[test]
fn allowed_decisions_are_counted_per_key_and_minute() {
    let log = log(100);
    let mut c = log.collector(T0);
    let pg = log.slot(key("spiffe://cluster.local/ns/pg/sa/pg", "allow-pg"));
    let same = log.slot(key("spiffe://cluster.local/ns/pg/sa/pg", "allow-pg"));
    assert!(Arc::ptr_eq(&pg, &same), "one counter per key");
    let other = log.slot(key("spiffe://cluster.local/ns/bank/sa/bank", "allow-pg"));
    for _ in 0..3 {
        pg.hit();
    }
    other.hit();
    // within the minute nothing is due
    assert!(c.collect(T0 + 1_000, false).is_empty());
    pg.hit();
    assert!(c.collect(T0 + 59_000, false).is_empty());
    pg.hit();
    // the next minute: the first minute's aggregates are due (the hit collected at 61 s is
    // counted in the minute its interval began in, to the second)
    let summary = |records: &mut Vec<Record>| {
        records.sort_by(|a, b| a.caller.cmp(&b.caller));
        records
            .iter()
            .map(|r| {
                (
                    r.caller.clone(),
                    r.count,
                    r.time_unix_ms - T0,
                    r.until_unix_ms - T0,
                )
            })
            .collect::<Vec<_>>()
    };
    let mut records = c.collect(T0 + 61_000, false);
    assert_eq!(
        summary(&mut records),
        [
            (
                "spiffe://cluster.local/ns/bank/sa/bank".to_string(),
                1,
                0,
                1_000
            ),
            (
                "spiffe://cluster.local/ns/pg/sa/pg".to_string(),
                5,
                0,
                61_000
            ),
        ]
    );
    pg.hit();
    let mut later = c.collect(T0 + 121_000, false);
    assert_eq!(
        summary(&mut later),
        [(
            "spiffe://cluster.local/ns/pg/sa/pg".to_string(),
            1,
            61_000,
            121_000
        )]
    );
    let r = &records[1];
    assert_eq!(
        (r.port, r.kind.as_str(), r.policy.as_str()),
        (8080, "http", "allow-pg")
    );
    assert_eq!(
        (r.decision(), r.mode()),
        (pb::Decision::Allow, pb::Mode::Enforce)
    );
    assert!(r.method.is_empty() && r.path.is_empty());
    assert_eq!(outcome(&log, "aggregated"), 7);
}

#[test]
fn a_counter_no_connection_holds_is_dropped_after_its_counts_are_taken() {
    let log = log(100);
    let mut c = log.collector(T0);
    let slot = log.slot(key("a", "p"));
    slot.hit();
    drop(slot);
    let _ = c.collect(T0 + 1_000, false);
    assert!(log.shared.slots.lock().unwrap().is_empty());
    let records = c.collect(T0 + 60_000, false);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].count, 1, "the last hit before the drop is kept");
}

fn denial<'a>(caller: &'a Arc<str>, policy: &'a Arc<str>, path: &'a str) -> Denial<'a> {
    Denial {
        caller: Some(caller),
        port: 8080,
        request: Some((&http::Method::POST, path)),
        verdict: Verdict::Deny,
        policy,
        mode: Mode::Enforce,
    }
}

#[test]
fn denials_are_recorded_one_by_one_up_to_the_rate_then_aggregated() {
    let log = log(10); // burst 20, then 10/s
    let mut c = log.collector(T0);
    let caller: Arc<str> = "spiffe://cluster.local/ns/mallory/sa/m".into();
    let policy: Arc<str> = "allow-pg".into();
    for _ in 0..50 {
        log.deny(denial(&caller, &policy, "/v1/pay"), T0 + 10);
    }
    let records = c.collect(T0 + 20, false);
    assert_eq!(records.len(), 20, "the burst, one by one");
    let r = &records[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.count),
        ("POST", "/v1/pay", 1)
    );
    assert_eq!(
        (r.decision(), r.time_unix_ms),
        (pb::Decision::Deny, T0 + 10)
    );
    // half a second later 5 more tokens
    for _ in 0..10 {
        log.deny(denial(&caller, &policy, "/v1/pay"), T0 + 510);
    }
    assert_eq!(c.collect(T0 + 600, false).len(), 5);
    // the 35 beyond the rate: one aggregate of that minute, shipped once the minute ends
    let records = c.collect(T0 + 60_000, false);
    assert_eq!(records.len(), 1);
    let agg = &records[0];
    assert_eq!(agg.count, 35);
    assert_eq!((agg.time_unix_ms, agg.until_unix_ms), (T0 + 10, T0 + 510));
    assert!(agg.path.is_empty(), "an aggregate has no path");
    assert_eq!(agg.caller, "spiffe://cluster.local/ns/mallory/sa/m");
    assert_eq!(
        (outcome(&log, "individual"), outcome(&log, "aggregated")),
        (25, 35)
    );
}

#[test]
fn a_rate_of_zero_aggregates_every_denial_and_would_deny_is_kept_apart() {
    let log = log(0);
    let mut c = log.collector(T0);
    let caller: Arc<str> = "c".into();
    let policy: Arc<str> = "p".into();
    log.deny(denial(&caller, &policy, "/"), T0);
    let mut would = denial(&caller, &policy, "/");
    would.verdict = Verdict::WouldDeny;
    would.mode = Mode::Audit;
    log.deny(would, T0 + 5);
    log.deny(would, T0 + 6);
    let mut records = c.collect(T0, true);
    records.sort_by_key(|r| r.count);
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].decision(), records[0].count),
        (pb::Decision::Deny, 1)
    );
    assert_eq!(
        (records[1].decision(), records[1].mode(), records[1].count),
        (pb::Decision::WouldDeny, pb::Mode::Audit, 2)
    );
}

#[test]
fn paths_are_masked_like_tap_and_opaque_denials_have_none() {
    let log = log(100);
    let mut c = log.collector(T0);
    let caller: Arc<str> = "c".into();
    let policy: Arc<str> = "p".into();
    log.deny(
        denial(&caller, &policy, "/v1/cards/4111111111111111/charge"),
        T0,
    );
    let mut tcp = denial(&caller, &policy, "");
    tcp.request = None;
    tcp.caller = None;
    log.deny(tcp, T0);
    let records = c.collect(T0 + 1, false);
    assert_eq!(records[0].path, "/v1/cards/************1111/charge");
    assert!(!records[0].path.contains("4111111111111111"));
    assert_eq!(
        (records[1].kind.as_str(), records[1].method.as_str()),
        ("tcp", "")
    );
    assert_eq!(records[1].caller, "", "unauthenticated");
}

#[test]
fn keys_beyond_the_cap_fold_into_overflow_aggregates() {
    let log = log(0);
    let mut c = log.collector(T0);
    let policy: Arc<str> = "p".into();
    for i in 0..MAX_KEYS + 5 {
        let caller: Arc<str> = format!("caller-{i}").into();
        log.deny(denial(&caller, &policy, "/"), T0);
        log.slot(key(&caller, "p")).hit();
    }
    assert_eq!(outcome(&log, "overflow"), 5, "denials beyond the cap");
    let records = c.collect(T0 + 60_000, false);
    let overflow: Vec<&Record> = records
        .iter()
        .filter(|r| r.caller == OVERFLOW_CALLER)
        .collect();
    assert_eq!(overflow.len(), 2, "one for denials, one for allowed");
    assert!(overflow.iter().all(|r| r.count == 5));
    assert_eq!(records.len(), 2 * MAX_KEYS + 2);
    assert_eq!(outcome(&log, "overflow"), 10);
}

#[test]
fn a_full_queue_folds_into_aggregates_and_never_blocks() {
    let log = log(100_000);
    let mut c = log.collector(T0);
    let caller: Arc<str> = "c".into();
    let policy: Arc<str> = "p".into();
    for i in 0..MAX_QUEUE_RECORDS + 3 {
        log.deny(denial(&caller, &policy, "/"), T0 + i as i64);
    }
    assert_eq!(
        c.waiting(),
        MAX_QUEUE_RECORDS + 1,
        "the queue and one aggregate"
    );
    let records = c.collect(T0 + 120_000, false);
    assert_eq!(records.len(), MAX_QUEUE_RECORDS + 1);
    assert_eq!(records.last().unwrap().count, 3);
}

/// A control plane that never acknowledges.
struct Down(Arc<AtomicU64>);

impl AuditSink for Down {
    fn append(&self, _: &AppendRequest) -> BoxFuture<'static, Result<(), ShipError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(ShipError::Status(tonic::Status::unavailable("down"))) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_draining_proxy_stops_retrying_after_the_final_flush() {
    let log = log(100);
    let attempts = Arc::new(AtomicU64::new(0));
    let drain = crate::drain::Controller::new();
    let who = Shipper {
        namespace: "pg".into(),
        workload: "pg".into(),
        instance: "i".into(),
    };
    let shipping = tokio::spawn(ship(
        log.collector(unix_ms()),
        Arc::new(Down(attempts.clone())),
        who,
        drain.handle(),
    ));
    let caller: Arc<str> = "c".into();
    let policy: Arc<str> = "p".into();
    log.deny(denial(&caller, &policy, "/"), unix_ms());
    // retried, and retried: the batch is never given up while the proxy runs
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = attempts.load(Ordering::SeqCst);
    assert!(before >= 5, "{before} attempts");
    let started = tokio::time::Instant::now();
    drain.drain().await;
    shipping.await.unwrap();
    assert!(
        started.elapsed() <= FINAL_FLUSH * 2,
        "{:?}",
        started.elapsed()
    );
    assert!(log.shared.metrics.audit_ship_failures_total.get() >= before);
}

/// A control plane that refuses the first batch as malformed and takes the others.
struct RefusesFirst {
    attempts: Arc<AtomicU64>,
    taken: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl AuditSink for RefusesFirst {
    fn append(&self, batch: &AppendRequest) -> BoxFuture<'static, Result<(), ShipError>> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            let refused = tonic::Status::invalid_argument("record 0: count must be at least 1");
            return Box::pin(async { Err(ShipError::Status(refused)) });
        }
        if let Ok(mut taken) = self.taken.lock() {
            taken.push(batch.batch);
        }
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_refused_as_malformed_is_dropped_and_does_not_hold_back_the_next() {
    let log = log(100);
    let attempts = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
    let drain = crate::drain::Controller::new();
    let who = Shipper {
        namespace: "pg".into(),
        workload: "pg".into(),
        instance: "i".into(),
    };
    let shipping = tokio::spawn(ship(
        log.collector(unix_ms()),
        Arc::new(RefusesFirst {
            attempts: attempts.clone(),
            taken: taken.clone(),
        }),
        who,
        drain.handle(),
    ));
    let caller: Arc<str> = "c".into();
    let policy: Arc<str> = "p".into();
    log.deny(denial(&caller, &policy, "/first"), unix_ms());
    tokio::time::sleep(Duration::from_secs(5)).await;
    log.deny(denial(&caller, &policy, "/second"), unix_ms());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the refused batch is not sent again"
    );
    assert_eq!(*taken.lock().unwrap(), vec![2], "the next batch went");
    assert_eq!(log.shared.metrics.audit_rejected_records_total.get(), 1);
    drain.drain().await;
    shipping.await.unwrap();
}
