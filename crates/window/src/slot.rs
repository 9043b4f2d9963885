//! What one resolution step of one aggregated series holds, and its compact encoding.
//!
//! While a step is open its sums live in a fixed-size [`Acc`] (only for the series that received
//! something in that step). When the step closes the accumulator is encoded as one record
//! appended to the series' current chunk:
//!
//! ```text
//! offset in chunk (u8) | field mask (LEB128 u16) | one LEB128 u64 per set field
//!   | if BUCKETS is set: lowest and highest non-empty bucket (u8, u8), then each bucket's count
//!     between them (LEB128, non-cumulative)
//! ```
//!
//! A step with nothing in it has no record at all, a field that is zero costs nothing (a bit of
//! the mask), and latency buckets cost one byte or two each only across the range actually hit
//! (requests of one series usually land in 2-4 neighbouring buckets). A busy workload step is
//! about 20-25 bytes; an authorization caller's about 4.

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
}

pub(crate) const FIELDS: usize = 11;

/// Flag: traffic with a verified peer identity was seen in the step.
pub(crate) const MTLS: u16 = 1 << 11;
/// Flag: traffic without a peer identity was seen in the step.
pub(crate) const PLAIN: u16 = 1 << 12;
const HAS_BUCKETS: u16 = 1 << 13;

/// The bucket index of a `le` label value, if it is one of the proxy's bounds.
pub(crate) fn bucket_index(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(BUCKETS - 1);
    }
    let bound: f64 = le.parse().ok()?;
    LATENCY_BOUNDS.iter().position(|&b| b == bound)
}

/// An open step's sums. Buckets are cumulative (as scraped), summed over the raw series.
#[derive(Clone, Debug, Default)]
pub(crate) struct Acc {
    pub(crate) vals: [u64; FIELDS],
    pub(crate) cum: [u32; BUCKETS],
    pub(crate) flags: u16,
}

impl Acc {
    pub(crate) fn add(&mut self, field: Field, n: u64) {
        let v = &mut self.vals[field as usize];
        *v = v.saturating_add(n);
    }

    pub(crate) fn add_bucket(&mut self, index: usize, n: u64) {
        let c = &mut self.cum[index];
        *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Appends this step's record (nothing if it is empty).
    pub(crate) fn encode(&self, offset: u8, out: &mut Vec<u8>) {
        let mut buckets = [0u64; BUCKETS];
        let mut prev = 0u32;
        for (b, &c) in buckets.iter_mut().zip(&self.cum) {
            *b = u64::from(c.saturating_sub(prev));
            prev = prev.max(c);
        }
        let lo = buckets.iter().position(|&b| b > 0);
        let hi = buckets.iter().rposition(|&b| b > 0);
        let mut mask = self.flags & (MTLS | PLAIN);
        for (i, &v) in self.vals.iter().enumerate() {
            if v > 0 {
                mask |= 1 << i;
            }
        }
        if lo.is_some() {
            mask |= HAS_BUCKETS;
        }
        if mask == 0 {
            return;
        }
        out.push(offset);
        put_varint(out, u64::from(mask));
        for &v in self.vals.iter().filter(|&&v| v > 0) {
            put_varint(out, v);
        }
        if let (Some(lo), Some(hi)) = (lo, hi) {
            out.push(lo as u8);
            out.push(hi as u8);
            for &b in &buckets[lo..=hi] {
                put_varint(out, b);
            }
        }
    }

    /// Adds this (still open) step into `t`, as its record would.
    pub(crate) fn add_to(&self, t: &mut Totals) {
        for (a, &v) in t.vals.iter_mut().zip(&self.vals) {
            *a = a.saturating_add(v);
        }
        let mut prev = 0u32;
        for (b, &c) in t.buckets.iter_mut().zip(&self.cum) {
            *b += u64::from(c.saturating_sub(prev));
            prev = prev.max(c);
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

/// Reads the records of a chunk: calls `f(offset, totals_of_that_step)` for each.
pub(crate) fn decode(data: &[u8], mut f: impl FnMut(u8, &Totals)) {
    let mut r = Reader { data, pos: 0 };
    while let Some(offset) = r.byte() {
        let mut t = Totals::default();
        let Some(mask) = r.varint() else { return };
        let mask = mask as u16;
        for i in 0..FIELDS {
            if mask & (1 << i) != 0 {
                let Some(v) = r.varint() else { return };
                t.vals[i] = v;
            }
        }
        t.flags = mask & (MTLS | PLAIN);
        if mask & HAS_BUCKETS != 0 {
            let (Some(lo), Some(hi)) = (r.byte(), r.byte()) else {
                return;
            };
            for i in lo as usize..=(hi as usize).min(BUCKETS - 1) {
                let Some(v) = r.varint() else { return };
                t.buckets[i] = v;
            }
        }
        f(offset, &t);
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
