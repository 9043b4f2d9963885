//! The init step of a meshed pod: the iptables `nat` rules that send the pod's TCP through its
//! proxy, as `onemesh-proxy init` installs them (a pod's init container, or `onemesh up --isolate`
//! in a workload's network namespace).
//!
//! What the rules do (chains of our own, jumped to from `PREROUTING` and `OUTPUT`, so that
//! `iptables-save` shows what is ours and removing them touches nothing else):
//!
//! - **Inbound** (`ONEMESH_PREROUTING` → `ONEMESH_INBOUND_REDIRECT`): TCP arriving at the pod is
//!   redirected to the proxy's inbound port (4143), except the skipped inbound ports, which always
//!   include the proxy's own inbound and admin ports (peers' proxies and probes reach those
//!   directly).
//! - **Outbound** (`ONEMESH_OUTPUT` → `ONEMESH_OUTBOUND_REDIRECT`), first match wins: the proxy's
//!   own traffic (`-m owner --uid-owner 2102`, and the gid if one is set) returns before anything
//!   else, so the proxy's connections are never looped back to itself; traffic leaving through
//!   `lo` returns (as linkerd2-proxy-init does: an app calling its own pod IP reaches itself
//!   directly, the kernel routes that over `lo`, and those packets skip `PREROUTING`'s nat too);
//!   `127.0.0.0/8` returns (already covered by `lo`, kept explicit); skipped ports and networks
//!   return; all other TCP is redirected to the outbound port (4140), where the proxy reads the
//!   original destination with `SO_ORIGINAL_DST`.
//!
//! Every rule carries a `-m comment --comment "onemesh/<what>"`. [`render`] is the pure text an
//! `iptables-restore` reads for a fresh network namespace; [`apply`] reads the current `nat`
//! table first and feeds `<backend>-restore --noflush` one input that deletes our old jumps,
//! flushes (or creates) our chains and adds everything back, so it is atomic and idempotent:
//! running it twice leaves one copy of each rule. [`remove`] deletes our jumps and chains;
//! [`show`] returns our lines of `iptables-save`. Both iptables backends work ([`Backend`]);
//! [`Backend::detect`] picks one.
//!
//! What it deliberately does not do: IPv6 (no `ip6tables` rules; an IPv6 network in a skip list
//! is refused rather than ignored), UDP (DNS and other UDP go direct), and any traffic mark:
//! the proxy's exemption is its uid, which is why the injector must never let the app run as the
//! proxy's uid (a process with that uid bypasses capture; see `docs/security.md`). It runs the
//! `iptables` programs rather than speaking netlink, so the image needs iptables 1.8.

mod args;
mod backend;
mod ports;
mod render;

pub use args::{ArgsError, BackendChoice, InitArgs, InitCommand, USAGE, parse_init_args};
pub use backend::{Backend, CaptureError, apply, remove, show};
pub use ports::{Cidr, ParseError, PortRange, parse_cidrs, parse_ports};
pub use render::render;

/// The uid the proxy runs as (Linkerd's, so operators recognise it).
pub const DEFAULT_PROXY_UID: u32 = 2102;
/// The proxy's inbound port (`ONEMESH_PROXY_INBOUND_ADDR`'s default).
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
/// The proxy's outbound port (`ONEMESH_PROXY_OUTBOUND_ADDR`'s default).
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (`ONEMESH_PROXY_ADMIN_ADDR`'s default): probes and metrics.
pub const DEFAULT_ADMIN_PORT: u16 = 4191;
/// The proxy's control-only admin port (`ONEMESH_PROXY_CONTROL_ADMIN_ADDR`'s default): tap, mTLS
/// with the control plane's identity only.
pub const DEFAULT_CONTROL_ADMIN_PORT: u16 = 4190;

/// Our chain in `PREROUTING`: the inbound skips, then a jump to [`CHAIN_INBOUND_REDIRECT`].
pub const CHAIN_PREROUTING: &str = "ONEMESH_PREROUTING";
/// The one `REDIRECT` to the inbound port (its counters: connections captured inbound).
pub const CHAIN_INBOUND_REDIRECT: &str = "ONEMESH_INBOUND_REDIRECT";
/// Our chain in `OUTPUT`: the proxy's exemption and the outbound skips, then a jump to
/// [`CHAIN_OUTBOUND_REDIRECT`].
pub const CHAIN_OUTPUT: &str = "ONEMESH_OUTPUT";
/// The one `REDIRECT` to the outbound port (its counters: connections captured outbound).
pub const CHAIN_OUTBOUND_REDIRECT: &str = "ONEMESH_OUTBOUND_REDIRECT";
/// Every chain name of ours starts with this.
pub const CHAIN_PREFIX: &str = "ONEMESH_";

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Connections made by this uid are never captured: the proxy's own.
    pub proxy_uid: u32,
    /// When set, connections made by this gid are not captured either.
    pub proxy_gid: Option<u32>,
    /// Where inbound TCP is redirected.
    pub inbound_port: u16,
    /// Where outbound TCP is redirected.
    pub outbound_port: u16,
    /// The proxy's admin port: never captured inbound (kubelet probes, Prometheus).
    pub admin_port: u16,
    /// The proxy's control-only admin port: never captured inbound (the control plane's tap).
    pub control_admin_port: u16,
    /// `false`: outbound capture only (no `PREROUTING` rules at all).
    pub capture_inbound: bool,
    /// `false`: inbound capture only (no `OUTPUT` rules at all). For a namespace whose proxy
    /// runs as the same uid as its app (`onemesh up --isolate`): the uid exemption could not
    /// tell the proxy's connections from the app's, so the app is pointed at the outbound port
    /// (`HTTP_PROXY`) instead of being captured. [`Rules::proxy_uid`] then exempts nothing.
    pub capture_outbound: bool,
    /// Inbound destination ports that reach the app directly. The inbound and admin ports are
    /// skipped whatever this holds ([`Rules::inbound_skips`]).
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports that go direct.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destination networks that go direct.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            control_admin_port: DEFAULT_CONTROL_ADMIN_PORT,
            capture_inbound: true,
            capture_outbound: true,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

impl Rules {
    /// The inbound ports left alone: the proxy's inbound and both admin ports, then the
    /// configured ones, sorted, without duplicates.
    pub fn inbound_skips(&self) -> Vec<PortRange> {
        let mut skips: Vec<PortRange> =
            [self.inbound_port, self.admin_port, self.control_admin_port]
                .into_iter()
                .filter_map(PortRange::single)
                .chain(self.skip_inbound_ports.iter().copied())
                .collect();
        sort_dedup(&mut skips);
        skips
    }

    /// The outbound ports left alone, sorted, without duplicates.
    pub fn outbound_skips(&self) -> Vec<PortRange> {
        let mut skips = self.skip_outbound_ports.clone();
        sort_dedup(&mut skips);
        skips
    }
}

fn sort_dedup<T: Ord>(items: &mut Vec<T>) {
    items.sort_unstable();
    items.dedup();
}

#[cfg(test)]
mod tests;
