//! The CA's files in the state directory, and how they are written so that a control plane killed
//! at any moment finds each file either old or new, never half-written.
//!
//! Every write goes to a temporary file beside the target (`.<name>.tmp`, created with its final
//! mode, so a key is never readable by others even for a moment), is synced, renamed over the
//! target, and the directory is synced. Several files that must change together are written under
//! staged names first (`issuer.next.crt`, ...) and renamed into place once a journal entry
//! (`rotation.json`, see [`super::state`]) says they are committed; a rename is atomic, and
//! finishing the renames is idempotent, so recovery simply redoes them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PkiError;

/// Trust anchors file (PEM bundle) in the state directory: what every proxy trusts.
pub const TRUST_ANCHORS_FILE: &str = "trust-anchors.pem";
/// The certificate of the trust anchor that signs the current issuer.
pub const TRUST_ANCHOR_CERT_FILE: &str = "trust-anchor.crt";
/// That anchor's private key (mode 0600). Absent for a CA the user brought: no rotation then.
pub const TRUST_ANCHOR_KEY_FILE: &str = "trust-anchor.key";
/// Issuer certificate chain (PEM) in the state directory.
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
/// Issuer private key (PKCS#8 PEM, mode 0600) in the state directory.
pub const ISSUER_KEY_FILE: &str = "issuer.key";
/// A rotation's progress (JSON); present only while one is under way.
pub const ROTATION_FILE: &str = "rotation.json";
/// The operator's client certificate chain (PEM), for `onemesh` to call the Admin service.
pub const OPERATOR_CERT_FILE: &str = "operator.crt";
/// The operator's private key (PKCS#8 PEM, mode 0600).
pub const OPERATOR_KEY_FILE: &str = "operator.key";

/// The new anchor during an anchor rotation, before it signs the issuer.
pub(crate) const NEXT_ANCHOR_CERT_FILE: &str = "trust-anchor.next.crt";
pub(crate) const NEXT_ANCHOR_KEY_FILE: &str = "trust-anchor.next.key";
/// The anchor leaving the bundle, kept until the anchor rotation is done.
pub(crate) const OLD_ANCHOR_CERT_FILE: &str = "trust-anchor.old.crt";
pub(crate) const OLD_ANCHOR_KEY_FILE: &str = "trust-anchor.old.key";
/// A new issuer, staged before the journal commits its swap.
pub(crate) const NEXT_ISSUER_CERT_FILE: &str = "issuer.next.crt";
pub(crate) const NEXT_ISSUER_KEY_FILE: &str = "issuer.next.key";
/// Present while a new CA is being made; a start that finds it makes the CA again.
pub(crate) const CREATING_FILE: &str = "ca.creating";

/// Every file name the CA writes (for stale temporary files and clean-ups).
pub(crate) const ALL_FILES: [&str; 15] = [
    TRUST_ANCHORS_FILE,
    TRUST_ANCHOR_CERT_FILE,
    TRUST_ANCHOR_KEY_FILE,
    ISSUER_CERT_FILE,
    ISSUER_KEY_FILE,
    ROTATION_FILE,
    OPERATOR_CERT_FILE,
    OPERATOR_KEY_FILE,
    NEXT_ANCHOR_CERT_FILE,
    NEXT_ANCHOR_KEY_FILE,
    OLD_ANCHOR_CERT_FILE,
    OLD_ANCHOR_KEY_FILE,
    NEXT_ISSUER_CERT_FILE,
    NEXT_ISSUER_KEY_FILE,
    CREATING_FILE,
];

/// The CA's files of one state directory.
#[derive(Clone, Debug)]
pub(crate) struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Self {
        Files {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    pub fn read(&self, name: &str) -> Result<String, PkiError> {
        let path = self.path(name);
        std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
            action: "read",
            path,
            source,
        })
    }

    /// Reads `name` if it exists.
    pub fn read_optional(&self, name: &str) -> Result<Option<String>, PkiError> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PkiError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces `name` atomically (temporary file, fsync, rename, directory fsync). `private`
    /// files get mode 0600 from the start, others 0644.
    pub fn write(&self, name: &str, text: &str, private: bool) -> Result<(), PkiError> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let io = |action, source| PkiError::Io {
            action,
            path: path.clone(),
            source,
        };
        let mode = if private { 0o600 } else { 0o644 };
        crash_point().map_err(|e| io("write", e))?;
        // A leftover temporary file (a crash mid-write) may have another mode: start afresh.
        remove_if_exists(&tmp).map_err(|e| io("replace", e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io("write", e))?;
        // `mode` is filtered by the umask; a key must be 0600 whatever it is, a certificate at
        // most 0644.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("write", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        crash_point().map_err(|e| io("rename", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
        self.sync_dir()
    }

    /// Renames the staged file `from` over `to` when `from` exists (finishing a commit twice is
    /// harmless). Returns whether it renamed.
    pub fn promote(&self, from: &str, to: &str) -> Result<bool, PkiError> {
        let path = self.path(from);
        if !path.exists() {
            return Ok(false);
        }
        crash_point()
            .and_then(|()| std::fs::rename(&path, self.path(to)))
            .map_err(|source| PkiError::Io {
                action: "rename",
                path,
                source,
            })?;
        self.sync_dir()?;
        Ok(true)
    }

    /// Removes `name` if it exists.
    pub fn remove(&self, name: &str) -> Result<(), PkiError> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(());
        }
        crash_point()
            .and_then(|()| remove_if_exists(&path))
            .map_err(|source| PkiError::Io {
                action: "remove",
                path,
                source,
            })
    }

    /// Removes the temporary files a crash mid-write may have left.
    pub fn remove_temporaries(&self) -> Result<(), PkiError> {
        for name in ALL_FILES {
            self.remove(&format!(".{name}.tmp"))?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), PkiError> {
        let io = |source| PkiError::Io {
            action: "sync",
            path: self.dir.clone(),
            source,
        };
        std::fs::File::open(&self.dir)
            .map_err(io)?
            .sync_all()
            .map_err(io)
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: how many more changes to the state directory succeed before every further one
    /// fails, as if the process had been killed there (`None`: no limit).
    pub(crate) static CRASH_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Where a test may stop the process (see [`CRASH_AFTER`]); nothing in a normal build.
fn crash_point() -> std::io::Result<()> {
    #[cfg(test)]
    {
        CRASH_AFTER.with(|left| match left.get() {
            Some(0) => Err(std::io::Error::other("killed here by the test")),
            Some(n) => {
                left.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
    #[cfg(not(test))]
    {
        Ok(())
    }
}
