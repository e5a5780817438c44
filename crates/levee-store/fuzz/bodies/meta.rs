//! The body of the `meta` fuzz target, shared by `fuzz_targets/meta.rs` (cargo-fuzz, libFuzzer)
//! and `tests/fuzz_bodies.rs` (stable `cargo test`).
//!
//! Puts arbitrary bytes in a metadata file (the broker's queue catalog entry) on the in-memory
//! fault-injecting backend and reads it with `meta::read_meta`: contents or an error, never a
//! panic, and contents only when the header's length and checksum match (so what comes back is
//! exactly the input minus its 20-byte header).

use std::path::Path;

use levee_store::backend::fault::FaultyBackend;

/// Reads `data` as a metadata file.
pub(crate) fn meta(data: &[u8]) {
    let backend = FaultyBackend::new();
    let path = Path::new("/d/queue.meta");
    levee_store::meta::write_meta_atomic(&*backend.shared(), path, b"").expect("in-memory write");
    assert!(backend.set_file_contents(path, data.to_vec()));
    if let Ok(Some(contents)) = levee_store::meta::read_meta(&*backend.shared(), path) {
        assert_eq!(&data[20..], &contents[..]);
    }
}
