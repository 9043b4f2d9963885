//! The operator's token for the dashboard and its JSON API.
//!
//! Local mode: `<state-dir>/dashboard-token`, made at first start (256 bits from the OS's
//! cryptographic RNG, hex, file mode 0600) and kept across restarts; `onemesh up` prints a login
//! URL with it and the CLI reads it from there. Kubernetes mode: the file is the Secret
//! `onemesh-dashboard-token` mounted into the control plane (`--dashboard-token-file`), so who may
//! use the dashboard is who Kubernetes RBAC lets read that Secret (`onemesh dashboard` does).
//!
//! A candidate is compared in constant time, and a token shorter than 32 characters is refused
//! at start: it would be guessable.

use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the token inside the state directory (local mode).
pub const TOKEN_FILE: &str = "dashboard-token";

/// The shortest token accepted.
const MIN_LEN: usize = 32;

/// The dashboard's token.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why the token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the dashboard token {path}: {source}; check the file (or remove it in local mode to get a new one)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot write the dashboard token {path}: {source}; check that the state directory is writable"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the dashboard token in {path} is too short ({len} characters): use at least {MIN_LEN} random characters, e.g. `openssl rand -hex 32`"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error(
        "the dashboard token in {path} holds characters other than letters, digits, `-` and `_`: make a new one, e.g. `openssl rand -hex 32`"
    )]
    BadCharacters { path: PathBuf },
    #[error("the system's random number generator failed: check that getrandom(2) works")]
    Random,
}

impl Token {
    /// Reads the token at `path`, or makes one there if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Token, TokenError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Token::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Token::create(path),
            Err(source) => Err(TokenError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads the token at `path` (it must exist: Kubernetes mode's mounted Secret).
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Token::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Token, TokenError> {
        let token = text.trim();
        if token.len() < MIN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_path_buf(),
                len: token.len(),
            });
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::BadCharacters {
                path: path.to_path_buf(),
            });
        }
        Ok(Token(token.to_string()))
    }

    fn create(path: &Path) -> Result<Token, TokenError> {
        let random: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| TokenError::Random)?
            .expose();
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        // Written whole to a private temporary file, then linked into place: a process killed
        // at any moment leaves either no token file (the next start makes one) or a complete one,
        // never a short one that would keep the control plane from starting.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let write = |tmp: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)?;
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        };
        let made = write(&tmp).and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match made {
            Ok(()) => Ok(Token(token)),
            // Another start made it first: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Token::load(path),
            Err(source) => Err(TokenError::Write {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether `candidate` is the token (constant time in the candidate's content).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token itself (for `onemesh up`'s login URL and tests).
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "onemesh-token-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_new_token_is_random_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (dir().join(TOKEN_FILE), dir().join(TOKEN_FILE));
        let ta = Token::load_or_create(&a).unwrap();
        let tb = Token::load_or_create(&b).unwrap();
        assert_eq!(ta.reveal().len(), 64);
        assert_ne!(ta.reveal(), tb.reveal());
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Token::load_or_create(&a).unwrap().reveal(), ta.reveal());
    }

    #[test]
    fn weak_or_odd_tokens_are_refused_with_how_to_make_one() {
        let d = dir();
        for (text, needle) in [
            ("short", "too short"),
            ("", "too short"),
            ("0123456789abcdef0123456789abcdef;x", "characters"),
            ("0123456789abcdef 0123456789abcdef0", "characters"),
        ] {
            let path = d.join("t");
            std::fs::write(&path, text).unwrap();
            let e = Token::load(&path).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("openssl rand"),
                "{text:?}: {e}"
            );
        }
        let e = Token::load(&d.join("absent")).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn only_the_exact_token_matches() {
        let d = dir();
        let t = Token::load_or_create(&d.join(TOKEN_FILE)).unwrap();
        let real = t.reveal().to_string();
        assert!(t.matches(&real));
        assert!(!t.matches(&real[..real.len() - 1]));
        assert!(!t.matches(&format!("{real}0")));
        assert!(!t.matches(&real.to_uppercase()));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains(&real));
    }
}
