//! The hot-swappable CA: what is trusted (the bundle), what signs (the current issuer), the key of
//! the anchor that signed it, and the rotation under way, persisted in the state directory.
//!
//! [`CaState`] publishes a [`CaSnapshot`] on a `tokio::sync::watch`: Certify signs with the
//! snapshot's issuer, WatchTrust streams send it, the control plane re-issues its own certificate
//! from it. Every change goes to disk before it is published, so nothing is sent to a proxy that
//! a restarted control plane would not know.
//!
//! Rotations are a sequence of steps, each committed by writing `rotation.json` (the journal):
//!
//! | step | written before the commit | done after the commit |
//! |---|---|---|
//! | anchor: join | `trust-anchor.next.{crt,key}` | the bundle gains the new anchor |
//! | anchor: swap | `issuer.next.{crt,key}` (under the new anchor) | the old anchor is copied to `trust-anchor.old.*`, the staged files renamed into place |
//! | issuer: swap | `issuer.next.{crt,key}` (under the current anchor) | the staged files renamed into place |
//! | anchor: leave | — | the bundle loses the old anchor |
//! | done | — | `trust-anchor.old.*` and `rotation.json` removed |
//!
//! [`CaState::open`] redoes the "after the commit" part of the journal's step (each action is
//! idempotent) and drops staged files that were never committed, so a control plane killed at
//! any moment starts again in a consistent state; the rotation driver ([`super::rotation`]) then
//! finishes the rotation. Making a brand-new CA is guarded the same way (`ca.creating`).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use onemesh_identity::{Issuer, TrustAnchor, TrustBundle};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::cert::{self, CertSummary};
use super::files::*;
use super::{CaSettings, PkiError};

/// One published state of the CA. Cheap to share (`Arc`); never changes once published.
pub struct CaSnapshot {
    /// What every proxy trusts.
    pub bundle: TrustBundle,
    /// What signs leaves now.
    pub issuer: Arc<Issuer>,
    /// The issuer's own certificate (DER) and what is shown of it.
    pub issuer_cert: CertificateDer<'static>,
    pub issuer_summary: CertSummary,
    /// SHA-256 over the bundle and the issuer (see [`cert::trust_fingerprint`]).
    pub fingerprint: [u8; 32],
}

impl CaSnapshot {
    pub fn new(issuer: Arc<Issuer>, bundle: TrustBundle) -> Result<Self, PkiError> {
        let bad = |e: cert::CertError| PkiError::BadCa {
            what: "issuer",
            reason: e.to_string(),
        };
        let issuer_cert = cert::pem_certs(&issuer.chain_pem())
            .map_err(bad)?
            .swap_remove(0);
        let issuer_summary = CertSummary::parse(&issuer_cert).map_err(bad)?;
        let fingerprint = cert::trust_fingerprint(bundle.roots(), &issuer_cert);
        Ok(CaSnapshot {
            bundle,
            issuer,
            issuer_cert,
            issuer_summary,
            fingerprint,
        })
    }

    /// SHA-256 of the issuer's certificate.
    pub fn issuer_sha256(&self) -> [u8; 32] {
        self.issuer_summary.sha256
    }

    /// How long a leaf asked for `wanted` may live from `now`: never past the issuer's expiry.
    /// `None` when the issuer has expired.
    pub fn leaf_lifetime(&self, wanted: Duration, now: SystemTime) -> Option<Duration> {
        let left = self.issuer_summary.not_after.duration_since(now).ok()?;
        (left >= Duration::from_secs(1)).then(|| wanted.min(left))
    }
}

/// Which rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationKind {
    Anchor,
    Issuer,
}

/// A rotation's committed step (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Join,
    Swap,
    Leave,
}

impl Step {
    /// The step as the Admin API and the logs name it.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Join => "new anchor in the bundle",
            Step::Swap => "leaves re-issued",
            Step::Leave => "old anchor removed",
        }
    }
}

/// The content of `rotation.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub kind: RotationKind,
    pub step: Step,
    /// How long each step waits for the connected proxies, milliseconds.
    pub deadline_ms: u64,
    /// Anchor rotation: SHA-256 (hex) of the anchor leaving and of the one joining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_anchor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_anchor: Option<String>,
}

impl Journal {
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    fn check(&self) -> Result<(), String> {
        match (self.kind, self.step, &self.old_anchor, &self.new_anchor) {
            (RotationKind::Issuer, Step::Swap, _, _) => Ok(()),
            (RotationKind::Issuer, step, _, _) => Err(format!(
                "an issuer rotation has no step {:?}",
                step.describe()
            )),
            (RotationKind::Anchor, _, Some(_), Some(_)) => Ok(()),
            (RotationKind::Anchor, _, _, _) => {
                Err("an anchor rotation names no old or new anchor".to_string())
            }
        }
    }
}

/// The hot-swappable, persisted CA (see the module doc).
pub struct CaState {
    files: Files,
    trust_domain: String,
    settings: CaSettings,
    tx: watch::Sender<Arc<CaSnapshot>>,
    keys: Mutex<Keys>,
}

/// What is not published: keys, and the rotation's journal.
struct Keys {
    /// The anchor that signs the current issuer; `None` for a CA the user brought (no key).
    anchor: Option<TrustAnchor>,
    /// Anchor rotation, step join: the new anchor, not yet signing.
    next: Option<TrustAnchor>,
    journal: Option<Journal>,
}

impl CaState {
    /// Loads the CA of `dir` (finishing an interrupted step, see the module doc), or makes a new
    /// one for `trust_domain` when none is there.
    pub fn open(dir: &Path, trust_domain: &str, settings: CaSettings) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let files = Files::new(dir);
        files.remove_temporaries()?;
        if files.exists(CREATING_FILE) {
            tracing::warn!(dir = %dir.display(), "making the CA was interrupted: making it again");
            for name in ALL_FILES {
                if name != CREATING_FILE && name != OPERATOR_CERT_FILE && name != OPERATOR_KEY_FILE
                {
                    files.remove(name)?;
                }
            }
        }
        let exists =
            [TRUST_ANCHORS_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE].map(|n| files.exists(n));
        let (keys, issuer, bundle) = match exists {
            [false, false, false] => create(&files, trust_domain, &settings)?,
            [true, true, true] => load(&files)?,
            _ => {
                let names = [TRUST_ANCHORS_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE];
                let present = names[exists.iter().position(|e| *e).unwrap_or(0)];
                let missing = names[exists.iter().position(|e| !*e).unwrap_or(0)];
                return Err(PkiError::Incomplete { present, missing });
            }
        };
        if issuer.trust_domain() != trust_domain {
            return Err(PkiError::TrustDomain {
                found: issuer.trust_domain().to_string(),
                wanted: trust_domain.to_string(),
            });
        }
        let snapshot = CaSnapshot::new(Arc::new(issuer), bundle)?;
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Ok(CaState {
            files,
            trust_domain: trust_domain.to_string(),
            settings,
            tx,
            keys: Mutex::new(keys),
        })
    }

    /// The CA now.
    pub fn current(&self) -> Arc<CaSnapshot> {
        self.tx.borrow().clone()
    }

    /// The CA now and on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaSnapshot>> {
        self.tx.subscribe()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    /// The rotation under way on disk, if any.
    pub fn journal(&self) -> Option<Journal> {
        self.lock().journal.clone()
    }

    /// The signing anchor's certificate, when its key is here (rotation is possible).
    pub fn anchor(&self) -> Option<CertSummary> {
        let keys = self.lock();
        let anchor = keys.anchor.as_ref()?;
        CertSummary::parse(anchor.cert_der()).ok()
    }

    /// Issuer rotation, committed at once: a new issuer under the current anchor signs from now
    /// on. Needs the anchor's key.
    pub fn rotate_issuer(&self, deadline: Duration) -> Result<Journal, PkiError> {
        let mut keys = self.lock();
        no_rotation(&keys)?;
        let anchor = keys.anchor.as_ref().ok_or(PkiError::NoAnchorKey)?;
        let current = self.current();
        self.check_trusted(anchor, &current.bundle)?;
        let issuer = anchor.issue_issuer(self.settings.issuer_lifetime)?;
        let snapshot = CaSnapshot::new(Arc::new(issuer), current.bundle.clone())?;
        self.stage_issuer(&snapshot)?;
        let journal = Journal {
            kind: RotationKind::Issuer,
            step: Step::Swap,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            old_anchor: None,
            new_anchor: None,
        };
        self.commit(&mut keys, journal.clone())?;
        promote_issuer(&self.files)?;
        self.publish(snapshot);
        tracing::info!(issuer = %cert::hex(&self.current().issuer_sha256()), "issuer rotated");
        Ok(journal)
    }

    /// Anchor rotation, step join: a new anchor joins the bundle (old and new trusted).
    pub fn begin_anchor_rotation(&self, deadline: Duration) -> Result<Journal, PkiError> {
        let mut keys = self.lock();
        no_rotation(&keys)?;
        let old = keys.anchor.as_ref().ok_or(PkiError::NoAnchorKey)?;
        let current = self.current();
        self.check_trusted(old, &current.bundle)?;
        let next = TrustAnchor::generate(&self.trust_domain, self.settings.anchor_lifetime)?;
        let bundle = current.bundle.merge(&next.bundle());
        let snapshot = CaSnapshot::new(current.issuer.clone(), bundle)?;
        self.files
            .write(NEXT_ANCHOR_KEY_FILE, &next.key_pem(), true)?;
        self.files
            .write(NEXT_ANCHOR_CERT_FILE, &next.cert_pem(), false)?;
        let journal = Journal {
            kind: RotationKind::Anchor,
            step: Step::Join,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            old_anchor: Some(cert::hex(&cert::sha256(old.cert_der()))),
            new_anchor: Some(cert::hex(&cert::sha256(next.cert_der()))),
        };
        self.commit(&mut keys, journal.clone())?;
        self.files
            .write(TRUST_ANCHORS_FILE, &snapshot.bundle.to_pem(), false)?;
        keys.next = Some(next);
        self.publish(snapshot);
        tracing::info!(
            new_anchor = journal.new_anchor.as_deref().unwrap_or(""),
            "a new trust anchor joined the bundle"
        );
        Ok(journal)
    }

    /// Anchor rotation, step swap: a new issuer under the new anchor signs from now on.
    pub fn anchor_swap_issuer(&self) -> Result<Journal, PkiError> {
        let mut keys = self.lock();
        let mut journal = expect_step(&keys, Step::Join)?;
        let next = keys.next.as_ref().ok_or(PkiError::Journal {
            reason: "the new anchor's key is missing".to_string(),
        })?;
        let issuer = next.issue_issuer(self.settings.issuer_lifetime)?;
        let current = self.current();
        let snapshot = CaSnapshot::new(Arc::new(issuer), current.bundle.clone())?;
        self.stage_issuer(&snapshot)?;
        journal.step = Step::Swap;
        self.commit(&mut keys, journal.clone())?;
        promote_anchor(&self.files)?;
        promote_issuer(&self.files)?;
        keys.anchor = keys.next.take();
        self.publish(snapshot);
        tracing::info!("the new anchor's issuer signs leaves now");
        Ok(journal)
    }

    /// Anchor rotation, step leave: the old anchor leaves the bundle.
    pub fn anchor_leave(&self) -> Result<Journal, PkiError> {
        let mut keys = self.lock();
        let mut journal = expect_step(&keys, Step::Swap)?;
        journal.step = Step::Leave;
        let current = self.current();
        let bundle = without(&current.bundle, journal.old_anchor.as_deref())?;
        let snapshot = CaSnapshot::new(current.issuer.clone(), bundle)?;
        self.commit(&mut keys, journal.clone())?;
        self.files
            .write(TRUST_ANCHORS_FILE, &snapshot.bundle.to_pem(), false)?;
        self.publish(snapshot);
        tracing::info!("the old trust anchor left the bundle");
        Ok(journal)
    }

    /// Ends the rotation: the old anchor's key is deleted, the journal removed.
    pub fn finish(&self) -> Result<(), PkiError> {
        let mut keys = self.lock();
        self.files.remove(OLD_ANCHOR_KEY_FILE)?;
        self.files.remove(OLD_ANCHOR_CERT_FILE)?;
        self.files.remove(ROTATION_FILE)?;
        keys.journal = None;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, snapshot: CaSnapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }

    fn commit(&self, keys: &mut Keys, journal: Journal) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(&journal).map_err(|e| PkiError::Journal {
            reason: e.to_string(),
        })?;
        self.files.write(ROTATION_FILE, &text, false)?;
        keys.journal = Some(journal);
        Ok(())
    }

    fn stage_issuer(&self, snapshot: &CaSnapshot) -> Result<(), PkiError> {
        self.files
            .write(NEXT_ISSUER_KEY_FILE, &snapshot.issuer.key_pem(), true)?;
        self.files
            .write(NEXT_ISSUER_CERT_FILE, &snapshot.issuer.chain_pem(), false)
    }

    /// An issuer made under `anchor` must chain to the bundle (not so when the user swapped in
    /// another CA's issuer and bundle but left our anchor key behind).
    fn check_trusted(&self, anchor: &TrustAnchor, bundle: &TrustBundle) -> Result<(), PkiError> {
        if bundle.roots().contains(anchor.cert_der()) {
            Ok(())
        } else {
            Err(PkiError::AnchorNotTrusted)
        }
    }
}

fn no_rotation(keys: &Keys) -> Result<(), PkiError> {
    match &keys.journal {
        Some(j) => Err(PkiError::RotationUnderWay(j.step.describe())),
        None => Ok(()),
    }
}

fn expect_step(keys: &Keys, step: Step) -> Result<Journal, PkiError> {
    match &keys.journal {
        Some(j) if j.kind == RotationKind::Anchor && j.step == step => Ok(j.clone()),
        other => Err(PkiError::Journal {
            reason: format!(
                "expected an anchor rotation at step {:?}, found {:?}",
                step.describe(),
                other.as_ref().map(|j| (j.kind, j.step.describe()))
            ),
        }),
    }
}

/// A new CA: anchor, issuer, bundle. `ca.creating` marks it unfinished until the bundle is there.
fn create(
    files: &Files,
    trust_domain: &str,
    settings: &CaSettings,
) -> Result<(Keys, Issuer, TrustBundle), PkiError> {
    files.write(CREATING_FILE, "", false)?;
    let anchor = TrustAnchor::generate(trust_domain, settings.anchor_lifetime)?;
    let issuer = anchor.issue_issuer(settings.issuer_lifetime)?;
    let bundle = anchor.bundle();
    files.write(TRUST_ANCHOR_KEY_FILE, &anchor.key_pem(), true)?;
    files.write(TRUST_ANCHOR_CERT_FILE, &anchor.cert_pem(), false)?;
    files.write(ISSUER_KEY_FILE, &issuer.key_pem(), true)?;
    files.write(ISSUER_CERT_FILE, &issuer.chain_pem(), false)?;
    files.write(TRUST_ANCHORS_FILE, &bundle.to_pem(), false)?;
    files.remove(CREATING_FILE)?;
    tracing::info!(dir = %files.path("").display(), trust_domain, "made a new trust anchor and issuer");
    let keys = Keys {
        anchor: Some(anchor),
        next: None,
        journal: None,
    };
    Ok((keys, issuer, bundle))
}

/// Loads an existing CA, first finishing the journal's committed step.
fn load(files: &Files) -> Result<(Keys, Issuer, TrustBundle), PkiError> {
    let journal = match files.read_optional(ROTATION_FILE)? {
        None => None,
        Some(text) => {
            let journal: Journal = serde_json::from_str(&text).map_err(|e| PkiError::Journal {
                reason: e.to_string(),
            })?;
            journal
                .check()
                .map_err(|reason| PkiError::Journal { reason })?;
            Some(journal)
        }
    };
    recover(files, journal.as_ref())?;

    let bundle = TrustBundle::from_pem(&files.read(TRUST_ANCHORS_FILE)?)
        .map_err(|e| load_error(files, TRUST_ANCHORS_FILE, e))?;
    let issuer = Issuer::from_pem(
        &files.read(ISSUER_CERT_FILE)?,
        &files.read(ISSUER_KEY_FILE)?,
    )
    .map_err(|e| load_error(files, ISSUER_CERT_FILE, e))?;
    let anchor = load_anchor(files, &bundle)?;
    let next = match &journal {
        Some(j) if j.kind == RotationKind::Anchor && j.step == Step::Join => Some(
            TrustAnchor::from_pem(
                &files.read(NEXT_ANCHOR_CERT_FILE)?,
                &files.read(NEXT_ANCHOR_KEY_FILE)?,
            )
            .map_err(|e| load_error(files, NEXT_ANCHOR_CERT_FILE, e))?,
        ),
        _ => None,
    };
    if let Some(j) = &journal {
        tracing::info!(
            kind = ?j.kind,
            step = j.step.describe(),
            "a rotation was under way: it goes on"
        );
    }
    let keys = Keys {
        anchor,
        next,
        journal,
    };
    Ok((keys, issuer, bundle))
}

/// Redoes what follows the commit of the journal's step, and drops what was staged for a step
/// that was never committed.
fn recover(files: &Files, journal: Option<&Journal>) -> Result<(), PkiError> {
    let step = journal.map(|j| (j.kind, j.step));
    let uncommitted_issuer = || -> Result<(), PkiError> {
        files.remove(NEXT_ISSUER_KEY_FILE)?;
        files.remove(NEXT_ISSUER_CERT_FILE)
    };
    match step {
        None => {
            uncommitted_issuer()?;
            for name in [
                NEXT_ANCHOR_CERT_FILE,
                NEXT_ANCHOR_KEY_FILE,
                OLD_ANCHOR_CERT_FILE,
                OLD_ANCHOR_KEY_FILE,
            ] {
                files.remove(name)?;
            }
        }
        Some((RotationKind::Issuer, _)) => promote_issuer(files)?,
        Some((RotationKind::Anchor, Step::Join)) => {
            uncommitted_issuer()?;
            let next = cert::pem_certs(&files.read(NEXT_ANCHOR_CERT_FILE)?).map_err(|e| {
                PkiError::BadCa {
                    what: "new trust anchor",
                    reason: e.to_string(),
                }
            })?;
            let bundle = TrustBundle::from_pem(&files.read(TRUST_ANCHORS_FILE)?)
                .map_err(|e| load_error(files, TRUST_ANCHORS_FILE, e))?;
            let joined = bundle.merge(
                &TrustBundle::from_roots(next)
                    .map_err(|e| load_error(files, NEXT_ANCHOR_CERT_FILE, e))?,
            );
            if joined != bundle {
                files.write(TRUST_ANCHORS_FILE, &joined.to_pem(), false)?;
            }
        }
        Some((RotationKind::Anchor, Step::Swap)) => {
            promote_anchor(files)?;
            promote_issuer(files)?;
        }
        Some((RotationKind::Anchor, Step::Leave)) => {
            let bundle = TrustBundle::from_pem(&files.read(TRUST_ANCHORS_FILE)?)
                .map_err(|e| load_error(files, TRUST_ANCHORS_FILE, e))?;
            let left = without(&bundle, journal.and_then(|j| j.old_anchor.as_deref()))?;
            if left != bundle {
                files.write(TRUST_ANCHORS_FILE, &left.to_pem(), false)?;
            }
        }
    }
    Ok(())
}

/// The staged issuer takes the place of the current one.
fn promote_issuer(files: &Files) -> Result<(), PkiError> {
    files.promote(NEXT_ISSUER_KEY_FILE, ISSUER_KEY_FILE)?;
    files.promote(NEXT_ISSUER_CERT_FILE, ISSUER_CERT_FILE)?;
    Ok(())
}

/// The new anchor takes the place of the current one, which is kept as `trust-anchor.old.*`
/// until the rotation is done. Per file: while the staged file exists, the current one is still
/// the old anchor's (copied aside first, unless a previous attempt already did).
fn promote_anchor(files: &Files) -> Result<(), PkiError> {
    for (current, next, old, private) in [
        (
            TRUST_ANCHOR_KEY_FILE,
            NEXT_ANCHOR_KEY_FILE,
            OLD_ANCHOR_KEY_FILE,
            true,
        ),
        (
            TRUST_ANCHOR_CERT_FILE,
            NEXT_ANCHOR_CERT_FILE,
            OLD_ANCHOR_CERT_FILE,
            false,
        ),
    ] {
        if !files.exists(next) {
            continue;
        }
        if !files.exists(old)
            && let Some(text) = files.read_optional(current)?
        {
            files.write(old, &text, private)?;
        }
        files.promote(next, current)?;
    }
    Ok(())
}

/// The anchor whose key is in the state directory. A state directory from before rotation
/// existed has the key but not `trust-anchor.crt`: the certificate is the bundle's root that
/// matches the key, and is written then.
fn load_anchor(files: &Files, bundle: &TrustBundle) -> Result<Option<TrustAnchor>, PkiError> {
    let Some(key) = files.read_optional(TRUST_ANCHOR_KEY_FILE)? else {
        return Ok(None);
    };
    if let Some(cert) = files.read_optional(TRUST_ANCHOR_CERT_FILE)? {
        return TrustAnchor::from_pem(&cert, &key)
            .map(Some)
            .map_err(|e| load_error(files, TRUST_ANCHOR_CERT_FILE, e));
    }
    for root in bundle.roots() {
        let pem = TrustBundle::from_roots(vec![root.clone()])?.to_pem();
        if let Ok(anchor) = TrustAnchor::from_pem(&pem, &key) {
            files.write(TRUST_ANCHOR_CERT_FILE, &anchor.cert_pem(), false)?;
            return Ok(Some(anchor));
        }
    }
    tracing::error!(
        "{TRUST_ANCHOR_KEY_FILE} matches no root of {TRUST_ANCHORS_FILE}: the issuer cannot be rotated until {TRUST_ANCHOR_CERT_FILE} is restored"
    );
    Ok(None)
}

/// `bundle` without the root whose SHA-256 is `sha256_hex`.
fn without(bundle: &TrustBundle, sha256_hex: Option<&str>) -> Result<TrustBundle, PkiError> {
    let Some(sha) = sha256_hex else {
        return Ok(bundle.clone());
    };
    let kept: Vec<_> = bundle
        .roots()
        .iter()
        .filter(|root| cert::hex(&cert::sha256(root)) != sha)
        .cloned()
        .collect();
    Ok(TrustBundle::from_roots(kept)?)
}

fn load_error(files: &Files, name: &str, e: onemesh_identity::Error) -> PkiError {
    PkiError::Load {
        path: files.path(name),
        source: Box::new(e),
    }
}
