//! Feeds arbitrary bytes to every levee-store decoder: the record stream decoder and the segment
//! header decoder. Run with `cargo +nightly fuzz run decode` from `crates/levee-store`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = levee_store::format::decode_segment_header(data);
    let _ = levee_store::format::decode_all(data);
    if data.len() > 32 {
        let _ = levee_store::format::decode_all(&data[32..]);
    }
});
