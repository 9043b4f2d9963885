//! Unit tests of the split stage: shares follow weights, zero weights are never chosen, the
//! route's own service is no detour.

use super::*;

fn backends(list: &[(&str, u32)]) -> Vec<Backend> {
    list.iter()
        .map(|(name, weight)| Backend {
            name: (*name).into(),
            weight: *weight,
        })
        .collect()
}

fn service(name: &str) -> Service {
    Service {
        name: name.into(),
        namespace: "bank".into(),
        port: 80,
        endpoints: Vec::new(),
        routes: Vec::new(),
        breaker: None,
    }
}

#[test]
fn shares_follow_weights() {
    let list = backends(&[("bank.bank", 90), ("bank-v2.bank", 10)]);
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 100_000;
    let v2 = (0..n)
        .filter(|_| pick(&list, rng.u64(..)).is_some_and(|b| &*b.name == "bank-v2.bank"))
        .count();
    let share = v2 as f64 / n as f64;
    assert!((0.095..0.105).contains(&share), "bank-v2 got {share}");
}

#[test]
fn the_ends_of_the_draw_land_on_the_first_and_last_positive_weights() {
    let list = backends(&[("a.x", 0), ("b.x", 1), ("c.x", 3), ("d.x", 0)]);
    assert_eq!(&*pick(&list, 0).unwrap().name, "b.x");
    assert_eq!(&*pick(&list, u64::MAX / 4 - 1).unwrap().name, "b.x");
    assert_eq!(&*pick(&list, u64::MAX / 4 + 1).unwrap().name, "c.x");
    assert_eq!(&*pick(&list, u64::MAX).unwrap().name, "c.x");
}

#[test]
fn all_zero_or_empty_chooses_nothing() {
    assert!(pick(&backends(&[("a.x", 0), ("b.x", 0)]), 12345).is_none());
    assert!(pick(&[], 0).is_none());
}

#[test]
fn the_route_s_own_service_is_no_detour() {
    let list = backends(&[("bank.bank", 1)]);
    assert!(backend(&list, &service("bank.bank"), 99).is_none());
    let list = backends(&[("bank-v2.bank", 1)]);
    let chosen = backend(&list, &service("bank.bank"), 99).unwrap();
    assert_eq!(
        target(chosen, 8080),
        Target::Name {
            host: "bank-v2.bank".into(),
            port: 8080
        }
    );
}
