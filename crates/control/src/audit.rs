//! The decision log's control plane side: `Audit.Append` on the policy server, and the one
//! writer of `--audit-dir` (format and checks: the `onemesh-audit` crate, `docs/audit.md`).
//!
//! `Append` checks the caller as `Policy.WatchInbound` does: a mesh client certificate whose
//! namespace and service account are those of the workload named in the request
//! (`UNAUTHENTICATED` without one, `PERMISSION_DENIED` otherwise), so a proxy can only log
//! decisions for its own workload. Namespace and workload come from the request (so checked),
//! never from the records; each record's port, as the proxy saw it, is mapped to the workload's
//! declared port (local mode: `Instance.ports` maps declared → real).
//!
//! The writer runs on its own thread (file I/O and fsync block): batches are queued to it, the
//! batches waiting at once are appended with one write and one sync (group commit) before their
//! `Append`s are answered, and a batch re-sent with the same
//! (instance, batch) is answered without writing it again. It seals the log every
//! `seal_interval` when something new was written, and at shutdown, with the control plane's own
//! credentials (a renewed certificate is picked up before the next checkpoint), and deletes the
//! files older than the retention once an hour. A full queue answers `UNAVAILABLE` (the proxy
//! retries the same batch).

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use onemesh_api::audit::audit_server::Audit;
use onemesh_api::audit::{AppendRequest, AppendResponse, Decision as WireDecision};
use onemesh_audit::{Appended, Batch, Decision, Mode, Record, Sealer, Writer, WriterSettings};
use onemesh_identity::{CredentialStore, SpiffeId};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::services::authenticated;
use crate::state::MeshState;
use crate::store::Store;

/// The most records in one `Append` (audit.proto).
pub const MAX_RECORDS: usize = 4096;
/// Batches waiting for the writer; beyond, `UNAVAILABLE`.
pub const QUEUE: usize = 256;
/// The most batches written with one sync.
pub const GROUP: usize = 64;
/// How often files older than the retention are looked for.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The longest caller, path or policy text a record may carry.
const MAX_TEXT: usize = 4096;

/// Where and how the log is written.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// `--audit-dir` (default `<state-dir>/audit`).
    pub dir: PathBuf,
    /// `--audit-max-file-bytes` (default 64 MiB).
    pub max_file_bytes: u64,
    /// `--audit-seal-interval` (default 10 s).
    pub seal_interval: Duration,
    /// `--audit-retention` (default 365 days: PCI DSS 10.5.1).
    pub retention: Duration,
}

impl AuditSettings {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_file_bytes: WriterSettings::default().max_file_bytes,
            seal_interval: Duration::from_secs(10),
            retention: Duration::from_secs(365 * 86_400),
        }
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the decision log in {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: onemesh_audit::WriteError,
    },
    #[error("cannot sign the decision log's checkpoints with the control plane's key: {0}")]
    Seal(#[from] onemesh_audit::SealError),
    #[error("cannot start the decision log's writer thread: {0}")]
    Thread(std::io::Error),
}

enum Job {
    Append {
        instance: String,
        batch: u64,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Appended, String>>,
    },
    Stop(oneshot::Sender<()>),
}

/// The handle to the writer thread (cheap to clone).
#[derive(Clone)]
pub struct AuditLog {
    jobs: std_mpsc::SyncSender<Job>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl AuditLog {
    /// Opens the log (continuing its chain; a torn last line is cut) and starts its writer.
    pub fn start(
        settings: &AuditSettings,
        credentials: CredentialStore,
    ) -> Result<Self, AuditError> {
        let sealer = Sealer::from_credentials(&credentials)?;
        let writer_settings = WriterSettings {
            max_file_bytes: settings.max_file_bytes,
        };
        let (writer, opened) =
            Writer::open(&settings.dir, writer_settings, sealer).map_err(|source| {
                AuditError::Open {
                    dir: settings.dir.clone(),
                    source,
                }
            })?;
        if opened.truncated_bytes > 0 {
            tracing::warn!(
                dir = %settings.dir.display(),
                bytes = opened.truncated_bytes,
                "the decision log's last line was incomplete (a crash mid-write): cut it and continued the chain"
            );
        }
        tracing::info!(dir = %settings.dir.display(), next = opened.next_seq, "decision log open");
        let (jobs, rx) = std_mpsc::sync_channel(QUEUE);
        let task = WriterTask {
            writer,
            credentials,
            seal_interval: settings.seal_interval,
            retention: settings.retention,
        };
        std::thread::Builder::new()
            .name("audit-writer".to_string())
            .spawn(move || task.run(rx))
            .map_err(AuditError::Thread)?;
        Ok(Self { jobs })
    }

    /// Appends a batch once; answered after it is synced.
    pub async fn append(
        &self,
        instance: String,
        batch: u64,
        records: Vec<Record>,
    ) -> Result<Appended, Status> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Append {
            instance,
            batch,
            records,
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => Status::unavailable(
                "the decision log's writer is busy: send the same batch again in a moment",
            ),
            std_mpsc::TrySendError::Disconnected(_) => {
                Status::unavailable("the decision log is closed: the control plane is stopping")
            }
        })?;
        match answer.await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(e)) => Err(Status::internal(format!(
                "the decision log could not be written ({e}): send the same batch again later"
            ))),
            Err(_) => Err(Status::unavailable(
                "the decision log is closed: the control plane is stopping",
            )),
        }
    }

    /// Seals what was written and stops the writer (waits for it).
    pub async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        let jobs = self.jobs.clone();
        // A full queue drains within the writer's pace; don't block the runtime meanwhile.
        let sent = tokio::task::spawn_blocking(move || jobs.send(Job::Stop(done)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = wait.await;
        }
    }
}

struct WriterTask {
    writer: Writer,
    credentials: CredentialStore,
    seal_interval: Duration,
    retention: Duration,
}

impl WriterTask {
    fn run(mut self, rx: std_mpsc::Receiver<Job>) {
        self.prune();
        let mut next_seal = Instant::now() + self.seal_interval;
        let mut next_prune = Instant::now() + PRUNE_EVERY;
        loop {
            let wait = next_seal.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    // Group commit: every batch waiting now, one write and one sync.
                    let mut jobs = vec![first];
                    while jobs.len() < GROUP {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    if self.handle(jobs) {
                        return;
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.seal();
                    return;
                }
            }
            if Instant::now() >= next_seal {
                self.seal();
                next_seal = Instant::now() + self.seal_interval;
            }
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + PRUNE_EVERY;
            }
        }
    }

    /// Appends the batches among `jobs` together and answers them; then, when one of them asks
    /// to stop, seals and answers it. Returns whether to stop.
    fn handle(&mut self, jobs: Vec<Job>) -> bool {
        let mut batches = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut stop = None;
        for job in jobs {
            match job {
                Job::Append {
                    instance,
                    batch,
                    records,
                    reply,
                } => {
                    batches.push(Batch {
                        instance,
                        batch,
                        records,
                    });
                    replies.push(reply);
                }
                Job::Stop(done) => stop = Some(done),
            }
        }
        if !batches.is_empty() {
            self.refresh_sealer();
            match self.writer.append_all(batches, now_ms()) {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    tracing::error!("decision log append failed: {e}");
                    for reply in replies {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        match stop {
            Some(done) => {
                self.seal();
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// Signs with the current certificate (renewed at 70 % of its life).
    fn refresh_sealer(&mut self) {
        let current = self.credentials.current();
        if current.chain.first() == Some(self.writer.sealer().leaf()) {
            return;
        }
        match Sealer::from_credentials(&self.credentials) {
            Ok(sealer) => self.writer.set_sealer(sealer),
            Err(e) => tracing::error!("cannot use the renewed certificate to seal the log: {e}"),
        }
    }

    fn seal(&mut self) {
        self.refresh_sealer();
        match self.writer.seal(now_ms()) {
            Ok(Some(seq)) => tracing::debug!(seq, "decision log sealed"),
            Ok(None) => {}
            Err(e) => tracing::error!("cannot seal the decision log: {e}"),
        }
    }

    fn prune(&mut self) {
        match self.writer.prune(now_ms(), self.retention) {
            Ok(deleted) => {
                for path in deleted {
                    tracing::info!(file = %path.display(), "decision log file past its retention deleted");
                }
            }
            Err(e) => tracing::error!("cannot delete old decision log files: {e}"),
        }
    }
}

/// `Audit.Append` over the store's mesh and the log.
pub struct AuditService {
    store: std::sync::Arc<dyn Store>,
    log: AuditLog,
}

impl AuditService {
    pub fn new(store: std::sync::Arc<dyn Store>, log: AuditLog) -> Self {
        Self { store, log }
    }
}

/// The workload `namespace/workload` of `state`, when `caller` runs as it.
fn own_workload<'a>(
    state: &'a MeshState,
    caller: &SpiffeId,
    namespace: &str,
    workload: &str,
) -> Result<&'a crate::model::Workload, Status> {
    let key = (namespace.to_string(), workload.to_string());
    let Some(w) = state.mesh.workloads.get(&key) else {
        return Err(Status::permission_denied(format!(
            "workload {namespace}/{workload} is not declared in the mesh: a proxy logs only its own workload's decisions"
        )));
    };
    if caller.namespace() != w.namespace || caller.service_account() != w.service_account {
        return Err(Status::permission_denied(format!(
            "{caller} may not log decisions of {namespace}/{workload} (it runs as service account {sa} in namespace {namespace}): a proxy logs only its own workload's decisions",
            sa = w.service_account
        )));
    }
    Ok(w)
}

/// The declared port of a port as the workload's proxy saw it (local mode: the app's real port).
fn declared_port(w: &crate::model::Workload, seen: u16) -> u16 {
    w.instances
        .iter()
        .flat_map(|i| i.ports.iter())
        .find(|(_, real)| **real == seen)
        .map_or(seen, |(declared, _)| *declared)
}

fn record(
    w: &crate::model::Workload,
    r: onemesh_api::audit::Record,
    i: usize,
) -> Result<Record, Status> {
    let bad = |what: &str| {
        Status::invalid_argument(format!(
            "record {i}: {what}: send records as audit.proto describes them"
        ))
    };
    let decision = match WireDecision::try_from(r.decision) {
        Ok(WireDecision::Allow) => Decision::Allow,
        Ok(WireDecision::Deny) => Decision::Deny,
        Ok(WireDecision::WouldDeny) => Decision::WouldDeny,
        Ok(WireDecision::Unspecified) | Err(_) => return Err(bad("no decision")),
    };
    let mode = match onemesh_api::audit::Mode::try_from(r.mode) {
        Ok(onemesh_api::audit::Mode::Enforce) => Mode::Enforce,
        Ok(onemesh_api::audit::Mode::Audit) => Mode::Audit,
        Err(_) => return Err(bad("unknown mode")),
    };
    if r.kind != "http" && r.kind != "tcp" {
        return Err(bad("kind must be http or tcp"));
    }
    let port = u16::try_from(r.port).map_err(|_| bad("port out of range"))?;
    if r.count == 0 {
        return Err(bad("count must be at least 1"));
    }
    if [&r.caller, &r.method, &r.path, &r.policy]
        .iter()
        .any(|t| t.len() > MAX_TEXT)
    {
        return Err(bad("caller, method, path or policy longer than 4096 bytes"));
    }
    // `*`: the proxy's aggregate of callers beyond its key cap (several callers, one count).
    if !r.caller.is_empty() && r.caller != "*" && r.caller.parse::<SpiffeId>().is_err() {
        return Err(bad(
            "caller is not a spiffe id (empty: unauthenticated; `*`: callers beyond the proxy's aggregation cap)",
        ));
    }
    Ok(Record {
        time_ms: r.time_unix_ms,
        until_ms: r.until_unix_ms.max(r.time_unix_ms),
        caller: r.caller,
        namespace: w.namespace.clone(),
        workload: w.name.clone(),
        port: declared_port(w, port),
        kind: r.kind,
        method: r.method,
        path: r.path,
        decision,
        policy: r.policy,
        mode,
        count: r.count,
        instance: String::new(),
        batch: 0,
    })
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let caller = authenticated(&request)?;
        let req = request.into_inner();
        if req.namespace.is_empty() || req.workload.is_empty() || req.instance.is_empty() {
            return Err(Status::invalid_argument(
                "namespace, workload and instance are required: send the proxy's own workload and its instance id",
            ));
        }
        if req.batch == 0 {
            return Err(Status::invalid_argument(
                "batch must be at least 1: number batches from 1 since the proxy started",
            ));
        }
        if req.records.len() > MAX_RECORDS {
            return Err(Status::invalid_argument(format!(
                "{} records in one batch: send at most {MAX_RECORDS}",
                req.records.len()
            )));
        }
        let records = {
            let state = self.store.subscribe().borrow().clone();
            let w = own_workload(&state, &caller, &req.namespace, &req.workload).inspect_err(
                |e| {
                    tracing::warn!(%caller, namespace = %req.namespace, workload = %req.workload, "decision log append refused: {}", e.message());
                },
            )?;
            req.records
                .into_iter()
                .enumerate()
                .map(|(i, r)| record(w, r, i))
                .collect::<Result<Vec<_>, _>>()?
        };
        let appended = self.log.append(req.instance, req.batch, records).await?;
        Ok(Response::new(AppendResponse {
            sequence: appended.sequence(),
        }))
    }
}

#[cfg(test)]
mod tests;
