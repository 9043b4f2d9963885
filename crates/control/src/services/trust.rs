//! `Identity.WatchTrust`: the live trust bundle and issuer, and the registry of what every
//! connected proxy reports it holds.
//!
//! A stream needs a mesh client certificate. The server sends a [`TrustUpdate`] at once and again
//! whenever the CA's fingerprint changes; the proxy sends a [`TrustReport`] on open, after each
//! update and after each renewal. The registry keeps one entry per open stream (peer id and
//! address, the fingerprint it applied, what its leaf is and which issuer signed it); the entry
//! goes when the stream ends. Rotations wait on it (it is their [`Fleet`]) and `Admin.Trust`
//! lists it.
//!
//! A report is checked before it counts: at most [`MAX_CHAIN_CERTS`] certificates of at most
//! [`MAX_CERT_BYTES`] each, a fingerprint of 32 bytes (or none), a leaf for the stream's own id.
//! Its issuer is counted only when the whole chain verifies against the current bundle, so a
//! proxy cannot claim a renewal it did not get. Bad reports end the stream with
//! INVALID_ARGUMENT. The registry holds at most [`MAX_STREAMS`] entries (RESOURCE_EXHAUSTED past
//! that); an entry is a few hundred bytes, never the chain itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use onemesh_api::admin::ProxyTrust;
use onemesh_api::identity::{TrustReport, TrustUpdate};
use onemesh_identity::{CertificateDer, Issued, SpiffeId, verify_peer};
use tokio::sync::watch;
use tonic::Status;

use crate::pki::cert::{self, CertSummary};
use crate::pki::rotation::{Fleet, FleetProgress, Goal};
use crate::pki::state::CaSnapshot;
use crate::server::PeerInfo;
use crate::services::WatchStream;

/// Most certificates a report's chain may hold (leaf, issuer, a further intermediate or two).
pub const MAX_CHAIN_CERTS: usize = 4;
/// Largest certificate a report may carry (onemesh's are under 1 KiB).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Most WatchTrust streams open at once.
pub const MAX_STREAMS: usize = 65_536;

/// Why a WatchTrust stream was refused or ended.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "WatchTrust needs a mesh client certificate: connect with the proxy's current leaf (Certify first)"
    )]
    NoCertificate,
    #[error("too many trust watchers ({MAX_STREAMS}): try again later")]
    TooManyStreams,
    #[error(
        "the report's fingerprint has {0} bytes: send the 32-byte fingerprint of the last update applied, or none"
    )]
    Fingerprint(usize),
    #[error(
        "the report's chain has {0} certificates, at most {MAX_CHAIN_CERTS} are accepted: send the leaf and its issuer"
    )]
    ChainTooLong(usize),
    #[error(
        "a certificate of the report's chain has {0} bytes, at most {MAX_CERT_BYTES} are accepted"
    )]
    CertTooBig(usize),
    #[error("the report's leaf is unreadable ({0}): send the chain the proxy serves, leaf first")]
    BadLeaf(String),
    #[error(
        "the report's leaf is for {found}, but this stream is {peer}'s: report the proxy's own chain"
    )]
    OtherId { peer: SpiffeId, found: SpiffeId },
}

impl From<TrustError> for Status {
    fn from(e: TrustError) -> Status {
        let message = e.to_string();
        match e {
            TrustError::NoCertificate => Status::unauthenticated(message),
            TrustError::TooManyStreams => Status::resource_exhausted(message),
            TrustError::Fingerprint(_)
            | TrustError::ChainTooLong(_)
            | TrustError::CertTooBig(_)
            | TrustError::BadLeaf(_)
            | TrustError::OtherId { .. } => Status::invalid_argument(message),
        }
    }
}

/// One open stream's proxy.
#[derive(Clone, Debug)]
struct Entry {
    id: SpiffeId,
    addr: SocketAddr,
    /// The fingerprint of the last update it applied.
    fingerprint: Option<[u8; 32]>,
    leaf: Option<Leaf>,
}

#[derive(Clone, Debug)]
struct Leaf {
    summary: CertSummary,
    /// SHA-256 of the issuer that signed it, when the chain verified against the bundle.
    issuer: Option<[u8; 32]>,
}

/// The connected proxies (see the module doc).
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
    next_key: AtomicU64,
    changes: watch::Sender<()>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Registry {
            entries: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            changes: watch::Sender::new(()),
        })
    }

    /// Every connected proxy as `Admin.Trust` shows it, against `ca`.
    pub fn proxies(&self, ca: &CaSnapshot) -> Vec<ProxyTrust> {
        let issuer = ca.issuer_sha256();
        let mut proxies: Vec<ProxyTrust> = self
            .lock()
            .values()
            .map(|e| ProxyTrust {
                id: e.id.to_string(),
                addr: e.addr.to_string(),
                leaf: e.leaf.as_ref().map(|l| l.summary.to_api()),
                current_issuer: e.leaf.as_ref().and_then(|l| l.issuer) == Some(issuer),
                current_bundle: e.fingerprint == Some(ca.fingerprint),
            })
            .collect();
        proxies.sort_by(|a, b| (&a.id, &a.addr).cmp(&(&b.id, &b.addr)));
        proxies
    }

    fn join(self: &Arc<Self>, id: SpiffeId, addr: SocketAddr) -> Result<Membership, TrustError> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = self.lock();
            if entries.len() >= MAX_STREAMS {
                return Err(TrustError::TooManyStreams);
            }
            entries.insert(
                key,
                Entry {
                    id,
                    addr,
                    fingerprint: None,
                    leaf: None,
                },
            );
        }
        self.changes.send_replace(());
        Ok(Membership {
            registry: self.clone(),
            key,
        })
    }

    fn report(&self, key: u64, fingerprint: Option<[u8; 32]>, leaf: Option<Leaf>) {
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.fingerprint = fingerprint;
            entry.leaf = leaf;
        }
        self.changes.send_replace(());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Fleet for Registry {
    fn progress(&self, goal: &Goal) -> FleetProgress {
        let entries = self.lock();
        let mut progress = FleetProgress {
            total: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            ..FleetProgress::default()
        };
        for e in entries.values() {
            let done = match goal {
                Goal::Fingerprint(f) => e.fingerprint.as_ref() == Some(f),
                Goal::Issuer(i) => e.leaf.as_ref().and_then(|l| l.issuer.as_ref()) == Some(i),
            };
            if done {
                progress.done += 1;
            } else {
                progress.pending.push(format!("{} @ {}", e.id, e.addr));
            }
        }
        progress.pending.sort();
        progress
    }

    fn changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }
}

/// A stream's entry; removed when the stream (and so this) is dropped.
struct Membership {
    registry: Arc<Registry>,
    key: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
        self.registry.changes.send_replace(());
    }
}

/// Serves WatchTrust streams.
#[derive(Clone)]
pub struct TrustService {
    registry: Arc<Registry>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    renew_within: Duration,
    shutdown: watch::Receiver<bool>,
}

impl TrustService {
    pub fn new(
        registry: Arc<Registry>,
        ca: watch::Receiver<Arc<CaSnapshot>>,
        renew_within: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        TrustService {
            registry,
            ca,
            renew_within,
            shutdown,
        }
    }

    /// A WatchTrust stream for `peer` (the connection's verified client, if any) reading
    /// `reports`.
    pub fn watch<S>(
        &self,
        peer: Option<&PeerInfo>,
        reports: S,
    ) -> Result<WatchStream<TrustUpdate>, TrustError>
    where
        S: Stream<Item = Result<TrustReport, Status>> + Send + Unpin + 'static,
    {
        let (id, addr) = match peer {
            Some(PeerInfo {
                id: Some(id), addr, ..
            }) => (id.clone(), *addr),
            _ => return Err(TrustError::NoCertificate),
        };
        let membership = self.registry.join(id.clone(), addr)?;
        let mut ca = self.ca.clone();
        ca.mark_changed();
        let session = Session {
            reports,
            ca,
            shutdown: self.shutdown.clone(),
            membership,
            id,
            renew_within_ms: u32::try_from(self.renew_within.as_millis()).unwrap_or(u32::MAX),
            sent: None,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            Some(session),
            |session| async move {
                let mut session = session?;
                match session.next().await {
                    Some(Ok(update)) => Some((Ok(update), Some(session))),
                    Some(Err(status)) => Some((Err(status), None)),
                    None => None,
                }
            },
        )))
    }
}

struct Session<S> {
    reports: S,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    shutdown: watch::Receiver<bool>,
    membership: Membership,
    id: SpiffeId,
    renew_within_ms: u32,
    /// The fingerprint of the last update sent.
    sent: Option<[u8; 32]>,
}

impl<S> Session<S>
where
    S: Stream<Item = Result<TrustReport, Status>> + Send + Unpin + 'static,
{
    /// The next update to send, an error that ends the stream, or `None` when it ends.
    async fn next(&mut self) -> Option<Result<TrustUpdate, Status>> {
        loop {
            if *self.shutdown.borrow_and_update() {
                return None;
            }
            tokio::select! {
                changed = self.ca.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let ca = self.ca.borrow_and_update().clone();
                    if self.sent != Some(ca.fingerprint) {
                        self.sent = Some(ca.fingerprint);
                        return Some(Ok(update(&ca, self.renew_within_ms)));
                    }
                }
                report = self.reports.next() => match report {
                    Some(Ok(report)) => {
                        let ca = self.ca.borrow().clone();
                        match check_report(&report, &self.id, &ca, SystemTime::now()) {
                            Ok((fingerprint, leaf)) => {
                                self.membership.registry.report(self.membership.key, fingerprint, leaf)
                            }
                            Err(e) => {
                                tracing::warn!(peer = %self.id, "trust report refused: {e}");
                                return Some(Err(e.into()));
                            }
                        }
                    }
                    // The proxy closed its side or went away: the stream (and its entry) ends.
                    Some(Err(_)) | None => return None,
                },
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}

fn update(ca: &CaSnapshot, renew_within_ms: u32) -> TrustUpdate {
    TrustUpdate {
        fingerprint: ca.fingerprint.to_vec(),
        trust_anchors: ca.bundle.roots().iter().map(|c| c.to_vec()).collect(),
        issuer: ca.issuer_cert.to_vec(),
        renew_within_ms,
    }
}

/// Checks a report (see the module doc): what it applied, and its leaf with the issuer's SHA-256
/// when the chain verifies against `ca`'s bundle at `now`.
fn check_report(
    report: &TrustReport,
    peer: &SpiffeId,
    ca: &CaSnapshot,
    now: SystemTime,
) -> Result<(Option<[u8; 32]>, Option<Leaf>), TrustError> {
    let fingerprint = match report.fingerprint.len() {
        0 => None,
        32 => {
            let mut f = [0u8; 32];
            f.copy_from_slice(&report.fingerprint);
            Some(f)
        }
        n => return Err(TrustError::Fingerprint(n)),
    };
    if report.chain.len() > MAX_CHAIN_CERTS {
        return Err(TrustError::ChainTooLong(report.chain.len()));
    }
    if let Some(big) = report.chain.iter().find(|c| c.len() > MAX_CERT_BYTES) {
        return Err(TrustError::CertTooBig(big.len()));
    }
    if report.chain.is_empty() {
        return Ok((fingerprint, None));
    }
    let chain: Vec<CertificateDer<'static>> = report
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let issued = Issued::from_chain(chain).map_err(|e| TrustError::BadLeaf(e.to_string()))?;
    if &issued.id != peer {
        return Err(TrustError::OtherId {
            peer: peer.clone(),
            found: issued.id,
        });
    }
    let summary =
        CertSummary::parse(issued.leaf()).map_err(|e| TrustError::BadLeaf(e.to_string()))?;
    let issuer = match verify_peer(&ca.bundle, &issued.chain, now, peer.trust_domain(), None) {
        Ok(_) => issued.chain.get(1).map(|c| cert::sha256(c)),
        Err(e) => {
            tracing::debug!(peer = %peer, "reported chain does not verify against the bundle: {e}");
            None
        }
    };
    Ok((fingerprint, Some(Leaf { summary, issuer })))
}

#[cfg(test)]
mod tests;
