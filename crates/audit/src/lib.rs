//! onemesh-audit: the decision log's format and everything that reads or writes it. The control
//! plane writes it ([`Writer`]); `onemesh audit verify` and `onemesh audit query` read it
//! ([`verify_dir`], [`query_dir`]). The format is described in `docs/audit.md`.
//!
//! - [`entry`]: one line, `<sha256 hex> <json>\n`, the hash chaining it to the line before.
//! - [`seal`]: checkpoints signed with the control plane's leaf key (rustls' `ring` provider),
//!   checked against the trust anchors and the control plane's id.
//! - [`writer`]: append a batch once (dedup by proxy instance and batch), fsync, seal, rotate by
//!   size with a checkpoint carrying the chain into each new file, prune by age, recover from a
//!   torn last line.
//! - [`verify`]: walk all files and name the first spot that fails.
//! - [`query`]: filter the records.
//! - [`time`]: the few date conversions the CLI needs (UTC, RFC 3339).
//!
//! Deliberately not here: network, clocks (callers pass `now`), scheduling (the control plane
//! seals on a timer), and aggregation (the proxy aggregates before shipping).

pub mod entry;
pub mod query;
pub mod seal;
pub mod time;
pub mod verify;
pub mod writer;

pub use entry::{Body, Checkpoint, Decision, Entry, Mode, Record};
pub use query::{Filter, Found, query_dir};
pub use seal::{CheckpointError, SealError, Sealer, Trust};
pub use verify::{Failure, Problem, ReadError, Report, verify_dir};
pub use writer::{Appended, Batch, Opened, WriteError, Writer, WriterSettings};

#[cfg(test)]
mod tests;
