//! The aggregated series and their rings of steps.
//!
//! A series is keyed by what the API shows ([`Kind`] plus up to four interned strings). Its
//! history is a short list of chunks, each holding the encoded records ([`crate::slot`]) of up to
//! `chunk_steps` consecutive steps; a chunk is dropped whole once its newest step is older than
//! the retention, and a series without chunks and without an open step is removed (its strings
//! released). The open step's sums are kept apart in `pending`, one [`Acc`] per series that
//! received something since the step opened, and are encoded when the next step opens.
//!
//! The number of series is capped: a key that would create a series beyond `max_series` is
//! refused and counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::intern::{Interner, Sym};
use crate::slot::{self, Acc, Totals};

/// What a series aggregates; the meaning of its key's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// `[namespace, workload, -, -]`: inbound (served) traffic.
    Workload,
    /// `[src_namespace, src_workload, dst_namespace, dst_workload]`: the caller's outbound view,
    /// plus the destination's denials of the caller's identity.
    Edge,
    /// `[src_namespace (from the SPIFFE id, or empty), src_id, dst_namespace, dst_workload]`:
    /// denials of an identity no known target has (or of an unmeshed caller: empty id).
    DeniedEdge,
    /// `[dst_namespace, route, dst_workload, -]`: outbound traffic by route and backend (the
    /// backend empty for `retry_total`, which has none); the query adds a route's backends up.
    Route,
    /// `[namespace, workload, policy, caller_id]`: authorization decisions.
    Authz,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) kind: Kind,
    pub(crate) s: [Sym; 4],
}

/// A key as text, before interning.
pub(crate) struct KeyText<'a> {
    pub(crate) kind: Kind,
    pub(crate) s: [&'a str; 4],
    /// Workload: `[identity, -]`; edges: `[src_id, dst_id]`. Set when the series is made, and
    /// filled later if it was empty.
    pub(crate) meta: [&'a str; 2],
}

const NO_PENDING: u32 = u32::MAX;

pub(crate) struct Series {
    pub(crate) key: Key,
    pub(crate) meta: [Sym; 2],
    /// Oldest first; kept at exact capacity (a chunk is added or dropped once per
    /// `chunk_steps` steps).
    chunks: Vec<Chunk>,
    pending: u32,
}

/// `first step / chunk_steps` as 4 little-endian bytes, then the records (one allocation of 16
/// bytes of pointer per chunk).
struct Chunk(Box<[u8]>);

impl Chunk {
    fn new(index: u32, record: &[u8]) -> Chunk {
        let mut data = Vec::with_capacity(4 + record.len());
        data.extend_from_slice(&index.to_le_bytes());
        data.extend_from_slice(record);
        Chunk(data.into_boxed_slice())
    }

    fn index(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[..4]);
        u32::from_le_bytes(b)
    }

    fn records(&self) -> &[u8] {
        &self.0[4..]
    }

    fn push(&mut self, record: &[u8]) {
        let mut data = std::mem::take(&mut self.0).into_vec();
        data.reserve_exact(record.len());
        data.extend_from_slice(record);
        self.0 = data.into_boxed_slice();
    }
}

/// Hashes a `u64` that is already a hash (the index's keys).
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) struct Store {
    pub(crate) interner: Interner,
    /// Series by a keyed hash of their key's kind and strings: one hash per lookup instead of one
    /// per string (a found series' strings are compared, so a collision cannot mix series up:
    /// the newcomer is refused like a series over the cap).
    index: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    hasher: foldhash::fast::RandomState,
    series: Vec<Option<Series>>,
    free: Vec<u32>,
    live: usize,
    max_series: usize,
    pending: Vec<(u32, Acc)>,
    /// The open step (all adds go there).
    pub(crate) open_step: Option<u64>,
    chunk_steps: u64,
    retention_steps: u64,
    pub(crate) dropped_total: u64,
}

impl Store {
    pub(crate) fn new(max_series: usize, retention_steps: u64) -> Self {
        // About a dozen chunks over the retention: few allocations per series, little kept past
        // the retention (at most one chunk's worth), offsets fit a byte.
        let chunk_steps = retention_steps.div_ceil(12).clamp(1, 255);
        Store {
            interner: Interner::new(),
            index: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
            series: Vec::new(),
            free: Vec::new(),
            live: 0,
            max_series,
            pending: Vec::new(),
            open_step: None,
            chunk_steps,
            retention_steps,
            dropped_total: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Moves to `step` (encoding the open step when a newer one starts, and expiring what aged
    /// out); returns the step adds go to: a step older than the open one (a late scrape) is
    /// counted in the open one.
    pub(crate) fn advance(&mut self, step: u64) -> u64 {
        match self.open_step {
            Some(open) if step <= open => return open,
            Some(open) => {
                self.flush(open);
                self.expire(step);
            }
            None => {}
        }
        self.open_step = Some(step);
        step
    }

    fn flush(&mut self, step: u64) {
        let index = (step / self.chunk_steps) as u32;
        let offset = (step % self.chunk_steps) as u8;
        let mut buf = Vec::with_capacity(64);
        for (i, acc) in self.pending.drain(..) {
            let Some(Some(series)) = self.series.get_mut(i as usize) else {
                continue;
            };
            series.pending = NO_PENDING;
            buf.clear();
            acc.encode(offset, &mut buf);
            if buf.is_empty() {
                continue;
            }
            match series.chunks.last_mut() {
                Some(chunk) if chunk.index() == index => chunk.push(&buf),
                _ => {
                    series.chunks.reserve_exact(1);
                    series.chunks.push(Chunk::new(index, &buf));
                }
            }
        }
    }

    /// Drops chunks whose steps are all older than the retention before `now_step`, and series
    /// left empty.
    fn expire(&mut self, now_step: u64) {
        let oldest = (now_step + 1).saturating_sub(self.retention_steps);
        let mut emptied = Vec::new();
        for (i, slot) in self.series.iter_mut().enumerate() {
            let Some(series) = slot else { continue };
            let old = series
                .chunks
                .iter()
                .take_while(|c| (u64::from(c.index()) + 1) * self.chunk_steps <= oldest)
                .count();
            if old > 0 {
                series.chunks.drain(..old);
                series.chunks.shrink_to_fit();
            }
            if series.chunks.is_empty() && series.pending == NO_PENDING {
                emptied.push(i);
            }
        }
        for i in emptied {
            if let Some(series) = self.series[i].take() {
                let texts = series.key.s.map(|s| self.interner.resolve(s));
                let hash = key_hash(&self.hasher, series.key.kind, texts);
                self.index.remove(&hash);
                for sym in series.key.s.into_iter().chain(series.meta) {
                    self.interner.release(sym);
                }
                self.free.push(i as u32);
                self.live -= 1;
            }
        }
    }

    /// Adds into the open step of the series of `key` (made if new and under the cap). False when
    /// the series was refused by the cap.
    pub(crate) fn add(&mut self, key: &KeyText<'_>, apply: impl FnOnce(&mut Acc)) -> bool {
        let Some(i) = self.find_or_make(key) else {
            self.dropped_total += 1;
            return false;
        };
        let Some(Some(series)) = self.series.get_mut(i as usize) else {
            return false;
        };
        if series.pending == NO_PENDING {
            series.pending = self.pending.len() as u32;
            self.pending.push((i, Acc::default()));
        }
        let p = series.pending as usize;
        apply(&mut self.pending[p].1);
        true
    }

    fn find_or_make(&mut self, key: &KeyText<'_>) -> Option<u32> {
        let hash = key_hash(&self.hasher, key.kind, key.s);
        if let Some(&i) = self.index.get(&hash) {
            let series = self.series.get(i as usize)?.as_ref()?;
            let same = series.key.kind == key.kind
                && series
                    .key
                    .s
                    .iter()
                    .zip(key.s)
                    .all(|(&sym, text)| self.interner.resolve(sym) == text);
            if !same {
                return None;
            }
            if series.meta.contains(&Sym::EMPTY) {
                self.fill_meta(i, key);
            }
            return Some(i);
        }
        if self.live >= self.max_series {
            return None;
        }
        let mut s = [Sym::EMPTY; 4];
        for (sym, text) in s.iter_mut().zip(key.s) {
            *sym = self.interner.retain(text);
        }
        let meta = key.meta.map(|m| self.interner.retain(m));
        let series = Series {
            key: Key { kind: key.kind, s },
            meta,
            chunks: Vec::new(),
            pending: NO_PENDING,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.series[i as usize] = Some(series);
                i
            }
            None => {
                self.series.push(Some(series));
                self.series.len() as u32 - 1
            }
        };
        self.index.insert(hash, i);
        self.live += 1;
        Some(i)
    }

    fn fill_meta(&mut self, i: u32, key: &KeyText<'_>) {
        for (n, text) in key.meta.iter().enumerate() {
            let empty =
                matches!(self.series.get(i as usize), Some(Some(s)) if s.meta[n] == Sym::EMPTY);
            if empty && !text.is_empty() {
                let sym = self.interner.retain(text);
                if let Some(Some(series)) = self.series.get_mut(i as usize) {
                    series.meta[n] = sym;
                }
            }
        }
    }

    /// Every live series.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Series> {
        self.series.iter().flatten()
    }

    pub(crate) fn text(&self, sym: Sym) -> &str {
        self.interner.resolve(sym)
    }

    /// The series of `key`, if any.
    pub(crate) fn find(&self, kind: Kind, s: [&str; 4]) -> Option<&Series> {
        let i = *self.index.get(&key_hash(&self.hasher, kind, s))?;
        let series = self.series.get(i as usize)?.as_ref()?;
        let same = series.key.kind == kind
            && series
                .key
                .s
                .iter()
                .zip(s)
                .all(|(&sym, text)| self.interner.resolve(sym) == text);
        same.then_some(series)
    }

    /// Sums of `series` over the steps `from..=to`.
    pub(crate) fn totals(&self, series: &Series, from: u64, to: u64) -> Totals {
        let mut t = [Totals::default()];
        self.add_steps(series, from, to, &mut t, |_| Some(0));
        let [t] = t;
        t
    }

    /// Adds each step of `series` in `from..=to` into `out[slot_of(step)]`.
    pub(crate) fn add_steps(
        &self,
        series: &Series,
        from: u64,
        to: u64,
        out: &mut [Totals],
        slot_of: impl Fn(u64) -> Option<usize>,
    ) {
        if from > to {
            return;
        }
        for chunk in &series.chunks {
            let first = u64::from(chunk.index()) * self.chunk_steps;
            if first > to || first + self.chunk_steps <= from {
                continue;
            }
            slot::add_records(chunk.records(), out, |offset| {
                let step = first + u64::from(offset);
                if (from..=to).contains(&step) {
                    slot_of(step)
                } else {
                    None
                }
            });
        }
        if series.pending != NO_PENDING
            && let Some(open) = self.open_step
            && (from..=to).contains(&open)
            && let Some((_, acc)) = self.pending.get(series.pending as usize)
            && let Some(t) = slot_of(open).and_then(|i| out.get_mut(i))
        {
            acc.add_to(t);
        }
    }

    /// Estimated heap bytes: `(total, of which encoded steps)`.
    pub(crate) fn memory(&self) -> (usize, usize) {
        let mut data = 0;
        let mut rings = 0;
        for series in self.iter() {
            rings += series.chunks.capacity() * std::mem::size_of::<Chunk>();
            data += series.chunks.iter().map(|c| c.0.len()).sum::<usize>();
        }
        let index = self.index.capacity() * (std::mem::size_of::<(u64, u32)>() + 1);
        let slab = self.series.capacity() * std::mem::size_of::<Option<Series>>()
            + self.free.capacity() * 4;
        let pending = self.pending.capacity() * std::mem::size_of::<(u32, Acc)>();
        (
            data + rings + index + slab + pending + self.interner.memory(),
            data,
        )
    }
}

/// The index's hash of a key (0xff never occurs in UTF-8: the strings cannot run into each
/// other).
fn key_hash(hasher: &foldhash::fast::RandomState, kind: Kind, s: [&str; 4]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write_u8(kind as u8);
    for text in s {
        h.write(text.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}
