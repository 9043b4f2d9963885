//! Unit tests of the connection caps.

use std::net::Ipv6Addr;

use super::*;

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 4,
        max_connections_per_ip: 3,
        max_handshakes: 3,
        max_handshakes_per_ip: 2,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn handshakes_per_address_are_capped_and_freed_when_done() {
    let gate = Gate::new("test", limits());
    let a = ip("127.0.0.2");
    let mut first = gate.admit(a).unwrap();
    let _second = gate.admit(a).unwrap();
    assert_eq!(gate.admit(a).err(), Some(Refusal::HandshakesFromAddress));
    // Another address is not starved by the first one's handshakes.
    let _other = gate.admit(ip("127.0.0.1")).unwrap();
    // The listener-wide handshake cap.
    assert_eq!(gate.admit(ip("127.0.0.3")).err(), Some(Refusal::Handshakes));

    first.handshake_done();
    first.handshake_done(); // idempotent
    let third = gate.admit(a).unwrap();
    let stats = gate.stats();
    assert_eq!((stats.open, stats.handshakes, stats.addresses), (4, 3, 2));
    assert_eq!(stats.refused, [0, 0, 1, 1]);
    assert_eq!(stats.refused_total(), 2);
    drop(third);
    assert_eq!(gate.stats().open, 3);
}

#[test]
fn connections_are_capped_per_address_and_per_listener() {
    let gate = Gate::new("test", limits());
    let a = ip("10.0.0.1");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = gate.admit(a).unwrap();
        c.handshake_done();
        held.push(c);
    }
    assert_eq!(gate.admit(a).err(), Some(Refusal::ConnectionsFromAddress));
    let mut b = gate.admit(ip("10.0.0.2")).unwrap();
    b.handshake_done();
    assert_eq!(gate.admit(ip("10.0.0.3")).err(), Some(Refusal::Connections));
    drop(held);
    drop(b);
    let stats = gate.stats();
    assert_eq!((stats.open, stats.handshakes, stats.addresses), (0, 0, 0));
    assert_eq!(stats.refused, [1, 1, 0, 0]);
}

#[test]
fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
    let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
    let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
    assert_eq!(address_key(a.into()), address_key(b.into()));
    assert_ne!(address_key(a.into()), address_key(ip("2001:db8:1:3::1")));
    assert_eq!(address_key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
}
