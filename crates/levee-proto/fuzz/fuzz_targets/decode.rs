//! cargo-fuzz target: both wire-frame decoders (the body is `bodies/decode.rs`, shared with the
//! stable test `tests/fuzz_bodies.rs`).
#![no_main]

#[path = "../bodies/decode.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::decode(data));
