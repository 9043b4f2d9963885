//! Revoked SPIFFE ids: never certified again, by token or by leaf.
//!
//! The set lives in `<state-dir>/revoked.json` (0600, rewritten atomically, see
//! [`crate::persist`]) and is loaded at start, so a revocation survives a control-plane restart.
//! An operator revokes through [`Revocations::revoke`] (the Admin service and
//! `onemesh identity revoke <id>` call it); [`crate::services::identity`] refuses every Certify
//! for a revoked id.
//!
//! What a revocation does not do: leaves already issued stay valid until they expire (24 h at
//! most by default), for mTLS between proxies and for the control plane's Destination and Policy
//! watches alike. The mesh has no CRL or OCSP: short-lived leaves are the revocation mechanism,
//! and this set only stops the renewals. To cut a workload off sooner, also remove it from the
//! mesh (policies naming it and its endpoints go away within a second) or rotate the issuer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use onemesh_identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::persist::{self, PersistError};

/// File name of the revoked ids inside the state directory.
pub const REVOCATIONS_FILE: &str = "revoked.json";

/// The file's shape: `{"revoked": {"spiffe://...": <unix seconds of the revocation>}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    revoked: BTreeMap<SpiffeId, u64>,
}

/// The revoked ids, in memory and on disk.
pub struct Revocations {
    path: PathBuf,
    /// Id → when it was revoked (unix seconds). Read on every Certify, written on a revocation.
    revoked: RwLock<BTreeMap<SpiffeId, u64>>,
}

impl Revocations {
    /// Loads `<state_dir>/revoked.json` (none yet: nothing is revoked).
    pub fn load(state_dir: &Path) -> Result<Self, PersistError> {
        let path = state_dir.join(REVOCATIONS_FILE);
        let file: RevokedFile = persist::load(&path)?;
        if !file.revoked.is_empty() {
            tracing::info!(count = file.revoked.len(), file = %path.display(), "revoked ids loaded");
        }
        Ok(Revocations {
            path,
            revoked: RwLock::new(file.revoked),
        })
    }

    /// Revokes `id`: `Ok(true)` when it was not revoked before. The file is written before this
    /// returns (blocking I/O: call it from a blocking context); if the write fails, nothing is
    /// revoked.
    pub fn revoke(&self, id: &SpiffeId) -> Result<bool, PersistError> {
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        if revoked.contains_key(id) {
            return Ok(false);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut next = revoked.clone();
        next.insert(id.clone(), now);
        persist::store(&self.path, &RevokedFile { revoked: next })?;
        revoked.insert(id.clone(), now);
        tracing::warn!(%id, "revoked: no certificate will be issued for it again");
        Ok(true)
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &SpiffeId) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    /// Every revoked id, in order.
    pub fn list(&self) -> Vec<SpiffeId> {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The file they are kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
