//! The rotation driver: runs an issuer or anchor rotation step by step, waiting at each step for
//! every connected proxy (or the step's deadline, listing the stragglers), and rotates the issuer
//! by itself when it reaches [`super::CaSettings::issuer_rotate_at`] of its life.
//!
//! The driver only sequences: each step's change is a [`CaState`] method (persisted, published);
//! which proxies are done is the [`Fleet`]'s answer (the WatchTrust registry in production, a
//! test double in unit tests). A rotation runs in its own task, to the end, whether or not the
//! operator who asked is still watching its progress; one rotation at a time.
//!
//! After a restart, a rotation found in the journal goes on from its step, but a step may not
//! end before [`super::CaSettings::reconnect_grace`] has passed: until the proxies have reconnected, "every
//! connected proxy is done" would be true of none.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use onemesh_api::admin::RotationProgress;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::state::{CaSnapshot, CaState, Journal, RotationKind, Step};
use super::{PkiError, cert};

/// How long a failed step change (a disk error) waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often a parked automatic rotation (no anchor key, anchor too close to expiry) looks again.
const RECHECK: Duration = Duration::from_secs(3600);

/// What a step waits for from each connected proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Its last report applied this trust fingerprint (bundle and issuer).
    Fingerprint([u8; 32]),
    /// Its last report shows a leaf signed by the issuer with this SHA-256.
    Issuer([u8; 32]),
}

/// How far the connected proxies are toward a [`Goal`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetProgress {
    pub done: u32,
    pub total: u32,
    /// `<spiffe id> @ <address>` of each connected proxy not done yet.
    pub pending: Vec<String>,
}

/// The connected proxies, as a rotation sees them.
pub trait Fleet: Send + Sync + 'static {
    fn progress(&self, goal: &Goal) -> FleetProgress;
    /// Changes whenever a proxy connects, reports or goes away.
    fn changes(&self) -> watch::Receiver<()>;
}

/// Why a rotation could not start.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "a rotation is already in progress (step: {0}): wait for it to end (`onemesh identity` shows it)"
    )]
    InProgress(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the control plane is shutting down: try again when it is back")]
    Stopped,
}

/// A rotation's progress messages, for the Admin stream that asked for it.
pub type ProgressReceiver = mpsc::UnboundedReceiver<RotationProgress>;

/// Runs rotations (see the module doc).
pub struct Rotator {
    ca: Arc<CaState>,
    fleet: Arc<dyn Fleet>,
    state: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    /// The rotation under way and its step, as `Trust` shows it.
    step: Option<String>,
    /// Why the issuer cannot be rotated automatically, when it cannot.
    problem: Option<String>,
    tasks: Vec<AbortHandle>,
}

impl Rotator {
    pub fn new(ca: Arc<CaState>, fleet: Arc<dyn Fleet>) -> Arc<Self> {
        Arc::new(Rotator {
            ca,
            fleet,
            state: Mutex::new(Running::default()),
        })
    }

    /// Starts a rotation: its first change is made before this returns (an error, e.g. no anchor
    /// key, comes back here), the rest runs in its own task. `deadline` is per step (`None`: the
    /// default).
    pub async fn start(
        self: &Arc<Self>,
        kind: RotationKind,
        deadline: Option<Duration>,
    ) -> Result<ProgressReceiver, RotateError> {
        let deadline = deadline
            .filter(|d| !d.is_zero())
            .unwrap_or(self.ca.settings().rotation_deadline);
        let what = match kind {
            RotationKind::Anchor => "anchor rotation: starting",
            RotationKind::Issuer => "issuer rotation: starting",
        };
        {
            let mut state = self.lock();
            if let Some(step) = &state.step {
                return Err(RotateError::InProgress(step.clone()));
            }
            state.step = Some(what.to_string());
        }
        let ca = self.ca.clone();
        let first = tokio::task::spawn_blocking(move || match kind {
            RotationKind::Anchor => ca.begin_anchor_rotation(deadline),
            RotationKind::Issuer => ca.rotate_issuer(deadline),
        })
        .await;
        let journal = match first {
            Ok(Ok(journal)) => journal,
            Ok(Err(e)) => {
                self.lock().step = None;
                return Err(e.into());
            }
            Err(_) => {
                self.lock().step = None;
                return Err(RotateError::Stopped);
            }
        };
        Ok(self.spawn(journal, Duration::ZERO))
    }

    /// Goes on with the rotation the journal shows, if any (at start).
    pub fn resume(self: &Arc<Self>) -> Option<ProgressReceiver> {
        let journal = self.ca.journal()?;
        self.lock().step = Some(describe(&journal));
        let grace = self.ca.settings().reconnect_grace;
        Some(self.spawn(journal, grace))
    }

    /// Rotates the issuer by itself at [`super::CaSettings::issuer_rotate_at`] of its life; with
    /// `leader`, only while it says true (one replica of several, see `kubestore::lease`).
    pub fn spawn_auto(self: &Arc<Self>, leader: Option<watch::Receiver<bool>>) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.auto(leader).await });
        self.lock().tasks.push(task.abort_handle());
    }

    /// The rotation under way (`"<kind> rotation: <step>"`), or why the issuer cannot rotate
    /// (`"blocked: ..."`), or empty.
    pub fn status(&self) -> String {
        let state = self.lock();
        match (&state.step, &state.problem) {
            (Some(step), _) => step.clone(),
            (None, Some(problem)) => format!("blocked: {problem}"),
            (None, None) => String::new(),
        }
    }

    /// Stops every task (a rotation stopped here goes on after the next start, from the journal).
    pub fn stop(&self) {
        for task in self.lock().tasks.drain(..) {
            task.abort();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Running> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(self: &Arc<Self>, journal: Journal, grace: Duration) -> ProgressReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        let task = tokio::spawn(async move { me.run(journal, grace, tx).await });
        let mut state = self.lock();
        state.tasks.retain(|t| !t.is_finished());
        state.tasks.push(task.abort_handle());
        rx
    }

    async fn run(
        self: Arc<Self>,
        mut journal: Journal,
        mut grace: Duration,
        tx: mpsc::UnboundedSender<RotationProgress>,
    ) {
        let deadline = journal.deadline();
        let last = loop {
            self.lock().step = Some(describe(&journal));
            let snapshot = self.ca.current();
            let goal = goal(journal.step, &snapshot);
            let progress = self
                .wait_step(journal.step.describe(), goal, deadline, grace, &tx)
                .await;
            grace = Duration::ZERO;
            let next = match (journal.kind, journal.step) {
                (RotationKind::Anchor, Step::Join) => Next::Swap,
                (RotationKind::Anchor, Step::Swap) => Next::Leave,
                (RotationKind::Anchor, Step::Leave) | (RotationKind::Issuer, _) => Next::Finish,
            };
            match self.change(next).await {
                Some(j) => journal = j,
                None => break progress,
            }
        };
        tracing::info!(kind = ?journal.kind, "rotation done");
        self.lock().step = None;
        let _ = tx.send(RotationProgress {
            step: "done".to_string(),
            done_proxies: last.done,
            total_proxies: last.total,
            stragglers: Vec::new(),
            done: true,
        });
    }

    /// Makes the next step's change, trying again until it works (a full disk, a permission
    /// fixed by hand). `None` once the rotation is finished.
    async fn change(&self, next: Next) -> Option<Journal> {
        loop {
            let ca = self.ca.clone();
            let result = tokio::task::spawn_blocking(move || match next {
                Next::Swap => ca.anchor_swap_issuer().map(Some),
                Next::Leave => ca.anchor_leave().map(Some),
                Next::Finish => ca.finish().map(|()| None),
            })
            .await;
            match result {
                Ok(Ok(journal)) => return journal,
                Ok(Err(e)) => {
                    tracing::error!("rotation step failed, trying again in {RETRY:?}: {e}");
                    if let Some(step) = &mut self.lock().step
                        && !step.ends_with(')')
                    {
                        step.push_str(&format!(" (retrying: {e})"));
                    }
                }
                Err(e) => tracing::error!("rotation step failed, trying again in {RETRY:?}: {e}"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Waits until every connected proxy reached `goal` (and `grace` has passed), or until
    /// `deadline`; sends progress on every change and the stragglers at the deadline.
    async fn wait_step(
        &self,
        step: &str,
        goal: Goal,
        deadline: Duration,
        grace: Duration,
        tx: &mpsc::UnboundedSender<RotationProgress>,
    ) -> FleetProgress {
        let start = Instant::now();
        let end = start + deadline;
        let grace_end = start + grace.min(deadline);
        let mut changes = self.fleet.changes();
        let mut sent: Option<(u32, u32)> = None;
        loop {
            changes.borrow_and_update();
            let progress = self.fleet.progress(&goal);
            let now = Instant::now();
            let all = progress.done == progress.total;
            let message = |stragglers: Vec<String>| RotationProgress {
                step: step.to_string(),
                done_proxies: progress.done,
                total_proxies: progress.total,
                stragglers,
                done: false,
            };
            if all && now >= grace_end {
                if sent != Some((progress.done, progress.total)) {
                    let _ = tx.send(message(Vec::new()));
                }
                tracing::info!(
                    step,
                    proxies = progress.total,
                    "every connected proxy is done"
                );
                return progress;
            }
            if now >= end {
                tracing::warn!(
                    step,
                    stragglers = ?progress.pending,
                    "rotation step deadline passed: going on without the stragglers"
                );
                let _ = tx.send(message(progress.pending.clone()));
                return progress;
            }
            if sent != Some((progress.done, progress.total)) {
                let _ = tx.send(message(Vec::new()));
                sent = Some((progress.done, progress.total));
            }
            let wake = if all { grace_end } else { end };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(wake).await;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn auto(self: Arc<Self>, mut leader: Option<watch::Receiver<bool>>) {
        let mut ca = self.ca.subscribe();
        loop {
            if let Some(l) = &mut leader
                && !*l.borrow_and_update()
            {
                // Another replica rotates; wait until this one leads.
                if l.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let snapshot = ca.borrow_and_update().clone();
            let due = rotation_due(&snapshot, self.ca.settings().issuer_rotate_at);
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = ca.changed() => if changed.is_err() { return },
                }
                continue;
            }
            if let Err(problem) = self.can_rotate_issuer(&snapshot) {
                tracing::error!("the issuer is due for rotation but cannot be rotated: {problem}");
                self.lock().problem = Some(problem);
                tokio::select! {
                    _ = tokio::time::sleep(RECHECK) => {}
                    changed = ca.changed() => if changed.is_err() { return },
                }
                continue;
            }
            self.lock().problem = None;
            match self.start(RotationKind::Issuer, None).await {
                Ok(progress) => {
                    tracing::info!("the issuer reached its rotation point and was rotated");
                    // Nobody watches an automatic rotation's progress but the logs.
                    drop(progress);
                }
                Err(e) => {
                    tracing::warn!("automatic issuer rotation postponed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY * 6) => {}
                        changed = ca.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// Whether a new issuer would help: the anchor's key is here and the anchor outlives the
    /// current issuer (otherwise the new one would be cut at the anchor's expiry too).
    fn can_rotate_issuer(&self, snapshot: &CaSnapshot) -> Result<(), String> {
        let Some(anchor) = self.ca.anchor() else {
            return Err(PkiError::NoAnchorKey.to_string());
        };
        if anchor.not_after <= snapshot.issuer_summary.not_after {
            return Err(format!(
                "the trust anchor expires at {} (unix), no later than the issuer: rotate the anchor (`onemesh identity rotate-anchor`)",
                cert::unix_secs(anchor.not_after)
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Next {
    Swap,
    Leave,
    Finish,
}

fn goal(step: Step, snapshot: &CaSnapshot) -> Goal {
    match step {
        Step::Join | Step::Leave => Goal::Fingerprint(snapshot.fingerprint),
        Step::Swap => Goal::Issuer(snapshot.issuer_sha256()),
    }
}

fn describe(journal: &Journal) -> String {
    let kind = match journal.kind {
        RotationKind::Anchor => "anchor",
        RotationKind::Issuer => "issuer",
    };
    format!("{kind} rotation: {}", journal.step.describe())
}

/// When the issuer is due: `fraction` of the way from its `not_before` to its `not_after`.
pub fn rotation_due(snapshot: &CaSnapshot, fraction: f64) -> SystemTime {
    let issuer = &snapshot.issuer_summary;
    let life = issuer
        .not_after
        .duration_since(issuer.not_before)
        .unwrap_or(Duration::ZERO);
    issuer.not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
}
