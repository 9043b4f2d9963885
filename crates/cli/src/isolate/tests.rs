use super::*;

#[test]
fn the_tag_is_six_hex_digits_stable_per_state_dir() {
    let a = tag(Path::new("/home/kim/shop/.onemesh"));
    assert_eq!(a.len(), 6);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    // Stable: a later `up` (even of another onemesh version) must find a killed one's leftovers.
    assert_eq!(a, tag(Path::new("/home/kim/shop/.onemesh")));
    // Pinned: FNV-1a of the path, folded to 24 bits.
    assert_eq!(tag(Path::new("/tmp/iso1/state")), "1ca10b");
    assert_ne!(a, tag(Path::new("/home/kim/shop/.onemesh2")));
    assert_ne!(a, tag(Path::new("/home/lee/shop/.onemesh")));
}

#[test]
fn interface_names_fit_the_kernel_limit_and_carry_the_tag() {
    let t = tag(Path::new("/tmp/x"));
    assert!(bridge_name(&t).len() <= 15, "{}", bridge_name(&t));
    for n in [0, 9, 99, MAX_WORKLOADS - 1] {
        let s = slot(&t, 7, n);
        assert!(s.veth.len() <= 15, "{}", s.veth);
        assert!(s.veth.starts_with(&format!("om{t}")));
        assert!(s.netns.starts_with(&netns_prefix(&t)));
        assert_eq!(s.netns, format!("onemesh-up-{t}-{n}"));
    }
    // Removal by tag matches the bridge and the veths, and no other `up`'s.
    assert!(bridge_name(&t).starts_with(&format!("om{t}")));
    let other = tag(Path::new("/tmp/y"));
    assert!(!bridge_name(&other).starts_with(&format!("om{t}")));
}

#[test]
fn addresses_are_one_per_workload_in_the_subnet_after_the_gateway() {
    let (net, slots) = plan(Path::new("/srv/mesh/state"), 6, &[]).unwrap();
    let s = u8::from_str_radix(&net.tag[..2], 16).unwrap();
    assert_eq!(net.gateway, Ipv4Addr::new(10, 253, s, 1));
    assert_eq!(net.subnet, format!("10.253.{s}.0/24"));
    let addrs: Vec<Ipv4Addr> = slots.iter().map(|x| x.address).collect();
    assert_eq!(
        addrs,
        (2..8)
            .map(|h| Ipv4Addr::new(10, 253, s, h))
            .collect::<Vec<_>>()
    );
    let mut names: Vec<&str> = slots.iter().map(|x| x.netns.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 6);
    // The largest mesh one /24 holds: .2 to .254.
    let (_, slots) = plan(Path::new("/srv/mesh/state"), MAX_WORKLOADS, &[]).unwrap();
    assert_eq!(slots.last().unwrap().address.octets()[3], 254);
}

#[test]
fn too_many_workloads_are_refused_with_the_limit() {
    let err = plan(Path::new("/s"), MAX_WORKLOADS + 1, &[]).unwrap_err();
    assert!(format!("{err}").contains("at most 253"), "{err}");
}

#[test]
fn a_subnet_in_use_on_this_machine_is_skipped() {
    let t = "2a0000";
    assert_eq!(pick_subnet(t, &[]), Some(0x2a));
    // Another `up --isolate` (or anything else) holds 10.253.42.0/24 and 10.253.43.0/24.
    let used = [
        Ipv4Addr::new(10, 253, 42, 1),
        Ipv4Addr::new(10, 253, 43, 9),
        Ipv4Addr::new(10, 254, 44, 1),
        Ipv4Addr::new(192, 168, 44, 1),
    ];
    assert_eq!(pick_subnet(t, &used), Some(44));
    // Wraps around after 255.
    assert_eq!(
        pick_subnet("ff0000", &[Ipv4Addr::new(10, 253, 255, 1)]),
        Some(0)
    );
    // Every /24 taken: none, and `plan` says what to do.
    let all: Vec<Ipv4Addr> = (0..=255u8).map(|s| Ipv4Addr::new(10, 253, s, 1)).collect();
    assert_eq!(pick_subnet(t, &all), None);
    let err = plan(Path::new("/s"), 1, &all).unwrap_err();
    assert!(format!("{err}").contains("in use"), "{err}");
}

#[test]
fn addresses_are_read_from_ip_addr_show() {
    let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n\
                9: om1ca10bbr    inet 10.253.28.1/24 scope global om1ca10bbr\\       valid_lft forever\n\
                garbage\n";
    assert_eq!(
        parse_addresses(text),
        vec![
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv4Addr::new(10, 253, 28, 1)
        ]
    );
}
