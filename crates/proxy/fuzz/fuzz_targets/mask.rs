//! Fuzzes tap masking (`tap::mask`): never panics, never adds digits or bytes, stays within the
//! cut, and masking what is masked changes nothing more (no number survives in a form a second
//! pass would find).
#![no_main]

use libfuzzer_sys::fuzz_target;
use onemesh_proxy::tap::mask;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let once = mask::cards(&text);
    assert!(once.len() <= text.len());
    let digits = |s: &str| s.bytes().filter(u8::is_ascii_digit).count();
    assert!(digits(&once) <= digits(&text));
    assert_eq!(mask::cards(&once), once, "a second pass masked more");
    let cut = mask::text(data, 64);
    assert!(cut.len() <= 64);
});
