//! The control plane's own small state files (`revoked.json`, `token-bindings.json`): read at
//! start, rewritten whole on every change.
//!
//! A write never leaves half a file behind, whatever moment the process is killed at: the new
//! content goes to a temporary file beside the target (created 0600: these files say who may get
//! a certificate), which is flushed to disk, renamed over the target, and the directory flushed
//! so the rename itself survives a power cut. A reader therefore sees either the old file or the
//! new one. A file that does not exist reads as empty; a file that exists but cannot be parsed is
//! an error (the control plane refuses to start rather than forget revocations or bindings).
//!
//! The files are tiny (one line per revoked id or used token) and change rarely (a revocation, a
//! proxy's first certificate), so rewriting them whole is cheaper than any journal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {}: {source}; check the state directory and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not valid ({source}): restore it from a backup, or remove it to start empty (this forgets what it held)",
        path.display()
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}; check the state directory, its permissions and free space", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `path` as JSON; a missing file is `T::default()`.
pub(crate) fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|source| PersistError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `value` as JSON, atomically (temp file, fsync, rename, fsync of the
/// directory), mode 0600.
pub(crate) fn store<T: Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| err(std::io::Error::other(e)))?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only to a file this call creates: tighten a leftover temp file too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
pub(crate) mod tests;
