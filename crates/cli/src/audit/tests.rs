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
