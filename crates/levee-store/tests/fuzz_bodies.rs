//! The fuzz targets' bodies (`fuzz/bodies/`), run on stable: `records` on a real segment file
//! written by the log (header included) and `meta` on a real metadata file, each also with byte
//! mutations and cuts, and both on random bytes. The bodies assert the decoders' contracts
//! themselves (see their docs); this test fails if one panics.

#[path = "../fuzz/bodies/meta.rs"]
mod meta_body;
#[path = "../fuzz/bodies/records.rs"]
mod records_body;

use std::path::Path;

use levee_store::backend::fault::FaultyBackend;
use proptest::collection::vec;
use proptest::prelude::*;

/// A real open segment: header, two messages (one with key, TTL and headers), a settlement and a
/// delivery count.
fn segment_file() -> Vec<u8> {
    let backend = FaultyBackend::new();
    let (log, _) =
        levee_store::QueueLog::open(backend.shared(), "/d/q", levee_store::LogConfig::default())
            .unwrap();
    let a = log
        .append_batch(&[
            levee_store::NewMessage {
                key: Some("k".into()),
                ttl_ms: Some(5),
                headers: vec![("h".into(), "v".into())],
                payload: "hello".into(),
                ..Default::default()
            },
            levee_store::NewMessage::default(),
        ])
        .unwrap();
    drop(
        log.settle(a.first_seq, levee_store::Settlement::Dropped("r".into()))
            .unwrap(),
    );
    drop(log.record_deliveries(&[(a.last_seq, 3)]).unwrap());
    log.close().unwrap();
    backend
        .file_contents(Path::new("/d/q/0000000000000000.open"))
        .unwrap()
}

/// A real metadata file holding `contents`.
fn meta_file(contents: &[u8]) -> Vec<u8> {
    let backend = FaultyBackend::new();
    let path = Path::new("/d/queue.meta");
    levee_store::meta::write_meta_atomic(&*backend.shared(), path, contents).unwrap();
    backend.file_contents(path).unwrap()
}

fn mutate(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    for (at, b) in edits {
        let i = at.index(bytes.len());
        bytes[i] = *b;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn records_target_survives_mutations_of_a_real_segment(
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..5),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = mutate(segment_file(), &edits);
        records_body::records(&bytes);
        records_body::records(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn meta_target_reads_real_files_and_survives_their_mutations(
        contents in vec(any::<u8>(), 0..64),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let file = meta_file(&contents);
        meta_body::meta(&file);
        let bytes = mutate(file, &edits);
        meta_body::meta(&bytes);
        meta_body::meta(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn both_targets_survive_random_bytes(bytes in vec(any::<u8>(), 0..300)) {
        records_body::records(&bytes);
        meta_body::meta(&bytes);
    }
}
