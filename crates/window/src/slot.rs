//! What one resolution step of one aggregated series holds, and its compact encoding.
//!
//! While a step is open its sums live in a fixed-size [`Acc`] (only for the series that received
//! something in that step). When the step closes the accumulator is encoded as one record
//! appended to the series' current chunk:
//!
//! ```text
//! offset in chunk (u8) | mask (LEB128) | one LEB128 u64 per field set in the mask
//!   | if the mask says buckets: lowest non-empty bucket (5 bits) and span to the highest
//!     (3 bits; 7 = the highest follows as a byte), then each bucket's count over that range
//!     (LEB128, non-cumulative)
//! ```
//!
//! A step with nothing in it has no record at all, a field that is zero costs nothing (a bit of
//! the mask), and latency buckets cost one byte or two each only across the range actually hit
//! (requests of one series usually land in 2-4 neighbouring buckets). The mask's first 7 bits
//! (one byte) are what busy HTTP series need: requests, successes, "successes = requests" (then
//! not stored), buckets, the two TLS flags and allowed. A busy edge step is about 10 bytes, a busy
//! workload's about 20 (it also has TCP bytes), an authorization caller's 3-4.

/// The proxy's latency buckets (`response_latency_seconds`), in seconds; index 23 is `+Inf`.
pub const LATENCY_BOUNDS: [f64; 23] = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0,
    2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0,
];

/// Buckets kept per step: the 23 finite bounds and `+Inf`.
pub(crate) const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The counters a step holds (index into [`Acc::vals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Field {
    Requests = 0,
    Success,
    Failure,
    Denied,
    Allowed,
    TcpRead,
    TcpWrite,
    TcpOpen,
    TcpClose,
    Retries,
    Refused,
    WouldDeny,
}

pub(crate) const FIELDS: usize = 12;

/// Flag: traffic with a verified peer identity was seen in the step.
pub(crate) const MTLS: u16 = 1;
/// Flag: traffic without a peer identity was seen in the step.
pub(crate) const PLAIN: u16 = 2;

/// The mask's bit for each field, by [`Field`] index.
const FIELD_BIT: [u32; FIELDS] = [
    1 << 0,  // requests
    1 << 1,  // success
    1 << 7,  // failure
    1 << 8,  // denied
    1 << 6,  // allowed
    1 << 9,  // tcp read
    1 << 10, // tcp write
    1 << 11, // tcp open
    1 << 12, // tcp close
    1 << 13, // retries
    1 << 14, // refused
    1 << 15, // would deny
];
/// Successes equal requests (then not stored).
const SUCCESS_IS_REQUESTS: u32 = 1 << 2;
const HAS_BUCKETS: u32 = 1 << 3;
const MASK_MTLS: u32 = 1 << 4;
const MASK_PLAIN: u32 = 1 << 5;

/// The bucket index of a `le` label value, if it is one of the proxy's bounds.
pub(crate) fn bucket_index(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(BUCKETS - 1);
    }
    let bound: f64 = le.parse().ok()?;
    LATENCY_BOUNDS.iter().position(|&b| b == bound)
}

/// An open step's sums. Buckets are non-cumulative (the ingest differences each histogram's
/// cumulative bucket deltas).
#[derive(Clone, Debug, Default)]
pub(crate) struct Acc {
    pub(crate) vals: [u64; FIELDS],
    pub(crate) buckets: [u32; BUCKETS],
    pub(crate) flags: u16,
}

impl Acc {
    pub(crate) fn add(&mut self, field: Field, n: u64) {
        let v = &mut self.vals[field as usize];
        *v = v.saturating_add(n);
    }

    pub(crate) fn add_bucket(&mut self, index: usize, n: u64) {
        let c = &mut self.buckets[index];
        *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Appends this step's record (nothing if it is empty).
    pub(crate) fn encode(&self, offset: u8, out: &mut Vec<u8>) {
        let buckets = &self.buckets;
        let lo = buckets.iter().position(|&b| b > 0);
        let hi = buckets.iter().rposition(|&b| b > 0);
        let mut mask = 0u32;
        if self.flags & MTLS != 0 {
            mask |= MASK_MTLS;
        }
        if self.flags & PLAIN != 0 {
            mask |= MASK_PLAIN;
        }
        for (i, &v) in self.vals.iter().enumerate() {
            if v > 0 {
                mask |= FIELD_BIT[i];
            }
        }
        let requests = self.vals[Field::Requests as usize];
        let same = requests > 0 && self.vals[Field::Success as usize] == requests;
        if same {
            mask = (mask & !FIELD_BIT[Field::Success as usize]) | SUCCESS_IS_REQUESTS;
        }
        if lo.is_some() {
            mask |= HAS_BUCKETS;
        }
        if mask == 0 {
            return;
        }
        out.push(offset);
        put_varint(out, u64::from(mask));
        for (i, &v) in self.vals.iter().enumerate() {
            if mask & FIELD_BIT[i] != 0 {
                put_varint(out, v);
            }
        }
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let span = hi - lo;
            out.push(lo as u8 | (span.min(7) as u8) << 5);
            if span >= 7 {
                out.push(hi as u8);
            }
            for &b in &buckets[lo..=hi] {
                put_varint(out, u64::from(b));
            }
        }
    }

    /// Adds this (still open) step into `t`, as its record would.
    pub(crate) fn add_to(&self, t: &mut Totals) {
        for (a, &v) in t.vals.iter_mut().zip(&self.vals) {
            *a = a.saturating_add(v);
        }
        for (b, &c) in t.buckets.iter_mut().zip(&self.buckets) {
            *b = b.saturating_add(u64::from(c));
        }
        t.flags |= self.flags & (MTLS | PLAIN);
    }
}

/// Sums over some steps, buckets non-cumulative.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) vals: [u64; FIELDS],
    pub(crate) buckets: [u64; BUCKETS],
    pub(crate) flags: u16,
}

impl Totals {
    pub(crate) fn get(&self, field: Field) -> u64 {
        self.vals[field as usize]
    }

    pub(crate) fn merge(&mut self, other: &Totals) {
        for (a, &v) in self.vals.iter_mut().zip(&other.vals) {
            *a = a.saturating_add(v);
        }
        for (a, &v) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(v);
        }
        self.flags |= other.flags;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.vals.iter().all(|&v| v == 0) && self.flags == 0
    }

    /// Prometheus' `histogram_quantile` over the buckets, in seconds (see [`quantile`]).
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }
}

/// Reads the records of a chunk and adds each one whose offset `slot_of` maps to an index into
/// `out[index]` (records of other offsets are read past).
pub(crate) fn add_records(data: &[u8], out: &mut [Totals], slot_of: impl Fn(u8) -> Option<usize>) {
    let mut scratch = Totals::default();
    let mut r = Reader { data, pos: 0 };
    while let Some(offset) = r.byte() {
        let t = match slot_of(offset).and_then(|i| out.get_mut(i)) {
            Some(t) => t,
            None => &mut scratch,
        };
        let Some(mask) = r.varint() else { return };
        let mask = mask as u32;
        let mut requests = 0;
        for (i, bit) in FIELD_BIT.iter().enumerate() {
            if mask & bit != 0 {
                let Some(v) = r.varint() else { return };
                if i == Field::Requests as usize {
                    requests = v;
                }
                t.vals[i] = t.vals[i].saturating_add(v);
            }
        }
        if mask & SUCCESS_IS_REQUESTS != 0 {
            let success = &mut t.vals[Field::Success as usize];
            *success = success.saturating_add(requests);
        }
        if mask & MASK_MTLS != 0 {
            t.flags |= MTLS;
        }
        if mask & MASK_PLAIN != 0 {
            t.flags |= PLAIN;
        }
        if mask & HAS_BUCKETS != 0 {
            let Some(packed) = r.byte() else { return };
            let lo = usize::from(packed & 0x1f);
            let hi = match packed >> 5 {
                7 => {
                    let Some(hi) = r.byte() else { return };
                    usize::from(hi)
                }
                span => lo + usize::from(span),
            };
            if lo > hi || hi >= BUCKETS {
                return;
            }
            for b in &mut t.buckets[lo..=hi] {
                let Some(v) = r.varint() else { return };
                *b = b.saturating_add(v);
            }
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Prometheus' `histogram_quantile` over non-cumulative bucket counts (the last one `+Inf`), in
/// seconds. The rank `q × total` is found in the cumulative counts and interpolated linearly
/// inside its bucket, the first bucket starting at 0. A rank in the `+Inf` bucket answers the
/// highest finite bound (30 s), as Prometheus does: the data cannot say more. `None` with no
/// observations.
pub(crate) fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &count) in buckets.iter().enumerate() {
        let cum = below + count;
        if cum as f64 >= rank && count > 0 {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                return Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]);
            };
            let frac = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * frac);
        }
        below = cum;
        if let Some(&b) = LATENCY_BOUNDS.get(i) {
            lower = b;
        }
    }
    Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1])
}
