//! The `decode` fuzz target's body (`fuzz/bodies/decode.rs`), run on stable: on the encodings of
//! random valid client and server frames (a few back to back), on byte mutations and cuts of them,
//! and on random bytes, under every max-frame and chunk-size choice of its two control bytes. The
//! body asserts the decoder's contract itself (see its docs); this test fails if it panics.

mod common;

#[path = "../fuzz/bodies/decode.rs"]
mod body;

use bytes::BytesMut;
use common::{client_frame, server_frame};
use proptest::collection::vec;
use proptest::prelude::*;

fn encode_all(client: &[levee_proto::ClientFrame], server: &[levee_proto::ServerFrame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for f in client {
        f.encode(&mut buf).expect("generated frames encode");
    }
    for f in server {
        f.encode(&mut buf).expect("generated frames encode");
    }
    buf.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_target_accepts_valid_frames_and_survives_their_mutations(
        control in any::<[u8; 2]>(),
        client in vec(client_frame(), 0..3),
        server in vec(server_frame(), 0..3),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut input = control.to_vec();
        input.extend(encode_all(&client, &server));
        body::decode(&input);
        for (at, b) in edits {
            let i = at.index(input.len());
            input[i] = b;
        }
        body::decode(&input);
        let end = cut.index(input.len() + 1);
        body::decode(&input[..end]);
    }

    #[test]
    fn decode_target_survives_random_bytes(input in vec(any::<u8>(), 0..600)) {
        body::decode(&input);
    }
}
