//! cargo-fuzz target: the segment-header and record-stream decoders (the body is
//! `bodies/records.rs`, shared with the stable test `tests/fuzz_bodies.rs`).
#![no_main]

#[path = "../bodies/records.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::records(data));
