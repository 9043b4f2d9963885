//! The `iptables-restore` input: pure text from [`Rules`] and, for an update or a removal, from
//! the current `iptables-save -t nat` output (which of our jumps and chains already exist).
//!
//! Rules are written in the form `iptables-save` prints them (the same option order, comments
//! quoted), so what [`crate::show`] reads back is line for line what was rendered.

use crate::{
    CHAIN_INBOUND_REDIRECT, CHAIN_OUTBOUND_REDIRECT, CHAIN_OUTPUT, CHAIN_PREFIX, CHAIN_PREROUTING,
    PortRange, Rules,
};
use std::fmt::Write;

/// `-m multiport` takes at most 15 ports per rule (a range counts as two).
const MULTIPORT_SLOTS: usize = 15;

/// The `iptables-restore --noflush` input that installs `rules` in a network namespace that has
/// none of ours yet.
pub fn render(rules: &Rules) -> String {
    plan_apply(rules, "")
}

/// The input that takes a namespace whose `nat` table is `current` (an `iptables-save` dump) to
/// exactly `rules`: our old jumps deleted, our chains flushed (declaring a chain in a
/// `--noflush` input empties it) or created, chains we no longer use deleted, the rules and
/// jumps added once.
pub(crate) fn plan_apply(rules: &Rules, current: &str) -> String {
    let existing = Existing::read(current);
    let mut chains = Vec::with_capacity(4);
    if rules.capture_inbound {
        chains.extend([CHAIN_PREROUTING, CHAIN_INBOUND_REDIRECT]);
    }
    if rules.capture_outbound {
        chains.extend([CHAIN_OUTPUT, CHAIN_OUTBOUND_REDIRECT]);
    }
    let stale: Vec<&str> = existing
        .chains
        .iter()
        .map(String::as_str)
        .filter(|c| !chains.contains(c))
        .collect();

    let mut out = String::with_capacity(2048);
    out.push_str("# onemesh capture rules (onemesh-proxy init)\n*nat\n");
    for jump in &existing.jumps {
        let _ = writeln!(out, "-D {jump}");
    }
    for chain in chains.iter().chain(&stale) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &stale {
        let _ = writeln!(out, "-X {chain}");
    }
    if rules.capture_inbound {
        inbound(rules, &mut out);
    }
    if rules.capture_outbound {
        outbound(rules, &mut out);
    }
    if rules.capture_inbound {
        rule(
            &mut out,
            "PREROUTING",
            "-p tcp",
            "prerouting",
            &format!("-j {CHAIN_PREROUTING}"),
        );
    }
    if rules.capture_outbound {
        rule(
            &mut out,
            "OUTPUT",
            "-p tcp",
            "output",
            &format!("-j {CHAIN_OUTPUT}"),
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The input that deletes every jump to our chains and the chains themselves; `None` when
/// `current` has nothing of ours.
pub(crate) fn plan_remove(current: &str) -> Option<String> {
    let existing = Existing::read(current);
    if existing.jumps.is_empty() && existing.chains.is_empty() {
        return None;
    }
    let mut out =
        String::from("# onemesh capture rules removed (onemesh-proxy init --remove)\n*nat\n");
    for jump in &existing.jumps {
        let _ = writeln!(out, "-D {jump}");
    }
    for chain in &existing.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &existing.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Our lines of an `iptables-save` dump: chain declarations and every rule that is in, or jumps
/// to, one of our chains.
pub(crate) fn ours(current: &str) -> String {
    nat_lines(current)
        .filter(|l| l.starts_with(&format!(":{CHAIN_PREFIX}")) || mentions_ours(l))
        .fold(String::new(), |mut s, l| {
            s.push_str(l);
            s.push('\n');
            s
        })
}

fn inbound(rules: &Rules, out: &mut String) {
    for dports in multiport_groups(&rules.inbound_skips()) {
        rule(
            out,
            CHAIN_PREROUTING,
            &format!("-p tcp -m multiport --dports {dports}"),
            "skip-inbound-ports",
            "-j RETURN",
        );
    }
    rule(
        out,
        CHAIN_PREROUTING,
        "-p tcp",
        "inbound",
        &format!("-j {CHAIN_INBOUND_REDIRECT}"),
    );
    rule(
        out,
        CHAIN_INBOUND_REDIRECT,
        "-p tcp",
        "redirect-to-inbound-port",
        &format!("-j REDIRECT --to-ports {}", rules.inbound_port),
    );
}

fn outbound(rules: &Rules, out: &mut String) {
    rule(
        out,
        CHAIN_OUTPUT,
        &format!("-m owner --uid-owner {}", rules.proxy_uid),
        "proxy-uid",
        "-j RETURN",
    );
    if let Some(gid) = rules.proxy_gid {
        rule(
            out,
            CHAIN_OUTPUT,
            &format!("-m owner --gid-owner {gid}"),
            "proxy-gid",
            "-j RETURN",
        );
    }
    rule(out, CHAIN_OUTPUT, "-o lo", "loopback", "-j RETURN");
    rule(
        out,
        CHAIN_OUTPUT,
        "-d 127.0.0.0/8",
        "localhost",
        "-j RETURN",
    );
    for dports in multiport_groups(&rules.outbound_skips()) {
        rule(
            out,
            CHAIN_OUTPUT,
            &format!("-p tcp -m multiport --dports {dports}"),
            "skip-outbound-ports",
            "-j RETURN",
        );
    }
    let mut cidrs = rules.skip_outbound_cidrs.clone();
    cidrs.sort_unstable();
    cidrs.dedup();
    for cidr in cidrs {
        rule(
            out,
            CHAIN_OUTPUT,
            &format!("-d {cidr}"),
            "skip-outbound-cidrs",
            "-j RETURN",
        );
    }
    rule(
        out,
        CHAIN_OUTPUT,
        "-p tcp",
        "outbound",
        &format!("-j {CHAIN_OUTBOUND_REDIRECT}"),
    );
    rule(
        out,
        CHAIN_OUTBOUND_REDIRECT,
        "-p tcp",
        "redirect-to-outbound-port",
        &format!("-j REDIRECT --to-ports {}", rules.outbound_port),
    );
}

/// One rule in `iptables-save`'s order: matches, the comment, the target.
fn rule(out: &mut String, chain: &str, matches: &str, what: &str, target: &str) {
    let _ = writeln!(
        out,
        "-A {chain} {matches} -m comment --comment \"onemesh/{what}\" {target}"
    );
}

/// `--dports` values of at most [`MULTIPORT_SLOTS`] slots each.
fn multiport_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for port in ports {
        if used + port.slots() > MULTIPORT_SLOTS {
            groups.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(port.iptables());
        used += port.slots();
    }
    if !current.is_empty() {
        groups.push(current.join(","));
    }
    groups
}

/// What of ours a `nat` dump already holds.
#[derive(Debug, Default)]
struct Existing {
    /// Rules of other chains (`PREROUTING`, `OUTPUT`) that jump to ours, without the `-A `.
    jumps: Vec<String>,
    /// Our chains.
    chains: Vec<String>,
}

impl Existing {
    fn read(current: &str) -> Self {
        let mut existing = Existing::default();
        for line in nat_lines(current) {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    existing.chains.push(name.to_owned());
                }
            } else if let Some(spec) = line.strip_prefix("-A ") {
                let chain = spec.split_whitespace().next().unwrap_or_default();
                if !chain.starts_with(CHAIN_PREFIX) && mentions_ours(line) {
                    existing.jumps.push(spec.to_owned());
                }
            }
        }
        existing
    }
}

/// A rule whose target (`-j`/`-g`) is one of our chains, or which is in one of our chains.
fn mentions_ours(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let in_ours =
        words.first() == Some(&"-A") && words.get(1).is_some_and(|c| c.starts_with(CHAIN_PREFIX));
    let to_ours = words.windows(2).any(|w| {
        matches!(w[0], "-j" | "-g" | "--jump" | "--goto") && w[1].starts_with(CHAIN_PREFIX)
    });
    in_ours || to_ours
}

/// The lines of the `*nat` section of an `iptables-save` dump.
fn nat_lines(dump: &str) -> impl Iterator<Item = &str> {
    dump.lines()
        .map(str::trim)
        .skip_while(|l| *l != "*nat")
        .skip(1)
        .take_while(|l| *l != "COMMIT")
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}
