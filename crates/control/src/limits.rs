//! What one client may hold on the control plane's gRPC listeners, so that a flood of
//! connections or streams neither grows memory without bound nor starves the real proxies.
//!
//! Two layers, both on every listener (identity, destination, policy):
//!
//! - **Connections**, in the accept loop ([`Gate`]): at most [`ConnectionLimits::max_connections`]
//!   open connections per listener and [`ConnectionLimits::max_connections_per_ip`] per source
//!   address (IPv6 counted per /64, the block one host usually gets), and at most
//!   [`ConnectionLimits::max_handshakes`] TLS handshakes in progress per listener
//!   ([`ConnectionLimits::max_handshakes_per_ip`] per address). A connection beyond a cap is
//!   closed at once, before any TLS work; refusals are counted ([`Gate::stats`]) and logged at
//!   most once per [`REFUSAL_LOG_INTERVAL`] per listener, with the counts since the last line.
//!   The per-address handshake cap is what keeps one client that opens sockets and never speaks
//!   from holding every handshake slot for [`crate::server::HANDSHAKE_TIMEOUT`].
//! - **Strangers' connections**: a connection on which the client presented no certificate is
//!   closed [`UNAUTHENTICATED_LIFETIME`] after its handshake (destination, policy: they answer it
//!   nothing) or [`UNAUTHENTICATED_LIFETIME_IDENTITY`] (identity: time for a bootstrap Certify).
//! - **HTTP/2 and gRPC**, in tonic's server builder ([`grpc_server`]): tonic's own defaults lift
//!   hyper's limits (no cap on concurrent streams, none on locally reset streams), so every one
//!   is set here explicitly, each a documented constant.
//!
//! Unauthenticated calls are refused by the handlers before any state is computed
//! (`services::authenticated`); these limits bound what such a client can make the
//! server hold while it is being refused. Local mode runs every proxy on 127.0.0.1, so the
//! per-address caps are also the most connections the local mesh's proxies may open together:
//! they are set well above what a mesh of a few hundred workloads needs (one connection per
//! proxy and listener).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Open connections per listener.
pub const MAX_CONNECTIONS: usize = 4096;
/// Open connections per listener from one source address (an IPv6 /64).
pub const MAX_CONNECTIONS_PER_IP: usize = 512;
/// TLS handshakes in progress per listener.
pub const MAX_HANDSHAKES: usize = 256;
/// TLS handshakes in progress per listener from one source address.
pub const MAX_HANDSHAKES_PER_IP: usize = 64;
/// At most one log line about refused connections per listener in this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one connection may have open at once. A
/// proxy holds one Destination watch and one outbound Policy watch per service it calls.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: a proxy's gRPC headers are a few hundred bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// HTTP/2 `SETTINGS_MAX_FRAME_SIZE`: the protocol's minimum; every message here is small.
pub const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// HTTP/2 initial flow-control window of a stream: what a client may send on one stream before
/// the server reads it (a CSR is under 1 KiB).
pub const INITIAL_STREAM_WINDOW: u32 = 64 * 1024;
/// HTTP/2 initial flow-control window of a connection: bounds the unread request bytes the server
/// buffers for one connection, whatever its number of streams.
pub const INITIAL_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Streams a client may open and reset before the server accepted them before the connection
/// gets a GOAWAY (the "rapid reset" attack; h2's own default, set explicitly).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of the client's protocol errors before the connection
/// gets a GOAWAY (tonic leaves this unlimited; hyper's own default is 1024).
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 128;
/// An HTTP/2 PING after this much silence on a connection...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if it is not acknowledged within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection without a client certificate stays open on the destination and policy
/// listeners, which answer such a client nothing but `UNAUTHENTICATED`: long enough to deliver
/// that answer, short enough that a stranger holds no place, and that a proxy which dialled
/// before it had its certificate soon dials again, presenting it.
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(1);
/// The same on the identity listener, where a proxy without a certificate yet asks for its
/// first one (a Certify takes milliseconds; [`REQUEST_TIMEOUT`] bounds a slow one): it then dials
/// again with its certificate, which the calls that need one (`WatchTrust`) require.
pub const UNAUTHENTICATED_LIFETIME_IDENTITY: Duration = Duration::from_secs(30);
/// How long a call may take until its response starts. Covers a Certify entirely (reading the
/// CSR, signing it); a watch only until its stream begins, so it never cuts a long watch.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// tonic's server builder with every HTTP/2 limit set (see the constants above).
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .http2_adaptive_window(Some(false))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .accept_http1(false)
}

/// The connection caps of one listener (defaults: the constants above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            max_handshakes: MAX_HANDSHAKES,
            max_handshakes_per_ip: MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener has `max_connections` open.
    Connections,
    /// The source address has `max_connections_per_ip` open.
    ConnectionsFromAddress,
    /// `max_handshakes` are in progress.
    Handshakes,
    /// `max_handshakes_per_ip` are in progress from the source address.
    HandshakesFromAddress,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Connections,
        Refusal::ConnectionsFromAddress,
        Refusal::Handshakes,
        Refusal::HandshakesFromAddress,
    ];

    /// A short stable name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "too_many_connections",
            Refusal::ConnectionsFromAddress => "too_many_connections_from_address",
            Refusal::Handshakes => "too_many_handshakes",
            Refusal::HandshakesFromAddress => "too_many_handshakes_from_address",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::Connections => 0,
            Refusal::ConnectionsFromAddress => 1,
            Refusal::Handshakes => 2,
            Refusal::HandshakesFromAddress => 3,
        }
    }
}

/// What a listener holds and has refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Connections open now (handshaking or established).
    pub open: usize,
    /// TLS handshakes in progress now.
    pub handshakes: usize,
    /// Source addresses with an open connection now.
    pub addresses: usize,
    /// Connections closed at once since start, by [`Refusal`] (in `Refusal::ALL` order:
    /// connections, connections from address, handshakes, handshakes from address).
    pub refused: [u64; 4],
}

impl GateStats {
    /// Every refusal since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }
}

#[derive(Default)]
struct PerAddress {
    open: usize,
    handshakes: usize,
}

#[derive(Default)]
struct Counts {
    open: usize,
    handshakes: usize,
    per_address: HashMap<IpAddr, PerAddress>,
}

struct RefusalLog {
    last: Option<Instant>,
    /// Refusals by reason at the last log line.
    logged: [u64; 4],
}

/// The connection caps of one listener, and what it holds now.
pub struct Gate {
    what: &'static str,
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    refused: [AtomicU64; 4],
    log: Mutex<RefusalLog>,
}

/// The key a source address is counted under: IPv4 as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Gate {
    pub fn new(what: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Gate {
            what,
            limits,
            counts: Mutex::new(Counts::default()),
            refused: Default::default(),
            log: Mutex::new(RefusalLog {
                last: None,
                logged: [0; 4],
            }),
        })
    }

    /// Admits a new connection from `ip` for its TLS handshake, or says why it must be closed.
    /// The [`Connection`] holds its place until dropped; [`Connection::handshake_done`] frees its
    /// handshake slot.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Connection, Refusal> {
        let key = address_key(ip);
        let refusal = {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let (open, handshakes) = (counts.open, counts.handshakes);
            let here = counts.per_address.get(&key);
            let (here_open, here_handshakes) = here.map_or((0, 0), |a| (a.open, a.handshakes));
            let refusal = if open >= self.limits.max_connections {
                Some(Refusal::Connections)
            } else if here_open >= self.limits.max_connections_per_ip {
                Some(Refusal::ConnectionsFromAddress)
            } else if handshakes >= self.limits.max_handshakes {
                Some(Refusal::Handshakes)
            } else if here_handshakes >= self.limits.max_handshakes_per_ip {
                Some(Refusal::HandshakesFromAddress)
            } else {
                None
            };
            if refusal.is_none() {
                counts.open += 1;
                counts.handshakes += 1;
                let here = counts.per_address.entry(key).or_default();
                here.open += 1;
                here.handshakes += 1;
            }
            refusal
        };
        match refusal {
            None => Ok(Connection {
                gate: self.clone(),
                key,
                handshaking: true,
            }),
            Some(r) => {
                self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
                self.log_refusals(ip);
                Err(r)
            }
        }
    }

    /// Logs the refusals since the last line, at most once per [`REFUSAL_LOG_INTERVAL`].
    fn log_refusals(&self, ip: IpAddr) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let total: [u64; 4] = std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed));
        let since: [u64; 4] = std::array::from_fn(|i| total[i] - log.logged[i]);
        log.last = Some(now);
        log.logged = total;
        let stats = self.stats();
        let reasons: Vec<String> = Refusal::ALL
            .iter()
            .filter(|r| since[r.index()] > 0)
            .map(|r| format!("{} {}", since[r.index()], r.as_str()))
            .collect();
        tracing::warn!(
            server = self.what,
            latest = %ip,
            open = stats.open,
            handshakes = stats.handshakes,
            "closed connections at once ({}); limits: {} open, {} per address, {} handshakes, {} handshakes per address; the next such line comes after {}s at the earliest",
            reasons.join(", "),
            self.limits.max_connections,
            self.limits.max_connections_per_ip,
            self.limits.max_handshakes,
            self.limits.max_handshakes_per_ip,
            REFUSAL_LOG_INTERVAL.as_secs(),
        );
    }

    /// What the listener holds now and has refused since start.
    pub fn stats(&self) -> GateStats {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        GateStats {
            open: counts.open,
            handshakes: counts.handshakes,
            addresses: counts.per_address.len(),
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
        }
    }

    fn release(&self, key: IpAddr, handshake: bool, connection: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if handshake {
            counts.handshakes = counts.handshakes.saturating_sub(1);
        }
        if connection {
            counts.open = counts.open.saturating_sub(1);
        }
        if let Some(here) = counts.per_address.get_mut(&key) {
            if handshake {
                here.handshakes = here.handshakes.saturating_sub(1);
            }
            if connection {
                here.open = here.open.saturating_sub(1);
            }
            if here.open == 0 {
                counts.per_address.remove(&key);
            }
        }
    }
}

/// One admitted connection's place in its listener's counts, given back when dropped.
pub struct Connection {
    gate: Arc<Gate>,
    key: IpAddr,
    handshaking: bool,
}

impl Connection {
    /// The TLS handshake finished: its handshake slot is free for another client.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.gate.release(self.key, true, false);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gate.release(self.key, self.handshaking, true);
    }
}

#[cfg(test)]
mod tests;
