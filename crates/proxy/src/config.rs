//! The proxy's configuration: every `ONEMESH_PROXY_*` environment variable, its default and what
//! it does, parsed in one pass.
//!
//! Variables are read through [`Source`], a one-method string lookup: the binary passes [`Env`],
//! tests pass a `HashMap` (never `std::env::set_var`). [`Config::from_source`] parses every
//! variable and reports every bad one at once in [`ConfigError`], so an operator fixes them all in
//! one round.
//!
//! Durations are written `<number><unit>` with unit `ms`, `s`, `m` or `h` (`"1s"`, `"500ms"`,
//! `"24h"`); a bare number is seconds.
//!
//! Two modes. **Static** (default): `ONEMESH_PROXY_STATIC_CONFIG` and a local issuer
//! (`ONEMESH_PROXY_IDENTITY_ISSUER_CERT`/`_KEY`). **Control plane**: set
//! `ONEMESH_PROXY_CONTROL_IDENTITY_ADDR`, `ONEMESH_PROXY_CONTROL_DESTINATION_ADDR` and
//! `ONEMESH_PROXY_CONTROL_POLICY_ADDR` (`host:port` each, all three), plus
//! `ONEMESH_PROXY_IDENTITY_TOKEN` (the bootstrap token) and optionally `ONEMESH_PROXY_CONTROL_ID`
//! (the control plane's SPIFFE id; default `spiffe://<our trust domain>/ns/onemesh/sa/control`).
//! Both modes verify peers with `ONEMESH_PROXY_TRUST_ANCHORS`. See [`crate::control`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::SpiffeId;

/// Outbound listener: the app's plain HTTP (or redirected TCP) comes in here.
pub const ENV_OUTBOUND_ADDR: &str = "ONEMESH_PROXY_OUTBOUND_ADDR";
/// Default outbound listener address.
pub const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:4140";
/// Inbound listener: mTLS from other proxies (and plain from unmeshed callers) comes in here.
pub const ENV_INBOUND_ADDR: &str = "ONEMESH_PROXY_INBOUND_ADDR";
/// Default inbound listener address.
pub const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:4143";
/// Admin server (`/metrics`, `/ready`, `/live`).
pub const ENV_ADMIN_ADDR: &str = "ONEMESH_PROXY_ADMIN_ADDR";
/// Default admin address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:4191";
/// The host the inbound forwards to (`<host>:<target port>`).
pub const ENV_INBOUND_APP_HOST: &str = "ONEMESH_PROXY_INBOUND_APP_HOST";
/// Default application host.
pub const DEFAULT_INBOUND_APP_HOST: &str = "127.0.0.1";
/// This workload's SPIFFE id (required).
pub const ENV_IDENTITY: &str = "ONEMESH_PROXY_IDENTITY";
/// Workload name used in metric labels; defaults to the identity's service account.
pub const ENV_WORKLOAD: &str = "ONEMESH_PROXY_WORKLOAD";
/// Path to the PEM trust bundle (one or more roots).
pub const ENV_TRUST_ANCHORS: &str = "ONEMESH_PROXY_TRUST_ANCHORS";
/// Path to the static JSON configuration (services, tcp forwards, inbound authorizations).
pub const ENV_STATIC_CONFIG: &str = "ONEMESH_PROXY_STATIC_CONFIG";
/// Static mode: PEM chain of a local issuer that signs this proxy's CSR.
pub const ENV_IDENTITY_ISSUER_CERT: &str = "ONEMESH_PROXY_IDENTITY_ISSUER_CERT";
/// Static mode: PEM private key of that issuer.
pub const ENV_IDENTITY_ISSUER_KEY: &str = "ONEMESH_PROXY_IDENTITY_ISSUER_KEY";
/// Static mode: lifetime of the leaf certificates the local issuer signs.
pub const ENV_LEAF_LIFETIME: &str = "ONEMESH_PROXY_LEAF_LIFETIME";
/// Default leaf lifetime.
pub const DEFAULT_LEAF_LIFETIME: &str = "24h";
/// How long protocol detection waits for the client's first bytes.
pub const ENV_DETECT_TIMEOUT: &str = "ONEMESH_PROXY_DETECT_TIMEOUT";
/// Default detection timeout.
pub const DEFAULT_DETECT_TIMEOUT: &str = "1s";
/// How long detection waits for a redirected client's first byte before it takes the connection
/// for a server-speaks-first protocol (SMTP, MySQL…) and relays it as opaque TCP at once.
pub const ENV_DETECT_FIRST_BYTE_TIMEOUT: &str = "ONEMESH_PROXY_DETECT_FIRST_BYTE_TIMEOUT";
/// Default first-byte window.
pub const DEFAULT_DETECT_FIRST_BYTE_TIMEOUT: &str = "200ms";
/// How long a TCP connect (+ TLS handshake) to an upstream may take.
pub const ENV_CONNECT_TIMEOUT: &str = "ONEMESH_PROXY_CONNECT_TIMEOUT";
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "3s";
/// How long a client may take to send a complete request head.
pub const ENV_HEADER_READ_TIMEOUT: &str = "ONEMESH_PROXY_HEADER_READ_TIMEOUT";
/// Default header read timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// The largest request head (request line + headers) accepted, in bytes (at least 8192).
pub const ENV_MAX_HEADER_BYTES: &str = "ONEMESH_PROXY_MAX_HEADER_BYTES";
/// Default maximum header size.
pub const DEFAULT_MAX_HEADER_BYTES: &str = "65536";
/// How long in-flight work may continue after SIGTERM before the proxy exits.
pub const ENV_SHUTDOWN_GRACE: &str = "ONEMESH_PROXY_SHUTDOWN_GRACE";
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
/// How long a spliced stream (opaque TCP, or an upgraded connection such as a WebSocket) may
/// move no byte in either direction before the proxy closes it.
pub const ENV_STREAM_IDLE_TIMEOUT: &str = "ONEMESH_PROXY_STREAM_IDLE_TIMEOUT";
/// Default stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: &str = "1h";
/// Comma-separated ports whose traffic skips protocol detection (carried as opaque TCP).
pub const ENV_OPAQUE_PORTS: &str = "ONEMESH_PROXY_OPAQUE_PORTS";
/// Default opaque ports: SMTP, MySQL, PostgreSQL, Redis, memcached and others that speak first
/// or are never HTTP.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";
/// Log level, or `target=level` directives: `info,onemesh_proxy=debug`.
pub const ENV_LOG: &str = "ONEMESH_PROXY_LOG";
/// Default log filter.
pub const DEFAULT_LOG: &str = "info";
/// Log format: `plain` or `json`.
pub const ENV_LOG_FORMAT: &str = "ONEMESH_PROXY_LOG_FORMAT";
/// Default log format.
pub const DEFAULT_LOG_FORMAT: &str = "plain";
/// Worker threads of the proxy's runtime. A sidecar shares its pod's CPU with the app: one
/// thread avoids cross-thread wake-ups and uses ~20 % less CPU per request (bench/).
pub const ENV_CORES: &str = "ONEMESH_PROXY_CORES";
/// Default worker threads.
pub const DEFAULT_CORES: &str = "1";
/// How the application's HTTP/1 requests travel to other proxies: `http1` (kept-alive HTTP/1.1
/// connections over mTLS, one request at a time each, like the application's own; the fastest) or
/// `h2` (multiplexed on one HTTP/2 connection per endpoint; the fewest connections). HTTP/2 and
/// gRPC always ride HTTP/2.
pub const ENV_HTTP1_TRANSPORT: &str = "ONEMESH_PROXY_HTTP1_TRANSPORT";
/// Default transport of HTTP/1 requests between proxies.
pub const DEFAULT_HTTP1_TRANSPORT: &str = "http1";
/// Control-plane mode: `host:port` of the control plane's identity service (`Identity.Certify`).
/// Setting this and the two below selects control-plane mode instead of the static file.
pub const ENV_CONTROL_IDENTITY_ADDR: &str = "ONEMESH_PROXY_CONTROL_IDENTITY_ADDR";
/// Control-plane mode: `host:port` of the destination service (`Destination.Watch`).
pub const ENV_CONTROL_DESTINATION_ADDR: &str = "ONEMESH_PROXY_CONTROL_DESTINATION_ADDR";
/// Control-plane mode: `host:port` of the policy service (`Policy.WatchInbound`/`WatchOutbound`).
pub const ENV_CONTROL_POLICY_ADDR: &str = "ONEMESH_PROXY_CONTROL_POLICY_ADDR";
/// Control-plane mode: the SPIFFE id the control plane must prove (verified against
/// `ONEMESH_PROXY_TRUST_ANCHORS`); defaults to
/// `spiffe://<trust domain of ONEMESH_PROXY_IDENTITY>/ns/onemesh/sa/control`.
pub const ENV_CONTROL_ID: &str = "ONEMESH_PROXY_CONTROL_ID";
/// Control-plane mode: the bootstrap token sent with every certificate signing request
/// (required in that mode; `onemesh up` hands one to each proxy).
pub const ENV_IDENTITY_TOKEN: &str = "ONEMESH_PROXY_IDENTITY_TOKEN";
/// Control-plane mode: a file holding the bootstrap token instead of [`ENV_IDENTITY_TOKEN`], read
/// again for every certificate signing request. In Kubernetes it is the pod's projected
/// ServiceAccount token (audience `onemesh`), which the kubelet refreshes in place.
pub const ENV_IDENTITY_TOKEN_FILE: &str = "ONEMESH_PROXY_IDENTITY_TOKEN_FILE";
/// Control-plane mode: a directory of this proxy's own where it keeps its private key, its leaf,
/// the trust bundle and the last configuration the control plane sent (see
/// [`crate::state_dir`]), so that a restarted proxy is ready at once, also while the control plane
/// is down. Made with mode 0700 when missing. Unset: nothing is kept, and a restarted proxy makes a
/// new key, which its bootstrap token (bound to the first key) will not certify. `onemesh up` sets
/// it; in Kubernetes it is a memory-backed `emptyDir`.
pub const ENV_STATE_DIR: &str = "ONEMESH_PROXY_STATE_DIR";
/// The app's own liveness/readiness/startup probes, which the injector moved to the admin port
/// (`/app-probe/<container>/<kind>`): JSON keyed `<container>/<kind>`, each with `http`
/// (`{"port", "path", "headers": [[name, value]]}`) or `tcp` (`{"port"}`) and `timeoutSeconds`
/// (other keys are ignored). The admin server performs them on 127.0.0.1 (see
/// [`crate::admin`]). Unset: no app probes.
pub const ENV_APP_PROBES: &str = "ONEMESH_PROXY_APP_PROBES";
/// The control-only admin listener (`GET /tap`): TLS 1.3 with this proxy's leaf, a client
/// certificate required whose SPIFFE id is the control plane's (`ONEMESH_PROXY_CONTROL_ID`), see
/// [`crate::control_admin`]. On in control-plane mode (at this address or the default); in static
/// mode only when both this and `ONEMESH_PROXY_CONTROL_ID` are set.
pub const ENV_CONTROL_ADMIN_ADDR: &str = "ONEMESH_PROXY_CONTROL_ADMIN_ADDR";
/// Default control-only admin address.
pub const DEFAULT_CONTROL_ADMIN_ADDR: &str = "0.0.0.0:4190";
/// Comma-separated request header names whose values tap events and access logs show as
/// `[masked]` (`proxy-authorization` and `set-cookie` always are); card numbers are masked in
/// every other value, and in the authority and path (see [`crate::tap::mask`]).
pub const ENV_TAP_MASK_HEADERS: &str = "ONEMESH_PROXY_TAP_MASK_HEADERS";
/// Default masked headers.
pub const DEFAULT_TAP_MASK_HEADERS: &str = crate::tap::mask::DEFAULT_MASK_HEADERS;
/// Access logs: `off`, or `json` (one JSON line per request on stdout, the tap event with the
/// same masking, see [`crate::tap`]).
pub const ENV_ACCESS_LOG: &str = "ONEMESH_PROXY_ACCESS_LOG";
/// Default access log.
pub const DEFAULT_ACCESS_LOG: &str = "off";
/// The decision log ([`crate::audit`]): `on` or `off`. Default: `on` in control-plane mode
/// (records are shipped to the control plane's `Audit.Append`), `off` in static mode (where `on`
/// writes each batch as a JSON line on stdout).
pub const ENV_AUDIT: &str = "ONEMESH_PROXY_AUDIT";
/// Denials (and would_deny decisions) recorded one by one per second, a whole number from 0 to
/// 100000 (the burst is twice as many); beyond it they are counted in per-minute aggregates.
pub const ENV_AUDIT_DENY_RATE: &str = "ONEMESH_PROXY_AUDIT_DENY_RATE";
/// Default denials recorded one by one per second.
pub const DEFAULT_AUDIT_DENY_RATE: &str = "100";
/// At most this many app probes (a pod has a few containers, three probes each).
pub const MAX_APP_PROBES: usize = 256;
/// The control plane's namespace and service account in its default SPIFFE id.
pub const DEFAULT_CONTROL_NAMESPACE: &str = "onemesh";
/// See [`DEFAULT_CONTROL_NAMESPACE`].
pub const DEFAULT_CONTROL_SERVICE_ACCOUNT: &str = "control";

/// The credential a proxy sends with its first certificate signing request.
#[derive(Clone)]
pub enum BootstrapToken {
    /// The token itself (`onemesh up` hands one to each proxy).
    Value(String),
    /// A file read again for every request (a projected ServiceAccount token rotates).
    File(PathBuf),
}

impl BootstrapToken {
    /// The token as it is now: surrounding whitespace trimmed, a file read afresh.
    pub fn read(&self) -> Result<String, String> {
        match self {
            BootstrapToken::Value(value) => Ok(value.trim().to_string()),
            BootstrapToken::File(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
                Ok(_) => Err(format!(
                    "the bootstrap token file {} is empty: check the pod's projected ServiceAccount token volume",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "cannot read the bootstrap token file {}: {e}; check the pod's projected ServiceAccount token volume",
                    path.display()
                )),
            },
        }
    }
}

impl fmt::Debug for BootstrapToken {
    // The token is a credential: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootstrapToken::Value(_) => f.write_str("Value(<redacted>)"),
            BootstrapToken::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Where variables come from. One method, so tests can pass a map.
pub trait Source {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for HashMap<&str, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|s| s.to_string())
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// How HTTP/1 requests travel between proxies (see [`ENV_HTTP1_TRANSPORT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http1Transport {
    /// Pooled HTTP/1.1 connections over mTLS.
    Http1,
    /// One multiplexed HTTP/2 connection per endpoint.
    H2,
}

/// Where the control plane is, in control-plane mode (see [`ENV_CONTROL_IDENTITY_ADDR`]).
#[derive(Clone)]
pub struct ControlPlaneConfig {
    /// See [`ENV_CONTROL_IDENTITY_ADDR`].
    pub identity_addr: String,
    /// See [`ENV_CONTROL_DESTINATION_ADDR`].
    pub destination_addr: String,
    /// See [`ENV_CONTROL_POLICY_ADDR`].
    pub policy_addr: String,
    /// See [`ENV_CONTROL_ID`].
    pub id: SpiffeId,
    /// See [`ENV_IDENTITY_TOKEN`] and [`ENV_IDENTITY_TOKEN_FILE`].
    pub token: BootstrapToken,
    /// See [`ENV_STATE_DIR`].
    pub state_dir: Option<PathBuf>,
}

impl fmt::Debug for ControlPlaneConfig {
    // The token is a credential: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("identity_addr", &self.identity_addr)
            .field("destination_addr", &self.destination_addr)
            .field("policy_addr", &self.policy_addr)
            .field("id", &self.id)
            .field("token", &self.token)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// The parsed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// See [`ENV_OUTBOUND_ADDR`].
    pub outbound_addr: SocketAddr,
    /// See [`ENV_INBOUND_ADDR`].
    pub inbound_addr: SocketAddr,
    /// See [`ENV_ADMIN_ADDR`].
    pub admin_addr: SocketAddr,
    /// See [`ENV_INBOUND_APP_HOST`].
    pub inbound_app_host: IpAddr,
    /// See [`ENV_IDENTITY`].
    pub identity: SpiffeId,
    /// See [`ENV_WORKLOAD`].
    pub workload: String,
    /// See [`ENV_TRUST_ANCHORS`].
    pub trust_anchors: Option<PathBuf>,
    /// See [`ENV_STATIC_CONFIG`].
    pub static_config: Option<PathBuf>,
    /// See [`ENV_IDENTITY_ISSUER_CERT`].
    pub issuer_cert: Option<PathBuf>,
    /// See [`ENV_IDENTITY_ISSUER_KEY`].
    pub issuer_key: Option<PathBuf>,
    /// See [`ENV_LEAF_LIFETIME`].
    pub leaf_lifetime: Duration,
    /// See [`ENV_DETECT_TIMEOUT`].
    pub detect_timeout: Duration,
    /// See [`ENV_DETECT_FIRST_BYTE_TIMEOUT`].
    pub detect_first_byte: Duration,
    /// See [`ENV_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`ENV_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`ENV_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// See [`ENV_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// See [`ENV_STREAM_IDLE_TIMEOUT`].
    pub stream_idle_timeout: Duration,
    /// See [`ENV_OPAQUE_PORTS`].
    pub opaque_ports: BTreeSet<u16>,
    /// See [`ENV_LOG`].
    pub log: String,
    /// See [`ENV_LOG_FORMAT`].
    pub log_format: LogFormat,
    /// See [`ENV_CORES`].
    pub cores: usize,
    /// See [`ENV_HTTP1_TRANSPORT`].
    pub http1_transport: Http1Transport,
    /// Control-plane mode when set (see [`ENV_CONTROL_IDENTITY_ADDR`]); static mode otherwise.
    pub control: Option<ControlPlaneConfig>,
    /// See [`ENV_APP_PROBES`].
    pub app_probes: Arc<AppProbes>,
    /// The control-only admin listener's address and the only peer it serves (see
    /// [`ENV_CONTROL_ADMIN_ADDR`]); `None`: off.
    pub control_admin: Option<(SocketAddr, SpiffeId)>,
    /// See [`ENV_TAP_MASK_HEADERS`].
    pub tap_mask: crate::tap::mask::Masker,
    /// See [`ENV_ACCESS_LOG`]: `true` for `json`.
    pub access_log: bool,
    /// See [`ENV_AUDIT`]: `None` when not set (on with a control plane, off without).
    pub audit: Option<bool>,
    /// See [`ENV_AUDIT_DENY_RATE`].
    pub audit_deny_rate: u32,
}

/// The app's probes the admin server answers (see [`ENV_APP_PROBES`]), by `<container>/<kind>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

impl AppProbes {
    /// The probe at `/app-probe/<key>`.
    pub fn get(&self, key: &str) -> Option<&AppProbe> {
        self.0.get(key)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses [`ENV_APP_PROBES`]'s JSON.
    pub fn parse(json: &str) -> Result<AppProbes, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            http: Option<RawHttp>,
            tcp: Option<RawTcp>,
            timeout_seconds: u64,
        }
        #[derive(serde::Deserialize)]
        struct RawHttp {
            port: u16,
            path: String,
            #[serde(default)]
            headers: Vec<(String, String)>,
        }
        #[derive(serde::Deserialize)]
        struct RawTcp {
            port: u16,
        }
        let raw: BTreeMap<String, Raw> = serde_json::from_str(json)
            .map_err(|e| format!("is not the injector's JSON of app probes: {e}"))?;
        if raw.len() > MAX_APP_PROBES {
            return Err(format!("has more than {MAX_APP_PROBES} probes"));
        }
        let mut out = BTreeMap::new();
        for (key, probe) in raw {
            let bad = |what: &str| format!("probe {key:?}: {what}");
            if !(1..=3600).contains(&probe.timeout_seconds) {
                return Err(bad("timeoutSeconds must be 1 to 3600"));
            }
            let action = match (probe.http, probe.tcp) {
                (Some(http), None) => {
                    if http.port == 0 {
                        return Err(bad("port 0"));
                    }
                    let path = http::uri::PathAndQuery::try_from(http.path.as_str())
                        .ok()
                        .filter(|_| http.path.starts_with('/'))
                        .ok_or_else(|| bad("the path must be an absolute path such as /healthz"))?;
                    let mut headers = Vec::with_capacity(http.headers.len());
                    for (name, value) in http.headers {
                        let name = http::HeaderName::try_from(name.as_str())
                            .map_err(|_| bad(&format!("{name:?} is not a header name")))?;
                        let value = http::HeaderValue::try_from(value.as_str())
                            .map_err(|_| bad(&format!("{value:?} is not a header value")))?;
                        headers.push((name, value));
                    }
                    ProbeAction::Http {
                        port: http.port,
                        path,
                        headers,
                    }
                }
                (None, Some(tcp)) if tcp.port != 0 => ProbeAction::Tcp { port: tcp.port },
                _ => return Err(bad("needs exactly one of http and tcp, with a port")),
            };
            out.insert(
                key,
                AppProbe {
                    action,
                    timeout: Duration::from_secs(probe.timeout_seconds),
                },
            );
        }
        Ok(AppProbes(out))
    }
}

/// One app probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProbe {
    pub action: ProbeAction,
    /// The kubelet's `timeoutSeconds` for it.
    pub timeout: Duration,
}

/// What an app probe does, always on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET <path>` with these headers; 2xx/3xx is healthy (as the kubelet judges).
    Http {
        port: u16,
        path: http::uri::PathAndQuery,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A TCP connect.
    Tcp { port: u16 },
}

impl Config {
    /// This workload's namespace (from its identity).
    pub fn namespace(&self) -> &str {
        self.identity.namespace()
    }
}

/// One bad variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadVar {
    /// The variable's name.
    pub name: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

/// Every bad variable found in one pass.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One or more variables are missing or malformed.
    #[error("invalid proxy configuration: {}", display_bad(.0))]
    Invalid(Vec<BadVar>),
}

fn display_bad(bad: &[BadVar]) -> String {
    bad.iter()
        .map(|b| format!("{}: {}", b.name, b.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    /// The bad variables.
    pub fn bad_vars(&self) -> &[BadVar] {
        match self {
            ConfigError::Invalid(bad) => bad,
        }
    }
}

impl fmt::Display for BadVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.problem)
    }
}

/// Collects values and problems while parsing.
struct Parser<'a> {
    source: &'a dyn Source,
    bad: Vec<BadVar>,
}

impl Parser<'_> {
    fn raw(&self, name: &'static str) -> Option<String> {
        self.source
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parse<T>(
        &mut self,
        name: &'static str,
        default: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.raw(name).unwrap_or_else(|| default.to_string());
        match f(&value) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.bad.push(BadVar {
                    name,
                    problem: format!("{problem} (got {value:?})"),
                });
                None
            }
        }
    }

    fn required<T>(
        &mut self,
        name: &'static str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.raw(name) {
            Some(value) => match f(&value) {
                Ok(v) => Some(v),
                Err(problem) => {
                    self.bad.push(BadVar {
                        name,
                        problem: format!("{problem} (got {value:?})"),
                    });
                    None
                }
            },
            None => {
                self.bad.push(BadVar {
                    name,
                    problem: "is required but not set".to_string(),
                });
                None
            }
        }
    }
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "must be an ip:port socket address, e.g. 127.0.0.1:4140".to_string())
}

/// Parses a duration like `500ms`, `1s`, `5m`, `24h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "must be a duration such as 500ms, 1s, 5m or 24h".to_string())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err("has an unknown unit: use ms, s, m or h".to_string()),
    };
    Ok(d)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".to_string());
    }
    Ok(d)
}

fn ports(s: &str) -> Result<BTreeSet<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!("must be a comma-separated list of ports 1-65535; {p:?} is not one")
            })
        })
        .collect()
}

fn host_port(s: &str) -> Result<String, String> {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(s.to_string())
    } else {
        Err("must be host:port, e.g. 127.0.0.1:8080".to_string())
    }
}

/// Control-plane mode's variables: `None` (static mode) when no address is set.
fn control_plane(p: &mut Parser<'_>, identity: Option<&SpiffeId>) -> Option<ControlPlaneConfig> {
    let names = [
        ENV_CONTROL_IDENTITY_ADDR,
        ENV_CONTROL_DESTINATION_ADDR,
        ENV_CONTROL_POLICY_ADDR,
    ];
    if names.iter().all(|n| p.raw(n).is_none()) {
        return None;
    }
    let [identity_addr, destination_addr, policy_addr] = names.map(|name| {
        let value = p.raw(name);
        if value.is_none() {
            p.bad.push(BadVar {
                name,
                problem: format!(
                    "is required in control-plane mode: set all of {}",
                    names.join(", ")
                ),
            });
        }
        value.and_then(|v| match host_port(&v) {
            Ok(v) => Some(v),
            Err(problem) => {
                p.bad.push(BadVar {
                    name,
                    problem: format!("{problem} (got {v:?})"),
                });
                None
            }
        })
    });
    let id = match p.raw(ENV_CONTROL_ID) {
        Some(_) => p.required(ENV_CONTROL_ID, |s| {
            SpiffeId::from_str(s).map_err(|e| format!("is not a spiffe id: {e}"))
        }),
        None => identity.and_then(|own| {
            SpiffeId::new(
                own.trust_domain(),
                DEFAULT_CONTROL_NAMESPACE,
                DEFAULT_CONTROL_SERVICE_ACCOUNT,
            )
            .ok()
        }),
    };
    let token = match (p.raw(ENV_IDENTITY_TOKEN), p.raw(ENV_IDENTITY_TOKEN_FILE)) {
        (Some(value), None) => Some(BootstrapToken::Value(value)),
        (None, Some(path)) => Some(BootstrapToken::File(PathBuf::from(path))),
        (Some(_), Some(_)) => {
            p.bad.push(BadVar {
                name: ENV_IDENTITY_TOKEN_FILE,
                problem: format!("and {ENV_IDENTITY_TOKEN} are both set: set only one"),
            });
            None
        }
        (None, None) => {
            p.bad.push(BadVar {
                name: ENV_IDENTITY_TOKEN,
                problem: format!("(or {ENV_IDENTITY_TOKEN_FILE}) is required in control-plane mode: set the bootstrap token `onemesh up` gave this proxy, or the path of the pod's projected ServiceAccount token"),
            });
            None
        }
    };
    if p.raw(ENV_TRUST_ANCHORS).is_none() {
        p.bad.push(BadVar {
            name: ENV_TRUST_ANCHORS,
            problem: "is required in control-plane mode: set it to the PEM bundle that verifies the control plane".to_string(),
        });
    }
    Some(ControlPlaneConfig {
        identity_addr: identity_addr?,
        destination_addr: destination_addr?,
        policy_addr: policy_addr?,
        id: id?,
        token: token?,
        state_dir: p.raw(ENV_STATE_DIR).map(PathBuf::from),
    })
}

impl Config {
    /// Parses every variable from `source`, reporting every bad one at once.
    pub fn from_source(source: &dyn Source) -> Result<Config, ConfigError> {
        let mut p = Parser {
            source,
            bad: Vec::new(),
        };
        let outbound_addr = p.parse(ENV_OUTBOUND_ADDR, DEFAULT_OUTBOUND_ADDR, socket_addr);
        let inbound_addr = p.parse(ENV_INBOUND_ADDR, DEFAULT_INBOUND_ADDR, socket_addr);
        let admin_addr = p.parse(ENV_ADMIN_ADDR, DEFAULT_ADMIN_ADDR, socket_addr);
        let inbound_app_host = p.parse(ENV_INBOUND_APP_HOST, DEFAULT_INBOUND_APP_HOST, |s| {
            IpAddr::from_str(s).map_err(|_| "must be an ip address, e.g. 127.0.0.1".to_string())
        });
        let identity = p.required(ENV_IDENTITY, |s| {
            SpiffeId::from_str(s).map_err(|e| format!("is not a spiffe id: {e}"))
        });
        let workload = p.raw(ENV_WORKLOAD);
        let trust_anchors = p.raw(ENV_TRUST_ANCHORS).map(PathBuf::from);
        let static_config = p.raw(ENV_STATIC_CONFIG).map(PathBuf::from);
        let issuer_cert = p.raw(ENV_IDENTITY_ISSUER_CERT).map(PathBuf::from);
        let issuer_key = p.raw(ENV_IDENTITY_ISSUER_KEY).map(PathBuf::from);
        if issuer_cert.is_some() != issuer_key.is_some() {
            let missing = if issuer_cert.is_some() {
                ENV_IDENTITY_ISSUER_KEY
            } else {
                ENV_IDENTITY_ISSUER_CERT
            };
            p.bad.push(BadVar {
                name: missing,
                problem: format!(
                    "must be set together with {}: the local issuer needs both its certificate and key",
                    if missing == ENV_IDENTITY_ISSUER_KEY {
                        ENV_IDENTITY_ISSUER_CERT
                    } else {
                        ENV_IDENTITY_ISSUER_KEY
                    }
                ),
            });
        }
        let leaf_lifetime = p.parse(ENV_LEAF_LIFETIME, DEFAULT_LEAF_LIFETIME, positive_duration);
        let detect_timeout = p.parse(
            ENV_DETECT_TIMEOUT,
            DEFAULT_DETECT_TIMEOUT,
            positive_duration,
        );
        let detect_first_byte = p.parse(
            ENV_DETECT_FIRST_BYTE_TIMEOUT,
            DEFAULT_DETECT_FIRST_BYTE_TIMEOUT,
            positive_duration,
        );
        let connect_timeout = p.parse(
            ENV_CONNECT_TIMEOUT,
            DEFAULT_CONNECT_TIMEOUT,
            positive_duration,
        );
        let header_read_timeout = p.parse(
            ENV_HEADER_READ_TIMEOUT,
            DEFAULT_HEADER_READ_TIMEOUT,
            positive_duration,
        );
        let max_header_bytes = p.parse(ENV_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_BYTES, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (8192..=1 << 20).contains(n))
                .ok_or_else(|| "must be a byte count between 8192 and 1048576".to_string())
        });
        let shutdown_grace = p.parse(ENV_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE, parse_duration);
        let stream_idle_timeout = p.parse(
            ENV_STREAM_IDLE_TIMEOUT,
            DEFAULT_STREAM_IDLE_TIMEOUT,
            positive_duration,
        );
        let opaque_ports = p.parse(ENV_OPAQUE_PORTS, DEFAULT_OPAQUE_PORTS, ports);
        let app_probes = p.parse(ENV_APP_PROBES, "{}", AppProbes::parse);
        let control = control_plane(&mut p, identity.as_ref());
        let control_admin_addr = p.parse(
            ENV_CONTROL_ADMIN_ADDR,
            DEFAULT_CONTROL_ADMIN_ADDR,
            socket_addr,
        );
        let control_admin = match (&control, control_admin_addr) {
            (Some(c), Some(addr)) => Some((addr, c.id.clone())),
            // static mode: only when asked for, with the peer named
            (None, Some(addr)) if p.raw(ENV_CONTROL_ADMIN_ADDR).is_some() => {
                match p.raw(ENV_CONTROL_ID) {
                    Some(_) => p
                        .required(ENV_CONTROL_ID, |s| {
                            SpiffeId::from_str(s).map_err(|e| format!("is not a spiffe id: {e}"))
                        })
                        .map(|id| (addr, id)),
                    None => {
                        p.bad.push(BadVar {
                            name: ENV_CONTROL_ID,
                            problem: format!(
                                "is required in static mode when {ENV_CONTROL_ADMIN_ADDR} is set: \
                                 set the SPIFFE id of the only client the listener serves, or \
                                 unset {ENV_CONTROL_ADMIN_ADDR}"
                            ),
                        });
                        None
                    }
                }
            }
            _ => None,
        };
        let tap_mask = p.parse(
            ENV_TAP_MASK_HEADERS,
            DEFAULT_TAP_MASK_HEADERS,
            crate::tap::mask::Masker::parse,
        );
        let access_log = p.parse(ENV_ACCESS_LOG, DEFAULT_ACCESS_LOG, |s| match s {
            "off" => Ok(false),
            "json" => Ok(true),
            _ => Err("must be off or json".to_string()),
        });
        let audit = match p.raw(ENV_AUDIT).as_deref() {
            None => Some(None),
            Some(_) => p
                .required(ENV_AUDIT, |s| match s {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    _ => Err("must be on or off".to_string()),
                })
                .map(Some),
        };
        let audit_deny_rate = p.parse(ENV_AUDIT_DENY_RATE, DEFAULT_AUDIT_DENY_RATE, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n <= 100_000)
                .ok_or_else(|| {
                    "must be a whole number of denials per second from 0 to 100000".to_string()
                })
        });
        let log = p.raw(ENV_LOG).unwrap_or_else(|| DEFAULT_LOG.to_string());
        let cores = p.parse(ENV_CORES, DEFAULT_CORES, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| "must be a whole number of threads from 1 to 64".to_string())
        });
        let log_format = p.parse(ENV_LOG_FORMAT, DEFAULT_LOG_FORMAT, |s| match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be plain or json".to_string()),
        });
        let http1_transport = p.parse(ENV_HTTP1_TRANSPORT, DEFAULT_HTTP1_TRANSPORT, |s| match s {
            "http1" => Ok(Http1Transport::Http1),
            "h2" => Ok(Http1Transport::H2),
            _ => Err("must be http1 or h2".to_string()),
        });

        match (
            outbound_addr,
            inbound_addr,
            admin_addr,
            inbound_app_host,
            identity,
            leaf_lifetime,
            detect_timeout.zip(detect_first_byte),
            connect_timeout,
            header_read_timeout,
            max_header_bytes,
            shutdown_grace,
            stream_idle_timeout,
            opaque_ports,
            log_format,
            cores,
            http1_transport,
            app_probes,
            tap_mask.zip(access_log),
            audit.zip(audit_deny_rate),
        ) {
            (
                Some(outbound_addr),
                Some(inbound_addr),
                Some(admin_addr),
                Some(inbound_app_host),
                Some(identity),
                Some(leaf_lifetime),
                Some((detect_timeout, detect_first_byte)),
                Some(connect_timeout),
                Some(header_read_timeout),
                Some(max_header_bytes),
                Some(shutdown_grace),
                Some(stream_idle_timeout),
                Some(opaque_ports),
                Some(log_format),
                Some(cores),
                Some(http1_transport),
                Some(app_probes),
                Some((tap_mask, access_log)),
                Some((audit, audit_deny_rate)),
            ) if p.bad.is_empty() => Ok(Config {
                outbound_addr,
                inbound_addr,
                admin_addr,
                inbound_app_host,
                workload: workload.unwrap_or_else(|| identity.service_account().to_string()),
                identity,
                trust_anchors,
                static_config,
                issuer_cert,
                issuer_key,
                leaf_lifetime,
                detect_timeout,
                detect_first_byte,
                connect_timeout,
                header_read_timeout,
                max_header_bytes,
                shutdown_grace,
                stream_idle_timeout,
                opaque_ports,
                log,
                log_format,
                cores,
                http1_transport,
                control,
                app_probes: Arc::new(app_probes),
                control_admin,
                tap_mask,
                access_log,
                audit,
                audit_deny_rate,
            }),
            _ => Err(ConfigError::Invalid(p.bad)),
        }
    }
}

#[cfg(test)]
mod tests;
