//! Unit tests of the Lease decision.

use super::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn spec(holder: &str, renewed: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(10),
        renew_time: Some(MicroTime(at(renewed))),
        ..LeaseSpec::default()
    }
}

#[test]
fn a_missing_or_empty_lease_is_taken() {
    assert_eq!(decide(None, "a", at(0)), Decision::Acquire);
    assert_eq!(
        decide(Some(&LeaseSpec::default()), "a", at(0)),
        Decision::Acquire
    );
}

#[test]
fn the_holder_renews_and_others_follow_until_it_expires() {
    let s = spec("a", 0);
    assert_eq!(decide(Some(&s), "a", at(5)), Decision::Renew);
    assert_eq!(
        decide(Some(&s), "b", at(9)),
        Decision::Follow { holder: "a".into() }
    );
    assert_eq!(decide(Some(&s), "b", at(10)), Decision::Acquire);
    assert_eq!(decide(Some(&s), "b", at(60)), Decision::Acquire);
}

#[test]
fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
    let settings = LeaseSettings::new("onemesh", "b");
    let mut s = spec("a", 0);
    s.lease_transitions = Some(3);
    s.acquire_time = Some(MicroTime(at(-100)));
    let taken = held(Some(&s), "b", &settings, at(11));
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    assert_eq!(taken.lease_transitions, Some(4));
    assert_eq!(taken.acquire_time, Some(MicroTime(at(11))));
    let renewed = held(Some(&taken), "b", &settings, at(13));
    assert_eq!(renewed.lease_transitions, Some(4));
    assert_eq!(renewed.acquire_time, Some(MicroTime(at(11))));
    assert_eq!(renewed.renew_time, Some(MicroTime(at(13))));
    assert_eq!(renewed.lease_duration_seconds, Some(10));
}
