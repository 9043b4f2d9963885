//! Checking a log directory from its first file to its last, stopping at the first spot that
//! fails and naming it (file, line, sequence number, what happened).
//!
//! What is checked, entry by entry: the line reads (`<hash> <json>`); every file starts with a
//! checkpoint whose sequence number is the one in the file's name; sequence numbers follow each
//! other (a gap is a removal, an earlier or later number an entry moved); each entry's hash is
//! SHA-256 of the previous hash and its JSON bytes; each checkpoint seals exactly the entry
//! before it and carries a valid signature by the control plane's certificate, chained to the
//! trust anchors at the checkpoint's time. The first file of a set pruned by retention starts
//! from its checkpoint (the entries it seals are gone; reported as `pruned_before`).
//!
//! What it cannot see (docs/audit.md): entries after the last checkpoint rewritten with their
//! hashes recomputed, or cut from the end of the newest file (reported as `unsealed`, not as a
//! failure); whole files removed from the start of the set (indistinguishable from retention).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::entry::{Body, Entry, GENESIS, Hash, Line, chain_hash, from_hex, to_hex};
use crate::seal::{self, ChainCache, CheckpointError, Trust};
use crate::writer::list_files;

/// What went wrong at the failing spot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    #[error("the line is incomplete: the file was cut in the middle of an entry")]
    Incomplete,
    #[error("the line does not read ({reason}): it was changed")]
    Unreadable { reason: String },
    #[error(
        "entry {seq} was changed: its hash does not match its content and the chain before it (or the entry before it was changed and its hash recomputed)"
    )]
    Changed { seq: u64 },
    #[error("entries {from}..{to} were removed (the entry found here is {found})")]
    Removed { from: u64, to: u64, found: u64 },
    #[error(
        "entry {found} is out of order: entry {expected} was expected here (entries were swapped or moved)"
    )]
    OutOfOrder { found: u64, expected: u64 },
    #[error("the file does not start with a checkpoint: its beginning was removed or replaced")]
    NoStartCheckpoint,
    #[error(
        "the file's name says it starts at entry {named}, but its first entry is {found}: it was renamed"
    )]
    Renamed { named: u64, found: u64 },
    #[error(
        "checkpoint {seq} seals entry {sealed_seq} with hash {sealed}, but the chain before it is entry {actual_seq} with hash {actual}: entries before it were changed and their hashes recomputed"
    )]
    SealMismatch {
        seq: u64,
        sealed_seq: u64,
        sealed: String,
        actual_seq: u64,
        actual: String,
    },
    #[error("checkpoint {seq} is not valid: {reason}")]
    BadCheckpoint {
        seq: u64,
        reason: String,
        #[serde(skip)]
        error: Box<CheckpointError>,
    },
}

/// The first spot that fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The file's name (within the directory) and the line (from 1).
    pub file: String,
    pub line: usize,
    /// The sequence number of the last good entry before the spot (0: none).
    pub after_seq: u64,
    pub problem: Problem,
    /// A sentence naming the spot and what happened.
    pub message: String,
}

/// What the walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub files: Vec<String>,
    /// Entries checked (records and checkpoints) and what they hold.
    pub entries: u64,
    pub records: u64,
    /// Decisions (an aggregate record counts its `count`).
    pub decisions: u64,
    pub checkpoints: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Entries before this one were pruned (retention): the first file starts with a checkpoint
    /// sealing entry `pruned_before - 1`. 0: the log is complete from entry 1.
    pub pruned_before: u64,
    /// The last valid checkpoint's sequence number, and the records after it (not sealed yet).
    pub last_checkpoint: u64,
    pub unsealed: u64,
    pub signers: BTreeSet<String>,
    pub failure: Option<Failure>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Why a directory could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Walks every file of `dir`.
pub fn verify_dir(dir: &Path, trust: &Trust) -> Result<Report, ReadError> {
    let files = list_files(dir).map_err(|source| ReadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut walk = Walk {
        trust,
        report: Report::default(),
        prev: GENESIS,
        expected: None,
        chains: ChainCache::default(),
    };
    for (named, path) in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        walk.report.files.push(name.clone());
        let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if let Err((line, problem)) = walk.file(*named, &bytes) {
            let after_seq = walk.expected.map_or(0, |e| e - 1);
            let message = format!("{name}:{line}: {problem}");
            walk.report.failure = Some(Failure {
                file: name,
                line,
                after_seq,
                problem,
                message,
            });
            break;
        }
    }
    Ok(walk.report)
}

struct Walk<'a> {
    trust: &'a Trust,
    report: Report,
    prev: Hash,
    /// The next sequence number; `None` before the first entry of the set.
    expected: Option<u64>,
    chains: ChainCache,
}

fn lines(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last piece after a final newline; anything else there is torn.
    let torn = out.last().is_some_and(|l| !l.is_empty());
    if !torn {
        out.pop();
    }
    (out, torn)
}

impl Walk<'_> {
    fn file(&mut self, named: u64, bytes: &[u8]) -> Result<(), (usize, Problem)> {
        let (lines, torn) = lines(bytes);
        for (i, raw) in lines.iter().enumerate() {
            let at = i + 1;
            if torn && at == lines.len() {
                return Err((at, Problem::Incomplete));
            }
            let unreadable = |e: crate::entry::LineError| {
                (
                    at,
                    Problem::Unreadable {
                        reason: e.to_string(),
                    },
                )
            };
            let line = Line::split(raw).map_err(unreadable)?;
            let entry = line.entry().map_err(unreadable)?;
            if i == 0 {
                let Body::Checkpoint(cp) = &entry.body else {
                    return Err((at, Problem::NoStartCheckpoint));
                };
                if self.expected.is_none() {
                    // The start of the set: the chain is taken from the first checkpoint (its
                    // signature is checked below like any other's).
                    let sealed = from_hex::<32>(cp.seals.as_bytes()).ok_or((
                        at,
                        Problem::Unreadable {
                            reason: "the checkpoint's seals is not a 32-byte hex hash".to_string(),
                        },
                    ))?;
                    self.prev = sealed;
                    self.expected = Some(cp.sealed_seq + 1);
                    self.report.pruned_before = if cp.sealed_seq > 0 { entry.seq } else { 0 };
                    self.report.first_seq = entry.seq;
                }
                if entry.seq != named && Some(entry.seq) == self.expected {
                    return Err((
                        at,
                        Problem::Renamed {
                            named,
                            found: entry.seq,
                        },
                    ));
                }
            }
            let expected = self.expected.unwrap_or(1);
            if entry.seq != expected {
                let later = lines[i + 1..].iter().any(|l| seq_of(l) == Some(expected));
                return Err((
                    at,
                    if entry.seq < expected || later {
                        Problem::OutOfOrder {
                            found: entry.seq,
                            expected,
                        }
                    } else {
                        Problem::Removed {
                            from: expected,
                            to: entry.seq - 1,
                            found: entry.seq,
                        }
                    },
                ));
            }
            let hash = chain_hash(&self.prev, line.json);
            if hash != line.stored {
                return Err((at, Problem::Changed { seq: entry.seq }));
            }
            self.entry(&entry).map_err(|p| (at, p))?;
            self.prev = hash;
            self.expected = Some(entry.seq + 1);
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry) -> Result<(), Problem> {
        let r = &mut self.report;
        r.entries += 1;
        r.last_seq = entry.seq;
        match &entry.body {
            Body::Record(record) => {
                r.records += 1;
                r.decisions += record.count;
                r.unsealed += 1;
            }
            Body::Checkpoint(cp) => {
                let actual = to_hex(&self.prev);
                if cp.sealed_seq + 1 != entry.seq || cp.seals != actual {
                    return Err(Problem::SealMismatch {
                        seq: entry.seq,
                        sealed_seq: cp.sealed_seq,
                        sealed: cp.seals.clone(),
                        actual_seq: entry.seq - 1,
                        actual,
                    });
                }
                let signer = seal::check_cached(cp, entry.seq, self.trust, &mut self.chains)
                    .map_err(|error| Problem::BadCheckpoint {
                        seq: entry.seq,
                        reason: error.to_string(),
                        error: Box::new(error),
                    })?;
                r.checkpoints += 1;
                r.last_checkpoint = entry.seq;
                r.unsealed = 0;
                r.signers.insert(signer.to_string());
            }
        }
        Ok(())
    }
}

fn seq_of(raw: &[u8]) -> Option<u64> {
    Line::split(raw).ok()?.entry().ok().map(|e| e.seq)
}
