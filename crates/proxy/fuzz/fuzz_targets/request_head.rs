//! Fuzzes the first-request head check (the request-head parsing path): never panics, and a
//! complete head never claims more bytes than it was given or more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onemesh_proxy::head::{Head, check};

fuzz_target!(|data: &[u8]| {
    for max in [64, 8192] {
        if let Head::Complete(n) = check(data, max) {
            assert!(n <= data.len() && n <= max);
        }
    }
});
