//! The operator's trust commands: `onemesh identity trust` (anchors, issuer, every proxy's leaf),
//! `rotate-anchor`, `rotate-issuer` and `revoke`, all calls to the control plane's `Admin`
//! service, plus the CA-expiry lines of `onemesh check`.
//!
//! The Admin service answers only the operator's client certificate. The control plane writes it
//! to the state directory (`operator.crt`, `operator.key`, renewed with each issuer); this module
//! reads it, with the trust bundle (`trust-anchors.pem`), on every dial, so a channel opened
//! before a rotation and redialled after it still verifies the control plane (whose identity
//! `spiffe://<td>/ns/onemesh/sa/control` comes from the layout). TLS 1.3 with ALPN `h2` through
//! tokio-rustls, as the proxies do; nothing here is shared with the proxy's code.
//!
//! A rotation runs to its end in the control plane whether or not this command keeps watching:
//! Ctrl-C here stops only the printing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use onemesh_api::admin::admin_client::AdminClient;
use onemesh_api::admin::{
    Certificate, RevokeRequest, RotateRequest, RotationProgress, TrustRequest, TrustStatus,
};
use onemesh_control::pki::expiry::{self, CaPart, Expiry, ExpiryLevel};
use onemesh_control::pki::{OPERATOR_CERT_FILE, OPERATOR_KEY_FILE, TRUST_ANCHORS_FILE};
use onemesh_identity::{CredentialStore, Issued, SpiffeId, TrustBundle, WorkloadKey};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Output;
use crate::layout::Layout;
use crate::table::render;

/// ALPN for gRPC.
const ALPN_H2: &[u8] = b"h2";
/// How long a dial (TCP + TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary Admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A silently dead control plane is noticed within interval + timeout during a rotation.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The control plane writes `operator.key` before `operator.crt` at start: a read that catches
/// the new key with the old certificate is tried again after this.
const CREDENTIALS_RETRY: Duration = Duration::from_millis(300);
const CREDENTIALS_TRIES: u32 = 10;

/// Which rotation `onemesh identity rotate-*` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    Anchor,
    Issuer,
}

impl Rotation {
    fn what(self) -> &'static str {
        match self {
            Rotation::Anchor => "trust anchor",
            Rotation::Issuer => "issuer",
        }
    }
}

/// Parses `--deadline`: a number with a unit `s`, `m` or `h` (`90s`, `5m`, `1h`); a bare number
/// is seconds.
pub fn parse_deadline(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 90s, 5m or 1h"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use s, m or h (e.g. 5m)"
            ));
        }
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is out of range: give at least 1s"))?;
    Ok(Duration::from_secs(secs))
}

/// The operator's credentials and the trust bundle, read from the state directory. Blocking (it
/// may wait out a write in progress): call it on the blocking pool.
fn load_credentials(dir: &Path, trust_domain: &str) -> anyhow::Result<CredentialStore> {
    let operator = onemesh_control::pki::operator_id(trust_domain)
        .with_context(|| format!("the layout's trust domain {trust_domain:?} is not valid"))?;
    let mut tries = 0;
    loop {
        tries += 1;
        match try_load_credentials(dir, &operator) {
            Ok(store) => return Ok(store),
            // Only a key/certificate mismatch can be a write in progress; a missing or unreadable
            // file is reported at once.
            Err(Load::Mismatch(_)) if tries < CREDENTIALS_TRIES => {
                std::thread::sleep(CREDENTIALS_RETRY);
            }
            Err(Load::Mismatch(e)) | Err(Load::Other(e)) => return Err(e),
        }
    }
}

enum Load {
    Mismatch(anyhow::Error),
    Other(anyhow::Error),
}

fn try_load_credentials(dir: &Path, operator: &SpiffeId) -> Result<CredentialStore, Load> {
    let read = |name: &str| -> Result<String, Load> {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "cannot read {}: the control plane writes it at start; is `onemesh up` running \
                     with this --state-dir, and are you the user who started it?",
                    path.display()
                )
            })
            .map_err(Load::Other)
    };
    let bad = |name: &str, e: onemesh_identity::Error| {
        Load::Other(anyhow::anyhow!(
            "{} is not valid ({e}): restart `onemesh up` to have it written again",
            dir.join(name).display()
        ))
    };
    let key =
        WorkloadKey::from_pem(&read(OPERATOR_KEY_FILE)?).map_err(|e| bad(OPERATOR_KEY_FILE, e))?;
    let issued = Issued::from_chain_pem(&read(OPERATOR_CERT_FILE)?)
        .map_err(|e| bad(OPERATOR_CERT_FILE, e))?;
    let bundle = TrustBundle::from_pem(&read(TRUST_ANCHORS_FILE)?)
        .map_err(|e| bad(TRUST_ANCHORS_FILE, e))?;
    if issued.id != *operator {
        return Err(Load::Other(anyhow::anyhow!(
            "{} is for {}, not the operator {operator}: restart `onemesh up` to have it written again",
            dir.join(OPERATOR_CERT_FILE).display(),
            issued.id
        )));
    }
    CredentialStore::new(operator.clone(), key, issued, bundle).map_err(|e| {
        Load::Mismatch(anyhow::anyhow!(
            "{} does not match {} ({e}): the control plane may be writing them; try again, or \
             restart `onemesh up`",
            dir.join(OPERATOR_CERT_FILE).display(),
            dir.join(OPERATOR_KEY_FILE).display()
        ))
    })
}

/// A client of the Admin service of the mesh whose state is in `dir`.
pub struct Admin {
    client: AdminClient<Channel>,
    addr: String,
}

impl Admin {
    /// Connects to the control plane's identity address from the layout, as the operator.
    pub async fn connect(dir: &Path) -> anyhow::Result<Admin> {
        let layout = Layout::load(dir)?;
        let control: SpiffeId = layout.control.id.parse().with_context(|| {
            format!(
                "the layout's control plane id {:?} is not a SPIFFE id",
                layout.control.id
            )
        })?;
        // Fail early, with the file's own message, when the credentials cannot be read at all.
        let (owned, td) = (dir.to_path_buf(), layout.trust_domain.clone());
        tokio::task::spawn_blocking(move || load_credentials(&owned, &td)).await??;
        let addr = layout.control.identity.clone();
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .with_context(|| format!("{addr:?} is not a valid control plane address"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let dir: PathBuf = dir.to_path_buf();
        let trust_domain = layout.trust_domain.clone();
        let dial_addr = addr.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let (dir, trust_domain, addr) = (dir.clone(), trust_domain.clone(), dial_addr.clone());
            let control = control.clone();
            async move {
                let store =
                    tokio::task::spawn_blocking(move || load_credentials(&dir, &trust_domain))
                        .await
                        .map_err(std::io::Error::other)?
                        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                let config = store.client_config(&control, &[ALPN_H2]);
                dial(&addr, config, control.tls_server_name()).await
            }
        });
        let channel = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            endpoint.connect_with_connector(connector),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the control plane at {addr} did not answer within {:?}: see its log lines in the output of `onemesh up`", CONNECT_TIMEOUT * 2))?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the control plane's identity service at {addr}: {}; is `onemesh up` running? (`onemesh check` tells)",
                chain(&e)
            )
        })?;
        Ok(Admin {
            client: AdminClient::new(channel),
            addr,
        })
    }

    /// `Admin.Trust`.
    pub async fn trust(&mut self) -> anyhow::Result<TrustStatus> {
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.client.trust(TrustRequest {}))
            .await
            .map_err(|_| self.timed_out())?;
        Ok(answer.map_err(|s| refused("Trust", &s))?.into_inner())
    }

    /// `Admin.Revoke`: whether the id was newly revoked.
    pub async fn revoke(&mut self, id: &str) -> anyhow::Result<bool> {
        let request = RevokeRequest { id: id.to_string() };
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.client.revoke(request))
            .await
            .map_err(|_| self.timed_out())?;
        Ok(answer
            .map_err(|s| refused("Revoke", &s))?
            .into_inner()
            .newly_revoked)
    }

    fn timed_out(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the control plane at {} did not answer within {CALL_TIMEOUT:?}: see its log lines in the output of `onemesh up`",
            self.addr
        )
    }
}

async fn dial(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    Ok(TokioIo::new(tls))
}

/// An error and its sources on one line (a transport error's cause is in its sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A refused or failed Admin call, with the control plane's reason (which says what to do).
fn refused(call: &str, status: &tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let what = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => "refused the operator's credentials",
        Code::FailedPrecondition => "cannot do it now",
        Code::InvalidArgument => "refused the request",
        Code::Unavailable => "is unavailable",
        _ => "failed",
    };
    let message = status.message();
    let message = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_string()
    };
    anyhow::anyhow!("the control plane {what} ({call}): {message}")
}

/// `onemesh identity rotate-anchor|rotate-issuer`: starts the rotation and prints each progress
/// message until the last (`done`). `Ok(false)` when the stream ends before it.
///
/// First it compares the proxies connected to the control plane with the workloads of the
/// layout: a proxy that is not connected does not follow a rotation. For an issuer rotation that
/// is a warning (it renews from the new issuer when it reconnects); an anchor rotation is refused
/// unless `force` (such a proxy would keep trusting only the old anchor and could neither reach
/// the control plane nor be reached once its peers hold leaves from the new one).
pub async fn rotate(
    dir: &Path,
    which: Rotation,
    deadline: Duration,
    force: bool,
) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let mut admin = Admin::connect(dir).await?;
    let status = admin.trust().await?;
    let missing = not_connected(&layout, &status);
    if !missing.is_empty() {
        let list = missing.join(", ");
        match (which, force) {
            (Rotation::Anchor, false) => {
                println!(
                    "× not rotating the trust anchor: the proxies of {list} are not connected to                      the control plane and would not follow (check them with `onemesh check`, or                      pass --force to rotate without them)"
                );
                return Ok(false);
            }
            _ => println!(
                "! the proxies of {list} are not connected to the control plane: they will not                  follow this rotation until they reconnect"
            ),
        }
    }
    let request = RotateRequest {
        deadline_secs: deadline.as_secs(),
    };
    let started = Instant::now();
    let answer = match which {
        Rotation::Anchor => admin.client.rotate_anchor(request).await,
        Rotation::Issuer => admin.client.rotate_issuer(request).await,
    };
    let call = match which {
        Rotation::Anchor => "RotateAnchor",
        Rotation::Issuer => "RotateIssuer",
    };
    let mut stream = answer.map_err(|s| refused(call, &s))?.into_inner();
    println!(
        "rotating the {} (each step waits up to {} for every connected proxy)",
        which.what(),
        human_duration(deadline.as_secs() as i64)
    );
    let mut stragglers_seen = false;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                println!(
                    "× the control plane ended the progress stream before the rotation was done \
                     — it goes on in the control plane: `onemesh identity trust` shows its step"
                );
                return Ok(false);
            }
            Err(s) => {
                println!(
                    "× lost the progress stream: {} — a started rotation goes on in the control \
                     plane: `onemesh identity trust` shows its step",
                    refused(call, &s)
                );
                return Ok(false);
            }
        };
        stragglers_seen |= !message.stragglers.is_empty();
        print!("{}", progress_line(&message, started.elapsed()));
        if message.done {
            if stragglers_seen {
                println!(
                    "the {} is rotated; the stragglers above did not confirm a step in time: \
                     check them with `onemesh check` (a proxy that missed the new anchor needs a \
                     restart)",
                    which.what()
                );
            } else {
                println!(
                    "the {} is rotated in {:.1}s; every connected proxy followed",
                    which.what(),
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(true);
        }
    }
}

/// The workloads of the layout (`namespace/name`) whose proxy is not among the connected ones.
pub fn not_connected(layout: &Layout, status: &TrustStatus) -> Vec<String> {
    layout
        .workloads
        .iter()
        .filter(|w| !status.proxies.iter().any(|p| p.id == w.identity))
        .map(|w| w.key())
        .collect()
}

/// One progress message: `[  1.2s] step  done/total`, and the stragglers on the next line.
pub fn progress_line(p: &RotationProgress, elapsed: Duration) -> String {
    let mut line = format!(
        "[{:>6.1}s] {:<32}  {}/{}\n",
        elapsed.as_secs_f64(),
        p.step,
        p.done_proxies,
        p.total_proxies
    );
    if !p.stragglers.is_empty() {
        line.push_str(&format!(
            "          stragglers: {}\n",
            p.stragglers.join(", ")
        ));
    }
    line
}

/// `onemesh identity revoke <id>`.
pub async fn revoke(dir: &Path, id: &str) -> anyhow::Result<bool> {
    let mut admin = Admin::connect(dir).await?;
    let newly = admin.revoke(id).await?;
    if newly {
        println!("revoked {id}: the control plane certifies it no more (by token or by leaf)");
    } else {
        println!("{id} was revoked already: the control plane certifies it no more");
    }
    println!(
        "certificates already issued to it stay valid until they expire (24 h at most by \
         default); stop the workload to cut it off sooner"
    );
    Ok(true)
}

/// A certificate as `onemesh identity trust -o json` shows it.
#[derive(Debug, Serialize)]
pub struct CertView {
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub serial: String,
    pub sha256: String,
    pub not_before_unix_secs: i64,
    pub not_after_unix_secs: i64,
}

impl From<&Certificate> for CertView {
    fn from(c: &Certificate) -> Self {
        CertView {
            subject: c.subject.clone(),
            id: c.id.clone(),
            serial: c.serial.clone(),
            sha256: c.sha256.clone(),
            not_before_unix_secs: c.not_before_unix_secs,
            not_after_unix_secs: c.not_after_unix_secs,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProxyView {
    pub id: String,
    pub addr: String,
    pub leaf: Option<CertView>,
    pub current_issuer: bool,
    pub current_bundle: bool,
}

/// `onemesh identity trust -o json`.
#[derive(Debug, Serialize)]
pub struct TrustView {
    pub anchors: Vec<CertView>,
    pub issuer: Option<CertView>,
    pub proxies: Vec<ProxyView>,
    pub revoked: Vec<String>,
    /// The rotation under way (its step), if any.
    pub rotation: Option<String>,
}

impl From<&TrustStatus> for TrustView {
    fn from(s: &TrustStatus) -> Self {
        TrustView {
            anchors: s.anchors.iter().map(CertView::from).collect(),
            issuer: s.issuer.as_ref().map(CertView::from),
            proxies: s
                .proxies
                .iter()
                .map(|p| ProxyView {
                    id: p.id.clone(),
                    addr: p.addr.clone(),
                    leaf: p.leaf.as_ref().map(CertView::from),
                    current_issuer: p.current_issuer,
                    current_bundle: p.current_bundle,
                })
                .collect(),
            revoked: s.revoked.clone(),
            rotation: Some(s.rotation.clone()).filter(|r| !r.is_empty()),
        }
    }
}

/// `onemesh identity` / `onemesh identity trust`: exit 1 when a CA certificate is within
/// [`expiry::EXPIRY_FAIL`] of its end or a connected proxy's leaf has expired.
pub async fn show(dir: &Path, out: Output) -> anyhow::Result<bool> {
    let mut admin = Admin::connect(dir).await?;
    let status = admin.trust().await?;
    let now = SystemTime::now();
    let now_secs = unix(now);
    let ca_ok = expiry::expiries_from_status(&status)
        .iter()
        .all(|e| e.level(now) != ExpiryLevel::Fail);
    let leaves_ok = status.proxies.iter().all(|p| {
        p.leaf
            .as_ref()
            .is_some_and(|l| l.not_after_unix_secs > now_secs)
    });
    if out == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&TrustView::from(&status))?
        );
    } else {
        print!("{}", render_trust(&status, now_secs, out == Output::Wide));
    }
    Ok(ca_ok && leaves_ok)
}

/// The table form of `Admin.Trust`'s answer at `now` (unix seconds).
pub fn render_trust(s: &TrustStatus, now: i64, wide: bool) -> String {
    let mut text = String::new();
    let mut ca: Vec<Vec<String>> = Vec::new();
    let mut ca_row = |part: &str, c: &Certificate| {
        let mut row = vec![
            part.to_string(),
            c.subject.clone(),
            short(&c.sha256),
            date(c.not_after_unix_secs),
            remaining(c.not_after_unix_secs - now),
        ];
        if wide {
            row.push(c.sha256.clone());
        }
        ca.push(row);
    };
    for a in &s.anchors {
        ca_row("anchor", a);
    }
    if let Some(i) = &s.issuer {
        ca_row("issuer", i);
    }
    let mut header = vec!["CA", "SUBJECT", "SHA256", "NOT AFTER", "EXPIRES"];
    if wide {
        header.push("SHA256 (FULL)");
    }
    text.push_str(&render(&header, &ca));
    text.push('\n');
    let proxies: Vec<Vec<String>> = s
        .proxies
        .iter()
        .map(|p| {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            let (serial, after, left) = match &p.leaf {
                Some(l) => (
                    l.serial.clone(),
                    date(l.not_after_unix_secs),
                    remaining(l.not_after_unix_secs - now),
                ),
                None => ("-".into(), "-".into(), "no leaf reported".into()),
            };
            let mut row = vec![
                p.id.clone(),
                if wide { serial } else { short(&serial) },
                after,
                left,
                yes(p.current_issuer),
                yes(p.current_bundle),
            ];
            if wide {
                row.push(p.addr.clone());
            }
            row
        })
        .collect();
    let mut header = vec![
        "PROXY",
        "SERIAL",
        "NOT AFTER",
        "EXPIRES",
        "CURRENT ISSUER",
        "CURRENT BUNDLE",
    ];
    if wide {
        header.push("ADDRESS");
    }
    text.push_str(&render(&header, &proxies));
    if s.proxies.is_empty() {
        text.push_str("(no proxy is connected to the control plane)\n");
    }
    text.push('\n');
    text.push_str(&format!(
        "rotation: {}\n",
        if s.rotation.is_empty() {
            "none under way"
        } else {
            &s.rotation
        }
    ));
    text.push_str(&format!(
        "revoked:  {}\n",
        if s.revoked.is_empty() {
            "none".to_string()
        } else {
            s.revoked.join(", ")
        }
    ));
    text
}

/// The first 16 hex digits (enough to tell certificates apart at a glance).
fn short(hex: &str) -> String {
    hex.chars().take(16).collect()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `3d 4h`, `5h 07m`, `42s` — the larger units only.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {:02}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// `in 3d 4h`, or `expired 5h 07m ago`.
pub fn remaining(left: i64) -> String {
    if left > 0 {
        format!("in {}", human_duration(left))
    } else {
        format!("expired {} ago", human_duration(-left))
    }
}

/// A unix time as a UTC date, `2035-06-01 12:00 UTC` (civil-from-days, proleptic Gregorian).
pub fn date(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// How one line of `onemesh check` looks: passed, a warning (does not fail the check), failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Pass,
    Warn,
    Fail,
}

/// One line of `onemesh check` as printed (the CA-expiry lines are made here).
#[derive(Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub mark: Mark,
    pub what: String,
    pub hint: String,
}

/// The "trust anchor expiry" and "issuer expiry" lines of `onemesh check`, from the CA files in
/// the state directory: a warning within 60 days, a failure within 7, each naming the command
/// that fixes it.
pub fn expiry_checks(dir: &Path, now: SystemTime) -> Vec<CheckLine> {
    match expiry::expiries(dir) {
        Ok(list) => judge_expiries(&list, now),
        Err(e) => vec![CheckLine {
            mark: Mark::Fail,
            what: "trust anchor and issuer expiry".into(),
            hint: format!("cannot read the CA in {}: {e}", dir.display()),
        }],
    }
}

/// [`expiry_checks`] on expiries already read.
pub fn judge_expiries(list: &[Expiry], now: SystemTime) -> Vec<CheckLine> {
    let now_secs = unix(now);
    list.iter()
        .map(|e| {
            let after = unix(e.not_after);
            let (part, command) = match e.part {
                CaPart::Anchor => ("trust anchor", "onemesh identity rotate-anchor"),
                CaPart::Issuer => ("issuer", "onemesh identity rotate-issuer"),
            };
            let what = format!(
                "{part} expiry: {} ({}) expires {}, {}",
                e.subject,
                short(&e.sha256),
                date(after),
                remaining(after - now_secs)
            );
            let (mark, hint) = match e.level(now) {
                ExpiryLevel::Ok => (Mark::Pass, String::new()),
                ExpiryLevel::Warn => (
                    Mark::Warn,
                    format!("less than 60 days left: rotate it soon with `{command}`"),
                ),
                ExpiryLevel::Fail => (
                    Mark::Fail,
                    format!(
                        "less than 7 days left: rotate it now with `{command}` (an expired {part} \
                         stops every mTLS connection of the mesh)"
                    ),
                ),
            };
            CheckLine { mark, what, hint }
        })
        .collect()
}

#[cfg(test)]
mod tests;
