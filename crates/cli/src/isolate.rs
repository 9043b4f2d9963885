//! `onemesh up --isolate`: each workload in a network namespace of its own, reachable only
//! through its proxy.
//!
//! The network of one `up` (all names carry a tag derived from its state directory, so several
//! `up`s on one machine never collide, and a later `up` finds what a killed one left behind):
//!
//! - a bridge `om<tag>br` in the root namespace holding `10.253.<s>.1/24`, the gateway: the
//!   control plane listens there;
//! - per workload `n` (0-based) a namespace `onemesh-up-<tag>-<n>` whose `eth0` (a veth whose
//!   root end `om<tag>v<n>` is a port of the bridge) holds `10.253.<s>.<n + 2>/24`. The
//!   namespaces have no default route: they reach the root namespace's gateway and each other
//!   (bridged, no forwarding in the root namespace) and nothing else;
//! - `<s>` is derived from the tag, skipping /24s already on an interface of this machine.
//!
//! In each namespace the proxy listens on `<address>:4143` (inbound) and `<address>:4191`
//! (admin) and on `127.0.0.1:4140` (outbound); the app on `127.0.0.1:<declared port>`. The pod's
//! init rules ([`onemesh_capture`]) are installed with inbound capture only: any TCP connection
//! arriving at the namespace on a port other than 4143 and 4191 is redirected to the proxy's
//! inbound, which treats it as an unauthenticated caller (default deny). Outbound capture stays
//! off: the proxy runs as the same uid as the app, so the uid exemption could not tell their
//! connections apart; the app reaches the mesh through `HTTP_PROXY`, and there is nothing else
//! to reach from the namespace anyway.
//!
//! `up` (root) enters a namespace with `setns(2)` from a thread of its own to reach an app
//! directly ([`connect`]): the public entries and the readiness checks do so.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The private range the networks of `up --isolate` are taken from: one /24 of it per `up`.
pub const RANGE_PREFIX: [u8; 2] = [10, 253];
/// The proxy's inbound port inside a namespace.
pub const INBOUND_PORT: u16 = onemesh_capture::DEFAULT_INBOUND_PORT;
/// The proxy's outbound port inside a namespace (on its loopback).
pub const OUTBOUND_PORT: u16 = onemesh_capture::DEFAULT_OUTBOUND_PORT;
/// The proxy's admin port inside a namespace.
pub const ADMIN_PORT: u16 = onemesh_capture::DEFAULT_ADMIN_PORT;
/// The proxy's control-only admin port (tap) in a workload's namespace.
pub const CONTROL_ADMIN_PORT: u16 = onemesh_capture::DEFAULT_CONTROL_ADMIN_PORT;
/// The most workloads one /24 holds (.2 to .254).
pub const MAX_WORKLOADS: usize = 253;
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long a direct connection into a namespace may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The network of one isolated `up`, as layout.json records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Net {
    /// Six hex digits from the state directory's path; every name below carries it.
    pub tag: String,
    /// The bridge in the root namespace.
    pub bridge: String,
    /// `10.253.<s>.0/24`.
    pub subnet: String,
    /// The bridge's address: the control plane listens here.
    pub gateway: Ipv4Addr,
}

/// One workload's namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub netns: String,
    /// The root end of its veth (a bridge port).
    pub veth: String,
    pub address: Ipv4Addr,
}

/// The tag of a state directory: 24 bits of FNV-1a over its path, in hex. Stable across
/// onemesh versions (a later `up` must find a killed one's leftovers by it).
pub fn tag(state_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u32 = 0x811c_9dc5;
    for b in state_dir.as_os_str().as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", (h ^ (h >> 24)) & 0x00ff_ffff)
}

pub fn bridge_name(tag: &str) -> String {
    format!("om{tag}br")
}

pub fn netns_prefix(tag: &str) -> String {
    format!("onemesh-up-{tag}-")
}

/// The namespace, veth and address of workload `n`.
pub fn slot(tag: &str, subnet: u8, n: usize) -> Slot {
    Slot {
        netns: format!("{}{n}", netns_prefix(tag)),
        veth: format!("om{tag}v{n}"),
        // n < MAX_WORKLOADS, checked by `plan`.
        address: Ipv4Addr::new(RANGE_PREFIX[0], RANGE_PREFIX[1], subnet, (n + 2) as u8),
    }
}

/// The /24 for `tag`: its first byte, or the next one no interface of this machine is in
/// (`used`: the IPv4 addresses configured here, less our own stale bridge's).
pub fn pick_subnet(tag: &str, used: &[Ipv4Addr]) -> Option<u8> {
    let start = tag
        .get(..2)
        .and_then(|t| u8::from_str_radix(t, 16).ok())
        .unwrap_or(0);
    (0..=255u8).map(|i| start.wrapping_add(i)).find(|s| {
        !used.iter().any(|a| {
            let o = a.octets();
            o[0] == RANGE_PREFIX[0] && o[1] == RANGE_PREFIX[1] && o[2] == *s
        })
    })
}

/// The network for `workloads` workloads of the `up` whose state is in `state_dir`.
pub fn plan(
    state_dir: &Path,
    workloads: usize,
    used: &[Ipv4Addr],
) -> anyhow::Result<(Net, Vec<Slot>)> {
    if workloads > MAX_WORKLOADS {
        anyhow::bail!(
            "--isolate gives each workload an address of one /24: at most {MAX_WORKLOADS} workloads, not {workloads}"
        );
    }
    let tag = tag(state_dir);
    let subnet = pick_subnet(&tag, used).with_context(|| {
        format!(
            "every /24 of {}.{}.0.0/16 is in use on this machine: stop another `onemesh up --isolate` or free one",
            RANGE_PREFIX[0], RANGE_PREFIX[1]
        )
    })?;
    let net = Net {
        bridge: bridge_name(&tag),
        subnet: format!("{}.{}.{subnet}.0/24", RANGE_PREFIX[0], RANGE_PREFIX[1]),
        gateway: Ipv4Addr::new(RANGE_PREFIX[0], RANGE_PREFIX[1], subnet, 1),
        tag: tag.clone(),
    };
    let slots = (0..workloads).map(|n| slot(&tag, subnet, n)).collect();
    Ok((net, slots))
}

/// Refuses `--isolate` without root, saying what to do.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "--isolate needs root (it creates network namespaces, veths and iptables rules): run `sudo onemesh up --isolate`, or run `onemesh up` without it"
        );
    }
    Ok(())
}

/// The network of a running isolated `up`: removed (namespaces, veths, bridge) when dropped.
pub struct Network {
    pub net: Net,
    pub slots: Vec<Slot>,
}

impl Network {
    /// Removes what an earlier `up` on the same state directory left behind, then creates the
    /// bridge, each namespace with its veth and address, and installs the capture rules in each.
    pub fn create(state_dir: &Path, workloads: usize) -> anyhow::Result<Network> {
        let tag = tag(state_dir);
        let left = remove_by_tag(&tag);
        if !left.is_empty() {
            anyhow::bail!(
                "cannot remove {left:?}, left by an earlier `onemesh up --isolate` on this state directory: remove them with `ip netns del` / `ip link del`"
            );
        }
        let (net, slots) = plan(state_dir, workloads, &addresses_in_use()?)?;
        let network = Network { net, slots };
        network.build()?;
        Ok(network)
    }

    fn build(&self) -> anyhow::Result<()> {
        let br = &self.net.bridge;
        ip(&["link", "add", br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.net.gateway),
            "dev",
            br,
        ])?;
        ip(&["link", "set", br, "up"])?;
        for s in &self.slots {
            ip(&["netns", "add", &s.netns])?;
            ip(&[
                "link", "add", &s.veth, "type", "veth", "peer", "name", "eth0", "netns", &s.netns,
            ])?;
            ip(&["link", "set", &s.veth, "master", br, "up"])?;
            ip(&[
                "-n",
                &s.netns,
                "addr",
                "add",
                &format!("{}/24", s.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &s.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &s.netns, "link", "set", "lo", "up"])?;
            install_capture(&s.netns)?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let left = remove_by_tag(&self.net.tag);
        if !left.is_empty() {
            crate::supervise::log(
                "up",
                &format!(
                    "could not remove {left:?}: remove them with `ip netns del` / `ip link del`"
                ),
            );
        }
    }
}

/// The path `setns(2)` opens for a namespace made by `ip netns add`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The pod's init rules in `netns`, inbound capture only (see the module docs for why).
fn install_capture(netns: &str) -> anyhow::Result<()> {
    let path = netns_path(netns);
    let result = std::thread::spawn(move || -> anyhow::Result<()> {
        enter(&path)?;
        let rules = onemesh_capture::Rules {
            capture_outbound: false,
            ..onemesh_capture::Rules::default()
        };
        onemesh_capture::apply(&rules, onemesh_capture::Backend::detect())?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread installing the capture rules panicked"))?;
    result.with_context(|| format!("cannot install the capture rules in network namespace {netns}"))
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {}", path.display()))
}

/// Deletes every namespace and link whose name carries `tag` (ours, or a killed `up`'s on the
/// same state directory), and returns the names still there after (none unless `ip` failed,
/// e.g. without root).
pub fn remove_by_tag(tag: &str) -> Vec<String> {
    let prefix = netns_prefix(tag);
    for ns in netns_names() {
        if ns.starts_with(&prefix) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    let links = format!("om{tag}");
    for link in link_names() {
        if link.starts_with(&links) {
            let _ = ip(&["link", "del", &link]);
        }
    }
    netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .chain(link_names().into_iter().filter(|l| l.starts_with(&links)))
        .collect()
}

/// The names `ip netns list` shows.
pub fn netns_names() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the root namespace's network interfaces.
pub fn link_names() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The IPv4 addresses on this machine's interfaces (`ip -o -4 addr show`).
fn addresses_in_use() -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = ip_output(&["-o", "-4", "addr", "show"])?;
    Ok(parse_addresses(&out))
}

/// The addresses of `ip -o -4 addr show` lines (`2: eth0    inet 10.0.0.2/24 brd ...`).
pub fn parse_addresses(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ip_program())
        .args(args)
        .output()
        .context("cannot run `ip`: --isolate needs iproute2 (apt-get install iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip`, also where Debian puts it (`/usr/sbin` or `/sbin`, not on every `PATH`).
fn ip_program() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// A TCP connection to `addr` made from inside network namespace `netns` (`None`: from here),
/// e.g. to an app's `127.0.0.1:<port>` there. The socket is created by a thread that joined the
/// namespace, and stays in it.
pub async fn connect(
    netns: Option<&str>,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?;
    };
    let path = netns_path(netns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let stream = enter(&path)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|()| std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let _ = tx.send(stream);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the thread connecting in a namespace died"))??;
    tokio::net::TcpStream::from_std(stream)
}

#[cfg(test)]
mod tests;
