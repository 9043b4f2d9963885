//! Masking of sensitive data in tap events and access logs, applied in the proxy before an event
//! leaves it.
//!
//! **Card numbers** ([`cards`]): 13 to 19 digits passing the Luhn check, contiguous or with one
//! separator between groups, anywhere in the text (authority, path, query, header values). A
//! separator is a space, `-`, `+` (a space in a query), or their percent-encodings `%20`, `%2D`,
//! `%2B`; a digit may also be percent-encoded (`%30`…`%39`). Every digit but the last four of the
//! number becomes one `*`; separators are kept as written (`4111 1111 1111 1111` →
//! `**** **** **** 1111`). Every window of 13–19 digits of a longer run is checked, so a valid
//! number inside a 20+ digit run is masked, and overlapping candidates are all masked (masking
//! more than a card number is the safe error). Two separators in a row, or any other character
//! (`.`, `/`, `_`, a letter), end a candidate: such a split number is not recognised.
//!
//! **Headers** ([`Masker`]): the values of configured names (always also `proxy-authorization`
//! and `set-cookie`) become `[masked]`; card numbers are masked in every other value.
//!
//! Input that is not UTF-8 is read lossily; nothing here panics on any input. Work is linear in
//! the input: a text with fewer than 13 digits is returned as is, without allocating. Callers
//! truncate ([`truncate`]) only after masking, never before (a cut could split a number so that
//! neither half is recognised).

use std::borrow::Cow;

use http::HeaderName;

/// What a masked header value becomes.
pub const MASKED: &str = "[masked]";

/// Header names whose values are always masked, whatever the configuration.
pub const ALWAYS_MASKED: [&str; 2] = ["proxy-authorization", "set-cookie"];

/// The default of `ONEMESH_PROXY_TAP_MASK_HEADERS`.
pub const DEFAULT_MASK_HEADERS: &str = "authorization,cookie,x-merchant-key";

const MIN_DIGITS: usize = 13;
const MAX_DIGITS: usize = 19;
/// Digits of a number left visible.
const VISIBLE: usize = 4;

/// One unit of the text: a digit (its value), a separator, or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Digit(u8),
    Sep,
    Other,
}

/// The unit at `i` and its length in bytes.
fn unit_at(b: &[u8], i: usize) -> (Unit, usize) {
    match b[i] {
        d @ b'0'..=b'9' => (Unit::Digit(d - b'0'), 1),
        b' ' | b'-' | b'+' => (Unit::Sep, 1),
        b'%' if i + 2 < b.len() => match (b[i + 1], b[i + 2]) {
            (b'3', d @ b'0'..=b'9') => (Unit::Digit(d - b'0'), 3),
            (b'2', b'0' | b'D' | b'd' | b'B' | b'b') => (Unit::Sep, 3),
            _ => (Unit::Other, 1),
        },
        _ => (Unit::Other, 1),
    }
}

/// Whether `s` could hold a card number at all: at least [`MIN_DIGITS`] digits (plain or
/// percent-encoded). One pass over the bytes.
fn may_hold_card(b: &[u8]) -> bool {
    let digits = b
        .iter()
        .filter(|c| c.is_ascii_digit() || **c == b'%')
        .count();
    digits >= MIN_DIGITS
}

/// `s` with every card number masked (see the module doc); borrowed when there is none.
pub fn cards(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    if !may_hold_card(b) {
        return Cow::Borrowed(s);
    }
    // The digits of the current run: (value, byte offset, byte length).
    let mut run: Vec<(u8, usize, usize)> = Vec::new();
    // Byte ranges of digits to mask.
    let mut masked: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let mut last_was_sep = false;
    while i < b.len() {
        let (unit, len) = unit_at(b, i);
        match unit {
            Unit::Digit(d) => {
                run.push((d, i, len));
                last_was_sep = false;
            }
            Unit::Sep if !run.is_empty() && !last_was_sep => last_was_sep = true,
            Unit::Sep | Unit::Other => {
                mask_run(&run, &mut masked);
                run.clear();
                last_was_sep = false;
            }
        }
        i += len;
    }
    mask_run(&run, &mut masked);
    if masked.is_empty() {
        return Cow::Borrowed(s);
    }
    masked.sort_unstable();
    masked.dedup();
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, len) in masked {
        out.push_str(&s[at..start]);
        out.push('*');
        at = start + len;
    }
    out.push_str(&s[at..]);
    Cow::Owned(out)
}

/// Finds every window of 13–19 digits of `run` passing the Luhn check and adds its digits but
/// the last four to `masked`. Linear: Luhn sums come from prefix sums.
fn mask_run(run: &[(u8, usize, usize)], masked: &mut Vec<(usize, usize)>) {
    let n = run.len();
    if n < MIN_DIGITS {
        return;
    }
    // even[k]/odd[k]: sum over j < k of digit j's Luhn contribution when the digits at even
    // (resp. odd) indices are the doubled ones.
    let doubled = |d: u8| {
        let x = 2 * u32::from(d);
        if x > 9 { x - 9 } else { x }
    };
    let mut even = vec![0u32; n + 1];
    let mut odd = vec![0u32; n + 1];
    for (j, (d, _, _)) in run.iter().enumerate() {
        let (plain, twice) = (u32::from(*d), doubled(*d));
        even[j + 1] = even[j] + if j % 2 == 0 { twice } else { plain };
        odd[j + 1] = odd[j] + if j % 2 == 1 { twice } else { plain };
    }
    // Per digit: mask it (it is in some window and not among that window's last four).
    let mut mask = vec![false; n];
    for end in MIN_DIGITS..=n {
        // the last digit, index end - 1, is not doubled: digits of the other parity are
        let sums = if (end - 1) % 2 == 0 { &odd } else { &even };
        for len in MIN_DIGITS..=MAX_DIGITS.min(end) {
            let start = end - len;
            if (sums[end] - sums[start]) % 10 == 0 {
                for m in &mut mask[start..end - VISIBLE] {
                    *m = true;
                }
            }
        }
    }
    masked.extend(
        run.iter()
            .zip(mask)
            .filter(|(_, m)| *m)
            .map(|((_, at, len), _)| (*at, *len)),
    );
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Bytes as text: lossy UTF-8, card numbers masked, then cut to `max` bytes.
pub fn text(bytes: &[u8], max: usize) -> String {
    let lossy = String::from_utf8_lossy(bytes);
    let masked = cards(&lossy).into_owned();
    truncate(masked, max)
}

/// Which header values are masked whole.
#[derive(Clone, Debug)]
pub struct Masker {
    names: Vec<HeaderName>,
}

impl Default for Masker {
    fn default() -> Self {
        Masker::parse(DEFAULT_MASK_HEADERS).unwrap_or(Masker { names: Vec::new() })
    }
}

impl Masker {
    /// From a comma-separated list of header names (case-insensitive); [`ALWAYS_MASKED`] are
    /// added. Fails with the first name that is not a header name.
    pub fn parse(list: &str) -> Result<Masker, String> {
        let mut names = Vec::new();
        for name in list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .chain(ALWAYS_MASKED)
        {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(Masker { names })
    }

    /// Whether `name`'s values are masked whole.
    pub fn masks(&self, name: &HeaderName) -> bool {
        self.names.contains(name)
    }

    /// A header value as it may leave the proxy: `[masked]` for a masked name, else the value
    /// with card numbers masked, cut to `max` bytes.
    pub fn header_value(&self, name: &HeaderName, value: &[u8], max: usize) -> String {
        if self.masks(name) {
            MASKED.to_string()
        } else {
            text(value, max)
        }
    }
}

#[cfg(test)]
mod tests;
