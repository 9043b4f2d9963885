//! Fuzzes the transport header decoder: never panics, and whatever decodes re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onemesh_proxy::transport_header::TransportHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = TransportHeader::decode(data) {
        let again = header.encode().expect("a decoded header re-encodes");
        assert_eq!(&again[..], &data[..used]);
    }
});
