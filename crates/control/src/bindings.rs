//! Bootstrap token → key bindings, kept across control-plane restarts.
//!
//! The first Certify with a token binds the token to the public key of its CSR; later calls with
//! that token must use the same key (see [`crate::services::identity`]). The bindings live in
//! `<state-dir>/token-bindings.json` (0600, rewritten atomically, see [`crate::persist`]) and are
//! loaded at start: a restarted control plane still refuses a token with another key, and still
//! signs for the proxy that first used it (a restarted proxy keeps its key).
//!
//! The file holds no secret: each token and each key is kept as its SHA-256 (lower-case hex).
//! Tokens are 128 random bits, so their hash cannot be reversed into a usable token, and the
//! binding only needs equality. A binding is written to disk before the certificate it allowed
//! is returned, so no proxy holds a certificate whose binding a crash could forget.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::persist::{self, PersistError};

/// File name of the token bindings inside the state directory.
pub const TOKEN_BINDINGS_FILE: &str = "token-bindings.json";

/// The file's shape: `{"bindings": {"<sha256(token)>": "<sha256(spki)>"}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsFile {
    bindings: BTreeMap<String, String>,
}

/// What [`TokenBindings::bind`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The token was unused: it is now bound to this key (and that is on disk).
    New,
    /// The token was already bound to this key.
    Same,
    /// The token is bound to another key.
    OtherKey,
}

/// The bindings, in memory and on disk.
pub struct TokenBindings {
    path: PathBuf,
    bindings: Mutex<BTreeMap<String, String>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

impl TokenBindings {
    /// Loads `<state_dir>/token-bindings.json` (none yet: no token is bound).
    pub fn load(state_dir: &Path) -> Result<Self, PersistError> {
        let path = state_dir.join(TOKEN_BINDINGS_FILE);
        let file: BindingsFile = persist::load(&path)?;
        Ok(TokenBindings {
            path,
            bindings: Mutex::new(file.bindings),
        })
    }

    /// Binds `token` to `spki` (a DER SubjectPublicKeyInfo) unless it is bound already. A new
    /// binding is on disk before this returns (blocking I/O: call it from a blocking context);
    /// if the write fails, the token stays unbound.
    pub fn bind(&self, token: &str, spki: &[u8]) -> Result<Binding, PersistError> {
        let token = sha256_hex(token.as_bytes());
        let key = sha256_hex(spki);
        let mut bindings = self.bindings.lock().unwrap_or_else(PoisonError::into_inner);
        match bindings.get(&token) {
            Some(bound) if *bound == key => return Ok(Binding::Same),
            Some(_) => return Ok(Binding::OtherKey),
            None => {}
        }
        let mut next = bindings.clone();
        next.insert(token, key);
        let file = BindingsFile { bindings: next };
        persist::store(&self.path, &file)?;
        *bindings = file.bindings;
        Ok(Binding::New)
    }

    /// How many tokens are bound.
    pub fn len(&self) -> usize {
        self.bindings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no token is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
