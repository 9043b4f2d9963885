//! One line of the log: `<sha256 hex> <json>\n`, where the hash is SHA-256 of the previous
//! entry's hash (32 bytes; zeros before the first entry) followed by the exact JSON bytes. The
//! JSON is an [`Entry`]: a sequence number and either a decision [`Record`] or a signed
//! [`Checkpoint`]. Hashing the bytes as written (never a re-serialisation) makes any byte change,
//! removal or swap visible.

use serde::{Deserialize, Serialize};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// The hash "before" the first entry of a log.
pub const GENESIS: Hash = [0; 32];

/// The outcome of one authorization check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Denied by policies in audit mode only: let through.
    WouldDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Decision::Allow),
            "deny" => Ok(Decision::Deny),
            "would_deny" | "would-deny" => Ok(Decision::WouldDeny),
            other => Err(format!(
                "{other:?} is not a decision: write allow, deny or would_deny"
            )),
        }
    }
}

/// The mode the decision was taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// One decision (or an aggregate of `count` alike decisions), as the control plane recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it was decided (an aggregate: its first decision), ms since the Unix epoch.
    pub time_ms: i64,
    /// An aggregate's last decision (equal to `time_ms` for one decision).
    pub until_ms: i64,
    /// The caller's verified SPIFFE id; empty for a caller without a mesh identity.
    pub caller: String,
    /// The target workload.
    pub namespace: String,
    pub workload: String,
    /// The target's declared port.
    pub port: u16,
    /// `http` or `tcp`.
    pub kind: String,
    /// Masked by the proxy; empty for tcp and aggregates.
    pub method: String,
    pub path: String,
    pub decision: Decision,
    pub policy: String,
    pub mode: Mode,
    pub count: u64,
    /// The shipping proxy's instance id and batch number (dedup of a re-sent batch).
    pub instance: String,
    pub batch: u64,
}

/// A signed seal over the chain up to the entry before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// When it was signed, ms since the Unix epoch.
    pub time_ms: i64,
    /// The sequence number and hash (hex) of the entry it seals (0 and zeros: nothing before).
    pub sealed_seq: u64,
    pub seals: String,
    /// The signer's SPIFFE id and certificate chain (PEM, leaf first).
    pub signer: String,
    pub chain: String,
    /// The TLS signature scheme's name (e.g. `ECDSA_NISTP256_SHA256`) and the signature (hex)
    /// over [`Checkpoint::message`].
    pub scheme: String,
    pub signature: String,
}

impl Checkpoint {
    /// What the signature covers: a domain-separation tag, the checkpoint's own sequence number,
    /// the sealed entry's, its hash, the time and the signer.
    pub fn message(&self, seq: u64) -> Vec<u8> {
        format!(
            "onemesh-audit-checkpoint-v1\nseq={seq}\nsealed_seq={}\nseals={}\ntime_ms={}\nsigner={}\n",
            self.sealed_seq, self.seals, self.time_ms, self.signer
        )
        .into_bytes()
    }
}

/// What an entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Record(Record),
    Checkpoint(Checkpoint),
}

/// One entry: its sequence number (from 1, never reset, shared by records and checkpoints) and
/// what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(flatten)]
    pub body: Body,
}

/// SHA-256(previous ‖ json).
pub fn chain_hash(previous: &Hash, json: &[u8]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(previous);
    ctx.update(json);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Serialises `entry` and returns its line (with the newline) and its hash.
pub fn encode(previous: &Hash, entry: &Entry) -> Result<(Vec<u8>, Hash), serde_json::Error> {
    let json = serde_json::to_vec(entry)?;
    let hash = chain_hash(previous, &json);
    let mut line = Vec::with_capacity(json.len() + 66);
    line.extend_from_slice(to_hex(&hash).as_bytes());
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok((line, hash))
}

/// A line taken apart (without its newline): the stored hash and the JSON bytes.
#[derive(Debug)]
pub struct Line<'a> {
    pub stored: Hash,
    pub json: &'a [u8],
}

/// Why a line cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the line does not start with a 64-digit hex hash and a space")]
    NoHash,
    #[error("the line's json is not an entry: {0}")]
    Json(String),
}

impl<'a> Line<'a> {
    pub fn split(line: &'a [u8]) -> Result<Self, LineError> {
        if line.len() < 66 || line[64] != b' ' {
            return Err(LineError::NoHash);
        }
        let stored = from_hex(&line[..64]).ok_or(LineError::NoHash)?;
        Ok(Line {
            stored,
            json: &line[65..],
        })
    }

    pub fn entry(&self) -> Result<Entry, LineError> {
        serde_json::from_slice(self.json).map_err(|e| LineError::Json(e.to_string()))
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes hex of exactly `N` bytes (lower or upper case).
pub fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let bytes = from_hex_vec(text)?;
    bytes.try_into().ok()
}

pub fn from_hex_vec(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}
