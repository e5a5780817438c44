//! cargo-fuzz target: the metadata-file reader (the body is `bodies/meta.rs`, shared with the
//! stable test `tests/fuzz_bodies.rs`).
#![no_main]

#[path = "../bodies/meta.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::meta(data));
