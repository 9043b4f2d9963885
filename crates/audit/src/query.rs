//! Reading the records of a log directory through a filter (no verification: run `verify` for
//! that). Lines that do not read are skipped and counted.

use std::path::Path;

use crate::entry::{Body, Decision, Line, Record};
use crate::verify::ReadError;
use crate::writer::list_files;

/// Which records to return; every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Records that overlap `[since_ms, until_ms)`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// The caller, one of these ids (empty string: unauthenticated).
    pub callers: Option<Vec<String>>,
    /// The target `namespace` and, when set, `workload`.
    pub to_namespace: Option<String>,
    pub to_workload: Option<String>,
    pub decision: Option<Decision>,
    /// A policy name; matches a record whose `policy` (possibly several joined by `,`) names it.
    pub policy: Option<String>,
    /// At most this many records: the newest ones.
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.since_ms.is_none_or(|t| r.until_ms.max(r.time_ms) >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && self
                .callers
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|id| id == &r.caller))
            && self.to_namespace.as_ref().is_none_or(|n| n == &r.namespace)
            && self.to_workload.as_ref().is_none_or(|w| w == &r.workload)
            && self.decision.is_none_or(|d| d == r.decision)
            && self
                .policy
                .as_ref()
                .is_none_or(|p| r.policy.split(',').any(|q| q == p))
    }
}

/// The records that matched, oldest first, with their sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub records: Vec<(u64, Record)>,
    /// Matching records left out by the limit, and lines that did not read.
    pub left_out: usize,
    pub unreadable: usize,
}

pub fn query_dir(dir: &Path, filter: &Filter) -> Result<Found, ReadError> {
    let files = list_files(dir).map_err(|source| ReadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut found = Found::default();
    for (_, path) in files {
        let bytes = std::fs::read(&path).map_err(|source| ReadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(entry) = Line::split(raw).and_then(|l| l.entry()) else {
                found.unreadable += 1;
                continue;
            };
            if let Body::Record(r) = entry.body
                && filter.matches(&r)
            {
                found.records.push((entry.seq, r));
            }
        }
    }
    if let Some(limit) = filter.limit
        && found.records.len() > limit
    {
        found.left_out = found.records.len() - limit;
        found.records.drain(..found.left_out);
    }
    Ok(found)
}
