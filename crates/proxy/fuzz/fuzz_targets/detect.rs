//! Fuzzes protocol detection's classifier: never panics, and its answers are consistent with the
//! input (HTTP/2 only for the preface, a decision for any input of the maximum size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use onemesh_proxy::detect::{Detected, H2_PREFACE, MAX_DETECT_BYTES, classify};

fuzz_target!(|data: &[u8]| {
    let found = classify(data);
    if found == Some(Detected::Http2) {
        assert!(data.starts_with(H2_PREFACE));
    }
    if data.len() >= MAX_DETECT_BYTES {
        assert!(found.is_some(), "a full buffer must decide");
    }
    // Classifying a prefix never contradicts a decision made on it.
    if let Some(decided) = found {
        for end in 0..data.len() {
            if let Some(earlier) = classify(&data[..end]) {
                assert_eq!(earlier, decided);
                break;
            }
        }
    }
});
