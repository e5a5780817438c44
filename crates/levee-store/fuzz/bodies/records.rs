//! The body of the `records` fuzz target, shared by `fuzz_targets/records.rs` (cargo-fuzz,
//! libFuzzer) and `tests/fuzz_bodies.rs` (stable `cargo test`).
//!
//! Feeds arbitrary bytes to the segment-header decoder and the record-stream decoder (from the
//! start and from past a header's 32 bytes). They are total: records or an error, never a panic;
//! every record `decode_all` returns lies inside the input, and its error offset too.

/// Runs every segment-file decoder over `data`.
pub(crate) fn records(data: &[u8]) {
    let _ = levee_store::format::decode_segment_header(data);
    check_stream(data);
    if data.len() > 32 {
        check_stream(&data[32..]);
    }
}

fn check_stream(data: &[u8]) {
    if let Err((offset, _)) = levee_store::format::decode_all(data) {
        assert!(
            offset <= data.len(),
            "error offset {offset} past the input's {} bytes",
            data.len()
        );
    }
}
