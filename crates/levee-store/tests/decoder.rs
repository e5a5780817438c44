//! The decoders are total: arbitrary bytes (and mutations of valid encodings) give records or an
//! error, never a panic. The same entry points are fuzzed by `fuzz/fuzz_targets/records.rs`.

use levee_store::format::{
    SegmentHeader, decode_all, decode_segment_header, encode_segment_header,
};
use proptest::prelude::*;

fn valid_log() -> Vec<u8> {
    // A real segment produced by the log, minus its header.
    let backend = levee_store::backend::fault::FaultyBackend::new();
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
    let bytes = backend
        .file_contents(std::path::Path::new("/d/q/0000000000000000.open"))
        .unwrap();
    bytes[32..].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&bytes);
        let _ = decode_segment_header(&bytes);
    }

    #[test]
    fn mutated_valid_records_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut bytes = valid_log();
        prop_assert_eq!(decode_all(&bytes).unwrap().len(), 4);
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = decode_all(&bytes);
        let end = cut.index(bytes.len() + 1);
        let _ = decode_all(&bytes[..end]);
    }

    #[test]
    fn segment_header_roundtrips(index in any::<u64>(), base_seq in any::<u64>()) {
        let h = SegmentHeader { index, base_seq };
        prop_assert_eq!(decode_segment_header(&encode_segment_header(&h)).unwrap(), h);
    }
}
