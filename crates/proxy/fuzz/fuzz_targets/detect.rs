//! Fuzzes protocol detection's classifier: never panics, and its answers are consistent with the
//! input (HTTP/2 only for the preface, a decision for any input of the maximum size), and the
//! verdict does not depend on how TCP splits the bytes: a prefix that decides decides the same as
//! the whole input.
//!
//! Every prefix is checked for inputs up to [`EVERY_PREFIX`] bytes; for longer ones (up to and past
//! `MAX_DETECT_BYTES`), the prefixes that end at or next to a byte the classifier looks at (space,
//! CR, LF, other control bytes), evenly spaced ones, and those around the size limit, so that a
//! run stays fast (checking all of them is quadratic in the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use onemesh_proxy::detect::{Detected, H2_PREFACE, MAX_DETECT_BYTES, classify};

const EVERY_PREFIX: usize = 512;
/// At most this many split points next to interesting bytes, past [`EVERY_PREFIX`].
const MAX_NEAR_SPECIAL: usize = 64;

fn check_prefix(data: &[u8], end: usize, decided: Detected) {
    if let Some(early) = classify(&data[..end]) {
        assert_eq!(early, decided, "the first {end} bytes decide otherwise");
    }
}

fuzz_target!(|data: &[u8]| {
    let found = classify(data);
    if found == Some(Detected::Http2) {
        assert!(data.starts_with(H2_PREFACE));
    }
    if data.len() >= MAX_DETECT_BYTES {
        assert!(found.is_some(), "a full buffer must decide");
    }
    // Classifying a prefix never contradicts a decision made on the whole.
    let Some(decided) = found else { return };
    for end in 0..data.len().min(EVERY_PREFIX) {
        check_prefix(data, end, decided);
    }
    if data.len() <= EVERY_PREFIX {
        return;
    }
    let special = |b: u8| b < 0x20 || b == b' ';
    let near_special = (EVERY_PREFIX..data.len())
        .filter(|&i| special(data[i]))
        .take(MAX_NEAR_SPECIAL)
        .flat_map(|i| [i, i + 1]);
    let spaced = (1..16).map(|k| k * data.len() / 16);
    let limit = [MAX_DETECT_BYTES - 1, MAX_DETECT_BYTES, MAX_DETECT_BYTES + 1];
    for end in near_special.chain(spaced).chain(limit) {
        if end < data.len() {
            check_prefix(data, end, decided);
        }
    }
});
