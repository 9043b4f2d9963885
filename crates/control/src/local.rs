//! The local store: mesh.yaml plus the two files `onemesh up` writes into the state directory.
//!
//! - `mesh.yaml` (any path): the declared mesh, see [`crate::config`].
//! - `<state-dir>/endpoints.json` (optional): where workloads really run,
//!   `[{"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41000", "admin":
//!   "127.0.0.1:41001", "control_admin": "127.0.0.1:41002", "ports": {"8080": 41234}}]`
//!   — the inbound proxy's address, its admin listener (scraped by the metrics window) and
//!   control-only admin listener (tap), all optional but `inbound`, and for each declared port,
//!   the port the app really listens on. A workload may appear several times (several instances).
//! - `<state-dir>/tokens.json` (optional): bootstrap tokens, `{"<token>": "spiffe://..."}`; a token
//!   entitles exactly that one id.
//!
//! Change detection is a poll (every 250 ms by default): each file is read and compared with the
//! bytes last seen, which catches every edit regardless of mtime granularity and costs little for
//! files this small. A changed file is parsed and validated on its own; when valid, the new state
//! is published to every subscriber (so to every open watch stream, well within a second); when
//! invalid, the error is logged, kept for [`LocalStore::errors`], and the file's last good content
//! stays in force. A file that disappears counts as empty (no endpoints / no tokens), except
//! mesh.yaml, whose disappearance is an error like any other invalid edit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use onemesh_identity::SpiffeId;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError, MeshConfig};
use crate::state::{Instance, MeshState};
use crate::store::{Store, StoreError};

/// Default interval between two looks at the files.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// File name of the running layout inside the state directory.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// File name of the bootstrap tokens inside the state directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// Why a file of the local store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {source}; fix the json", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// One entry of endpoints.json.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    namespace: String,
    workload: String,
    inbound: SocketAddr,
    #[serde(default)]
    admin: Option<SocketAddr>,
    #[serde(default)]
    control_admin: Option<SocketAddr>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, LocalError> {
    serde_json::from_str(text).map_err(|source| LocalError::Json {
        path: path.to_path_buf(),
        line: source.line(),
        source,
    })
}

fn parse_endpoints(path: &Path, text: &str) -> Result<Vec<Instance>, LocalError> {
    let entries: Vec<EndpointEntry> = parse_json(path, text)?;
    Ok(entries
        .into_iter()
        .map(|e| Instance {
            namespace: e.namespace,
            workload: e.workload,
            inbound: e.inbound,
            admin: e.admin,
            control_admin: e.control_admin,
            ports: e.ports,
        })
        .collect())
}

fn parse_tokens(path: &Path, text: &str) -> Result<BTreeMap<String, SpiffeId>, LocalError> {
    parse_json(path, text)
}

/// Reads a file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, LocalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LocalError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The last content seen and the last good value of one watched file.
struct Watched<T> {
    path: PathBuf,
    seen: Option<String>,
    good: T,
    error: Option<String>,
}

impl<T> Watched<T> {
    /// Re-reads the file; when its content changed, parses it. Returns true when `good` changed.
    fn poll(&mut self, parse: impl FnOnce(&Path, Option<&str>) -> Result<T, LocalError>) -> bool {
        let text = match read_optional(&self.path) {
            Ok(text) => text,
            Err(e) => {
                self.refuse(e.to_string());
                return false;
            }
        };
        if text == self.seen {
            return false;
        }
        let result = parse(&self.path, text.as_deref());
        self.seen = text;
        match result {
            Ok(value) => {
                self.good = value;
                if self.error.take().is_some() {
                    tracing::info!(file = %self.path.display(), "file is valid again");
                }
                tracing::info!(file = %self.path.display(), "reloaded");
                true
            }
            Err(e) => {
                self.refuse(e.to_string());
                false
            }
        }
    }

    fn refuse(&mut self, error: String) {
        if self.error.as_deref() != Some(error.as_str()) {
            tracing::warn!(
                file = %self.path.display(),
                "refusing the new content, the last good state stays in force:\n{error}"
            );
        }
        self.error = Some(error);
    }
}

struct Files {
    mesh: Watched<MeshConfig>,
    endpoints: Watched<Vec<Instance>>,
    tokens: Watched<BTreeMap<String, SpiffeId>>,
}

fn parse_mesh(path: &Path, text: Option<&str>) -> Result<MeshConfig, LocalError> {
    match text {
        Some(text) => Ok(config::parse(path, text)?),
        None => Err(LocalError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file removed"),
        }),
    }
}

fn parse_endpoints_opt(path: &Path, text: Option<&str>) -> Result<Vec<Instance>, LocalError> {
    text.map_or(Ok(Vec::new()), |t| parse_endpoints(path, t))
}

fn parse_tokens_opt(
    path: &Path,
    text: Option<&str>,
) -> Result<BTreeMap<String, SpiffeId>, LocalError> {
    text.map_or(Ok(BTreeMap::new()), |t| parse_tokens(path, t))
}

struct Inner {
    files: Mutex<Files>,
    tokens: RwLock<Arc<BTreeMap<String, SpiffeId>>>,
    state: watch::Sender<Arc<MeshState>>,
}

/// The store of local mode. Cheap to clone (a handle).
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl LocalStore {
    /// Loads mesh.yaml and the optional state files; every one present must be valid.
    pub fn open(config: &Path, state_dir: &Path) -> Result<Self, LocalError> {
        let endpoints_path = state_dir.join(ENDPOINTS_FILE);
        let tokens_path = state_dir.join(TOKENS_FILE);
        let mesh_text = std::fs::read_to_string(config).map_err(|source| LocalError::Read {
            path: config.to_path_buf(),
            source,
        })?;
        let mesh = config::parse(config, &mesh_text)?;
        let endpoints_text = read_optional(&endpoints_path)?;
        let instances = parse_endpoints_opt(&endpoints_path, endpoints_text.as_deref())?;
        let tokens_text = read_optional(&tokens_path)?;
        let tokens = parse_tokens_opt(&tokens_path, tokens_text.as_deref())?;
        let state = MeshState::local(&mesh, &instances);
        let files = Files {
            mesh: Watched {
                path: config.to_path_buf(),
                seen: Some(mesh_text),
                good: mesh,
                error: None,
            },
            endpoints: Watched {
                path: endpoints_path,
                seen: endpoints_text,
                good: instances,
                error: None,
            },
            tokens: Watched {
                path: tokens_path,
                seen: tokens_text,
                good: tokens.clone(),
                error: None,
            },
        };
        Ok(LocalStore {
            inner: Arc::new(Inner {
                files: Mutex::new(files),
                tokens: RwLock::new(Arc::new(tokens)),
                state: watch::Sender::new(Arc::new(state)),
            }),
        })
    }

    /// Looks at the files once; publishes a new state if a file changed and is valid.
    /// Returns true when a new state was published.
    pub fn poll(&self) -> bool {
        let mut files = self
            .inner
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mesh_changed = files.mesh.poll(parse_mesh);
        let endpoints_changed = files.endpoints.poll(parse_endpoints_opt);
        if files.tokens.poll(parse_tokens_opt) {
            *self
                .inner
                .tokens
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Arc::new(files.tokens.good.clone());
        }
        if !(mesh_changed || endpoints_changed) {
            return false;
        }
        let state = MeshState::local(&files.mesh.good, &files.endpoints.good);
        for i in &files.endpoints.good {
            let key = (i.namespace.clone(), i.workload.clone());
            if !files.mesh.good.workloads.contains_key(&key) {
                tracing::warn!(
                    file = %files.endpoints.path.display(),
                    "instance {}/{} at {} is not a workload of the mesh: it gets no traffic",
                    i.namespace,
                    i.workload,
                    i.inbound
                );
            }
        }
        self.inner.state.send_if_modified(|current| {
            if **current == state {
                false
            } else {
                *current = Arc::new(state);
                true
            }
        })
    }

    /// Polls the files every `interval` until the returned task is aborted.
    pub fn spawn_watcher(&self, interval: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // File reads are small but blocking: keep them off the async workers.
                let s = store.clone();
                if tokio::task::spawn_blocking(move || s.poll()).await.is_err() {
                    tracing::error!("polling the mesh files panicked; stopping the watcher");
                    return;
                }
            }
        })
    }

    /// The errors of the files whose latest content was refused (empty when all are valid).
    pub fn errors(&self) -> Vec<String> {
        let files = self
            .inner
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        [
            &files.mesh.error,
            &files.endpoints.error,
            &files.tokens.error,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

impl Store for LocalStore {
    fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.inner.state.subscribe()
    }

    fn token_identity<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<SpiffeId>, StoreError>> {
        let tokens = self
            .inner
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move { Ok(tokens.get(token).cloned()) })
    }
}

#[cfg(test)]
mod tests;
