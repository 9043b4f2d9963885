//! Unit tests: the rendered rules (order, exemptions, skips), updating and removing against an
//! `iptables-save` dump, port and network lists, and the `init` command line.

use crate::render::{ours, plan_apply, plan_remove};
use crate::*;

fn rule_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("-A ")).collect()
}

fn position(lines: &[&str], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {lines:#?}"))
}

#[test]
fn default_rules_render_in_order_with_the_proxy_exempt_before_any_redirect() {
    let text = render(&Rules::default());
    let expected = "\
# onemesh capture rules (onemesh-proxy init)
*nat
:ONEMESH_PREROUTING - [0:0]
:ONEMESH_INBOUND_REDIRECT - [0:0]
:ONEMESH_OUTPUT - [0:0]
:ONEMESH_OUTBOUND_REDIRECT - [0:0]
-A ONEMESH_PREROUTING -p tcp -m multiport --dports 4143,4190,4191 -m comment --comment \"onemesh/skip-inbound-ports\" -j RETURN
-A ONEMESH_PREROUTING -p tcp -m comment --comment \"onemesh/inbound\" -j ONEMESH_INBOUND_REDIRECT
-A ONEMESH_INBOUND_REDIRECT -p tcp -m comment --comment \"onemesh/redirect-to-inbound-port\" -j REDIRECT --to-ports 4143
-A ONEMESH_OUTPUT -m owner --uid-owner 2102 -m comment --comment \"onemesh/proxy-uid\" -j RETURN
-A ONEMESH_OUTPUT -o lo -m comment --comment \"onemesh/loopback\" -j RETURN
-A ONEMESH_OUTPUT -d 127.0.0.0/8 -m comment --comment \"onemesh/localhost\" -j RETURN
-A ONEMESH_OUTPUT -p tcp -m comment --comment \"onemesh/outbound\" -j ONEMESH_OUTBOUND_REDIRECT
-A ONEMESH_OUTBOUND_REDIRECT -p tcp -m comment --comment \"onemesh/redirect-to-outbound-port\" -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING
-A OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT
COMMIT
";
    assert_eq!(text, expected);

    // In OUTPUT's chain the uid exemption comes first, before the jump to the redirect; the
    // jumps from the built-in chains come last, when our chains are complete.
    let lines = rule_lines(&text);
    let owner = position(&lines, "--uid-owner 2102");
    let to_redirect = position(&lines, "-j ONEMESH_OUTBOUND_REDIRECT");
    assert!(owner < to_redirect);
    assert!(position(&lines, "-A OUTPUT ") > to_redirect);
    assert!(position(&lines, "-A PREROUTING ") > position(&lines, "-j ONEMESH_INBOUND_REDIRECT"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("REDIRECT --to-ports"))
            .count(),
        2
    );
}

#[test]
fn opt_outs_render_as_returns_before_the_redirects() {
    let rules = Rules {
        proxy_uid: 1337,
        proxy_gid: Some(1337),
        inbound_port: 15006,
        outbound_port: 15001,
        admin_port: 15021,
        skip_inbound_ports: parse_ports("22, 8000-8010,22").unwrap(),
        skip_outbound_ports: parse_ports("5432,6379").unwrap(),
        skip_outbound_cidrs: parse_cidrs("169.254.169.254,10.96.0.0/12").unwrap(),
        ..Rules::default()
    };
    let text = render(&rules);
    let lines = rule_lines(&text);
    let inbound_skip = position(&lines, "--dports 22,4190,8000:8010,15006,15021 ");
    assert!(inbound_skip < position(&lines, "-j ONEMESH_INBOUND_REDIRECT"));
    assert!(text.contains("-j REDIRECT --to-ports 15006\n"));
    assert!(text.contains("-j REDIRECT --to-ports 15001\n"));
    assert!(!text.contains("4143") && !text.contains("4140") && !text.contains("2102"));

    let to_redirect = position(&lines, "-j ONEMESH_OUTBOUND_REDIRECT");
    for needle in [
        "--uid-owner 1337",
        "--gid-owner 1337",
        "-o lo",
        "-d 127.0.0.0/8",
        "--dports 5432,6379 ",
        "-d 10.96.0.0/12 ",
        "-d 169.254.169.254/32 ",
    ] {
        let at = position(&lines, needle);
        assert!(at < to_redirect, "{needle} after the redirect");
        assert!(lines[at].ends_with("-j RETURN"), "{}", lines[at]);
    }
    assert!(position(&lines, "--uid-owner") < position(&lines, "--gid-owner"));
    assert!(position(&lines, "--gid-owner") < position(&lines, "-o lo"));
}

#[test]
fn without_inbound_capture_nothing_touches_prerouting() {
    let text = render(&Rules {
        capture_inbound: false,
        ..Rules::default()
    });
    assert!(!text.contains("PREROUTING"), "{text}");
    assert!(!text.contains("INBOUND"), "{text}");
    assert!(
        text.contains("-A OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT")
    );
}

#[test]
fn without_outbound_capture_nothing_touches_output() {
    let text = render(&Rules {
        capture_outbound: false,
        ..Rules::default()
    });
    assert!(!text.contains("OUTPUT"), "{text}");
    assert!(!text.contains("--uid-owner"), "{text}");
    assert!(text.contains(
        "-A PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING"
    ));
    assert!(text.contains("-j REDIRECT --to-ports 4143"), "{text}");
    // Applied over a namespace that held outbound rules, our OUTPUT chains are deleted.
    let before = render(&Rules::default());
    let update = crate::render::plan_apply(
        &Rules {
            capture_outbound: false,
            ..Rules::default()
        },
        &before,
    );
    assert!(update.contains("-X ONEMESH_OUTPUT\n"), "{update}");
    assert!(update.contains("-D OUTPUT -p tcp"), "{update}");
}

#[test]
fn long_port_lists_are_split_into_multiport_rules_of_15_slots() {
    // 14 single ports + the three proxy ports, then ranges (two slots each).
    let list = (1..=14)
        .map(|p| (1000 + p).to_string())
        .collect::<Vec<_>>()
        .join(",")
        + ",2000-2001,3000-3001";
    let rules = Rules {
        skip_inbound_ports: parse_ports(&list).unwrap(),
        ..Rules::default()
    };
    let text = render(&rules);
    let groups: Vec<&str> = rule_lines(&text)
        .into_iter()
        .filter(|l| l.contains("skip-inbound-ports"))
        .collect();
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let slots = |l: &str| -> usize {
        let dports = l
            .split("--dports ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        dports
            .split(',')
            .map(|p| if p.contains(':') { 2 } else { 1 })
            .sum()
    };
    assert!(groups.iter().all(|g| slots(g) <= 15));
    assert_eq!(groups.iter().map(|g| slots(g)).sum::<usize>(), 14 + 3 + 4);
}

/// What `iptables-nft-save -t nat` printed after `apply` ran twice by hand without our
/// clean-up: the jumps doubled.
const DUMP_WITH_DOUBLED_JUMPS: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ONEMESH_INBOUND_REDIRECT - [0:0]
:ONEMESH_OUTBOUND_REDIRECT - [0:0]
:ONEMESH_OUTPUT - [0:0]
:ONEMESH_PREROUTING - [0:0]
-A PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING
-A PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING
-A PREROUTING -p tcp -j KUBE-SERVICES
-A OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT
-A OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT
-A ONEMESH_OUTPUT -o lo -m comment --comment \"onemesh/loopback\" -j RETURN
-A ONEMESH_PREROUTING -p tcp -m comment --comment \"onemesh/inbound\" -j ONEMESH_INBOUND_REDIRECT
COMMIT
# Completed
";

#[test]
fn an_update_deletes_every_old_jump_and_adds_each_once() {
    let text = plan_apply(&Rules::default(), DUMP_WITH_DOUBLED_JUMPS);
    let deletes: Vec<&str> = text.lines().filter(|l| l.starts_with("-D ")).collect();
    assert_eq!(
        deletes,
        [
            "-D PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING",
            "-D PREROUTING -p tcp -m comment --comment \"onemesh/prerouting\" -j ONEMESH_PREROUTING",
            "-D OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT",
            "-D OUTPUT -p tcp -m comment --comment \"onemesh/output\" -j ONEMESH_OUTPUT",
        ]
    );
    // Someone else's rule is left alone; the deletes come before the chains are redeclared.
    assert!(!text.contains("KUBE-SERVICES"));
    let first_decl = text.lines().position(|l| l.starts_with(':')).unwrap();
    let last_delete = text
        .lines()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.starts_with("-D "))
        .unwrap();
    assert!(last_delete < first_decl);
    // After the deletes, the rest is exactly a fresh render.
    let fresh = render(&Rules::default());
    let rest: Vec<&str> = text.lines().filter(|l| !l.starts_with("-D ")).collect();
    assert_eq!(rest, fresh.lines().collect::<Vec<_>>());
}

#[test]
fn turning_inbound_capture_off_deletes_the_inbound_chains() {
    let rules = Rules {
        capture_inbound: false,
        ..Rules::default()
    };
    let text = plan_apply(&rules, DUMP_WITH_DOUBLED_JUMPS);
    for chain in [CHAIN_PREROUTING, CHAIN_INBOUND_REDIRECT] {
        assert!(text.contains(&format!("\n:{chain} - [0:0]\n")), "{text}");
        assert!(text.contains(&format!("\n-X {chain}\n")), "{text}");
    }
    assert!(!text.contains("-A PREROUTING"));
    assert!(!text.contains("-X ONEMESH_OUTPUT"));
}

#[test]
fn removal_deletes_jumps_then_flushes_and_deletes_chains_and_nothing_else() {
    let text = plan_remove(DUMP_WITH_DOUBLED_JUMPS).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.first(), Some(&"*nat"));
    assert_eq!(lines.last(), Some(&"COMMIT"));
    assert_eq!(lines.iter().filter(|l| l.starts_with("-D ")).count(), 4);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("-X ONEMESH_"))
            .count(),
        4
    );
    assert!(!text.contains("KUBE-SERVICES") && !text.contains("-A "));
    let last_delete = lines.iter().rposition(|l| l.starts_with("-D ")).unwrap();
    let first_x = lines.iter().position(|l| l.starts_with("-X ")).unwrap();
    assert!(last_delete < first_x);

    let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
    assert_eq!(plan_remove(clean), None);
    assert_eq!(plan_remove(""), None);
}

#[test]
fn show_keeps_only_our_lines_of_the_nat_table() {
    let dump = format!(
        "*filter\n:ONEMESH_FAKE - [0:0]\n-A INPUT -j ONEMESH_FAKE\nCOMMIT\n{DUMP_WITH_DOUBLED_JUMPS}"
    );
    let shown = ours(&dump);
    assert!(
        !shown.contains("KUBE-SERVICES") && !shown.contains("FAKE"),
        "{shown}"
    );
    assert!(!shown.contains(":PREROUTING"), "{shown}");
    assert_eq!(shown.lines().count(), 4 + 4 + 2, "{shown}");
}

#[test]
fn port_lists_parse_singles_ranges_and_blanks() {
    let ports = parse_ports(" 22,5432 , 8000-8010,65535").unwrap();
    let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["22", "5432", "8000-8010", "65535"]);
    assert!(ports[2].contains(8005) && !ports[2].contains(8011));
    assert_eq!(parse_ports("").unwrap(), []);
    assert_eq!(parse_ports("  ").unwrap(), []);
    assert_eq!(parse_ports("7-7").unwrap(), [PortRange::single(7).unwrap()]);
}

#[test]
fn bad_port_lists_name_the_item_and_say_what_to_write() {
    let err = |s: &str| parse_ports(s).unwrap_err();
    assert!(matches!(err("22,,80"), ParseError::EmptyItem { .. }));
    assert!(matches!(err("22,"), ParseError::EmptyItem { .. }));
    for bad in [
        "0", "65536", "http", "-5", "80-", "1-2-3", "8080/tcp", "1e3",
    ] {
        match err(bad) {
            ParseError::BadPort { item } => assert_eq!(item, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
    match err("9000-8000") {
        e @ ParseError::ReversedRange { .. } => {
            assert!(e.to_string().contains("\"9000-8000\""), "{e}");
            assert!(e.to_string().contains("lower port first"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err("abc").to_string().contains("1 to 65535"));
}

#[test]
fn network_lists_parse_and_refuse_ipv6_host_bits_and_junk() {
    let cidrs = parse_cidrs("10.0.0.0/8, 192.168.1.7,0.0.0.0/0").unwrap();
    let shown: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "0.0.0.0/0"]);
    assert!(cidrs[0].contains("10.255.0.1".parse().unwrap()));
    assert!(!cidrs[0].contains("11.0.0.1".parse().unwrap()));
    assert!(cidrs[2].contains("8.8.8.8".parse().unwrap()));

    let err = |s: &str| parse_cidrs(s).unwrap_err();
    assert!(matches!(err("fd00::/8"), ParseError::Ipv6Cidr { .. }));
    match err("10.1.2.3/8") {
        e @ ParseError::HostBits { .. } => {
            assert!(e.to_string().contains("did you mean 10.0.0.0/8"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    for bad in ["10.0.0.0/33", "10.0.0/8", "example.com", "10.0.0.0/", "/8"] {
        assert!(matches!(err(bad), ParseError::BadCidr { .. }), "{bad}");
    }
    assert!(matches!(err("10.0.0.0/8,,"), ParseError::EmptyItem { .. }));
}

fn parse(args: &[&str]) -> Result<InitCommand, ArgsError> {
    parse_init_args(args.iter().map(|s| s.to_string()))
}

#[test]
fn init_with_no_arguments_is_the_defaults() {
    assert_eq!(parse(&[]), Ok(InitCommand::Run(InitArgs::default())));
    assert_eq!(InitArgs::default().to_args(), Vec::<String>::new());
    assert_eq!(parse(&["--dry-run", "-h"]), Ok(InitCommand::Help));
}

#[test]
fn init_arguments_round_trip_through_to_args() {
    let InitCommand::Run(args) = parse(&[
        "--proxy-uid",
        "1337",
        "--proxy-gid=1338",
        "--inbound-port",
        "15006",
        "--outbound-port=15001",
        "--admin-port",
        "15021",
        "--skip-inbound-ports",
        "22,8000-8010",
        "--skip-outbound-ports=5432",
        "--skip-outbound-cidrs",
        "10.96.0.0/12,169.254.169.254",
        "--no-inbound-capture",
        "--backend",
        "legacy",
        "--remove",
        "--dry-run",
    ])
    .unwrap() else {
        panic!("not a run")
    };
    assert_eq!(args.rules.proxy_uid, 1337);
    assert_eq!(args.rules.proxy_gid, Some(1338));
    assert_eq!(args.rules.inbound_port, 15006);
    assert_eq!(args.rules.outbound_port, 15001);
    assert_eq!(args.rules.admin_port, 15021);
    assert_eq!(
        args.rules.skip_inbound_ports,
        parse_ports("22,8000-8010").unwrap()
    );
    assert_eq!(args.rules.skip_outbound_ports, parse_ports("5432").unwrap());
    assert_eq!(args.rules.skip_outbound_cidrs.len(), 2);
    assert!(!args.rules.capture_inbound);
    assert_eq!(args.backend, BackendChoice::Fixed(Backend::Legacy));
    assert!(args.remove && args.dry_run);

    let written = args.to_args();
    assert_eq!(
        parse(&written.iter().map(String::as_str).collect::<Vec<_>>()),
        Ok(InitCommand::Run(args))
    );
}

#[test]
fn bad_init_arguments_are_refused_with_a_reason() {
    assert_eq!(
        parse(&["--skip-inbound", "22"]),
        Err(ArgsError::Unknown {
            arg: "--skip-inbound".into()
        })
    );
    assert!(matches!(parse(&["extra"]), Err(ArgsError::Unknown { .. })));
    assert_eq!(
        parse(&["--proxy-uid"]),
        Err(ArgsError::MissingValue {
            flag: "--proxy-uid"
        })
    );
    assert_eq!(parse(&["--proxy-uid", "0"]), Err(ArgsError::RootProxyUid));
    assert!(matches!(
        parse(&["--proxy-uid", "-1"]),
        Err(ArgsError::BadNumber { .. })
    ));
    assert!(matches!(
        parse(&["--proxy-uid", "4294967295"]),
        Err(ArgsError::BadNumber { .. })
    ));
    assert!(matches!(
        parse(&["--inbound-port", "0"]),
        Err(ArgsError::BadNumber { .. })
    ));
    assert!(matches!(
        parse(&["--outbound-port", "65536"]),
        Err(ArgsError::BadNumber { .. })
    ));
    assert!(matches!(
        parse(&["--backend", "iptables"]),
        Err(ArgsError::BadBackend { .. })
    ));
    assert!(matches!(
        parse(&["--remove=yes"]),
        Err(ArgsError::UnexpectedValue { .. })
    ));
    let e = parse(&["--skip-outbound-ports", "5432,x"]).unwrap_err();
    assert!(matches!(
        e,
        ArgsError::BadList {
            flag: "--skip-outbound-ports",
            ..
        }
    ));
    assert!(
        e.to_string()
            .starts_with("--skip-outbound-ports: \"x\" is not a port"),
        "{e}"
    );
}

#[test]
fn a_proxy_uid_of_zero_is_never_applied() {
    let rules = Rules {
        proxy_uid: 0,
        ..Rules::default()
    };
    // Refused before any iptables program runs, so this holds without root too.
    assert!(matches!(
        apply(&rules, Backend::Nft),
        Err(CaptureError::RootProxyUid)
    ));
}

#[test]
fn iptables_failures_carry_stderr_and_what_to_do() {
    use std::os::unix::process::ExitStatusExt;
    let failed = |stderr: &str| {
        CaptureError::Failed {
            program: "iptables-nft-restore",
            status: std::process::ExitStatus::from_raw(4 << 8),
            stderr: stderr.to_owned(),
        }
        .to_string()
    };
    let denied = failed(
        "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
    );
    assert!(
        denied.starts_with(
            "iptables-nft-restore failed (exit status: 4): iptables-nft-restore v1.8.9"
        ),
        "{denied}"
    );
    assert!(denied.contains("add NET_ADMIN and NET_RAW"), "{denied}");
    let module = failed(
        "iptables-restore v1.8.9 (legacy): Couldn't load match `owner':No such file or directory",
    );
    assert!(
        module.contains("xt_owner") && module.contains("--backend"),
        "{module}"
    );
    let other = failed("line 3: bad argument");
    assert!(other.contains("--dry-run"), "{other}");
    let missing = CaptureError::NotInstalled {
        program: "iptables-legacy-restore",
    }
    .to_string();
    assert!(
        missing.contains("iptables 1.8") && missing.contains("--backend"),
        "{missing}"
    );
}
