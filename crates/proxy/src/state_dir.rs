//! What a proxy keeps across its own restarts (`ONEMESH_PROXY_STATE_DIR`): its private key, its
//! current leaf chain, the trust bundle last sent by the control plane, and the last
//! configuration the control plane sent (inbound policy, each watched name's endpoints and
//! routes), so that a proxy killed at any moment is ready again at once, also while the control
//! plane is down.
//!
//! A sidecar is restarted all the time (OOM, node pressure, upgrades). Without this, a restarted
//! proxy made a new key, and its bootstrap token, bound to the old key, could never certify it.
//! With it, the proxy re-proves itself with its still-valid leaf (or its token and the same key).
//!
//! The directory is made with mode 0700 and every file with 0600, written atomically (a temporary
//! file renamed over the old one; the key is also synced to disk first), so a kill in the middle
//! of a write leaves the old file or the new one, never half of one. A file that cannot be read
//! back is ignored and logged (the proxy then behaves as on a first start), except that the key
//! is never replaced silently by a new one when a key file exists but does not parse: the proxy
//! then refuses to start with an error saying which file to inspect.
//!
//! What it deliberately does not do: encrypt anything. The files are as secret as the process's
//! memory: in Kubernetes the directory is a memory-backed `emptyDir` of the pod; in local mode
//! every process runs as the same user, so another local process of that user can read them
//! (see `docs/security.md`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use onemesh_identity::{Issued, TrustBundle, WorkloadKey};
use tracing::warn;

/// The private key (PKCS#8 PEM).
pub const KEY_FILE: &str = "key.pem";
/// The current leaf chain (PEM, leaf first).
pub const CHAIN_FILE: &str = "chain.pem";
/// The trust bundle last received from the control plane (PEM).
pub const BUNDLE_FILE: &str = "trust-anchors.pem";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The directory or a file could not be made, read or written.
    #[error("cannot {action} {}: {source}; check {} and its permissions", path.display(), crate::config::ENV_STATE_DIR)]
    Io {
        /// What was tried.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file exists but is not a key.
    #[error(
        "{} is not a usable private key ({reason}): remove it to start with a new key (the bootstrap token, bound to the old key, must then be replaced)",
        path.display()
    )]
    BadKey {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A proxy's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (and makes, mode 0700) the directory at `path`.
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let io = |action, source| StateDirError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|e| io("create", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restrict", e))?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved key, `None` when there is none yet.
    pub fn load_key(&self) -> Result<Option<WorkloadKey>, StateDirError> {
        let path = self.path.join(KEY_FILE);
        let Some(pem) = self.read_text(&path)? else {
            return Ok(None);
        };
        WorkloadKey::from_pem(&pem)
            .map(Some)
            .map_err(|e| StateDirError::BadKey {
                path,
                reason: e.to_string(),
            })
    }

    /// Saves the key (synced to disk before it replaces the old file).
    pub fn save_key(&self, key: &WorkloadKey) -> Result<(), StateDirError> {
        self.write(KEY_FILE, key.to_pem().as_bytes(), true)
    }

    /// The saved leaf chain, `None` when there is none or it does not parse.
    pub fn load_chain(&self) -> Option<Issued> {
        let path = self.path.join(CHAIN_FILE);
        let pem = self.read_text(&path).ok().flatten()?;
        Issued::from_chain_pem(&pem)
            .inspect_err(|e| warn!(path = %path.display(), "ignoring the saved certificate: {e}"))
            .ok()
    }

    /// Saves the leaf chain.
    pub fn save_chain(&self, issued: &Issued) {
        self.write_or_warn(CHAIN_FILE, issued.chain_pem().as_bytes());
    }

    /// The saved trust bundle, `None` when there is none or it does not parse.
    pub fn load_bundle(&self) -> Option<TrustBundle> {
        let path = self.path.join(BUNDLE_FILE);
        let pem = self.read_text(&path).ok().flatten()?;
        TrustBundle::from_pem(&pem)
            .inspect_err(|e| warn!(path = %path.display(), "ignoring the saved trust bundle: {e}"))
            .ok()
    }

    /// Saves the trust bundle.
    pub fn save_bundle(&self, bundle: &TrustBundle) {
        self.write_or_warn(BUNDLE_FILE, bundle.to_pem().as_bytes());
    }

    /// A saved configuration blob (`name` is one of ours, e.g. `inbound.pb`).
    pub fn load_blob(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %path.display(), "cannot read the saved configuration: {e}");
                None
            }
        }
    }

    /// Saves a configuration blob; a failure is logged (the proxy serves on without it).
    pub fn save_blob(&self, name: &str, bytes: &[u8]) {
        self.write_or_warn(name, bytes);
    }

    fn read_text(&self, path: &Path) -> Result<Option<String>, StateDirError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateDirError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn write_or_warn(&self, name: &str, bytes: &[u8]) {
        if let Err(e) = self.write(name, bytes, false) {
            warn!("{e}");
        }
    }

    /// Writes `name` atomically with mode 0600: a temporary file in the same directory, renamed
    /// over the old one.
    fn write(&self, name: &str, bytes: &[u8], sync: bool) -> Result<(), StateDirError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let io = |action, source| StateDirError::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("write", e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("restrict", e))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        if sync {
            file.sync_all().map_err(|e| io("sync", e))?;
        }
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io("replace", e))
    }
}

#[cfg(test)]
mod tests;
