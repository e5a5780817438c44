//! The body of the `decode` fuzz target, shared by `fuzz_targets/decode.rs` (cargo-fuzz, libFuzzer)
//! and `tests/fuzz_bodies.rs` (stable `cargo test`, on encodings of random valid frames and
//! mutations of them).
//!
//! Feeds arbitrary bytes to both decoders. The first input byte picks the max frame size, the
//! second a chunk size, so framing, limits and streaming are all exercised. Asserts the decoder's
//! contract: no panic, `Ok(None)` and `FrameTooLarge` consume nothing, other errors consume the
//! frame, and every accepted frame re-encodes to exactly the bytes it was decoded from.

use bytes::BytesMut;
use levee_proto::{ClientFrame, ProtoError, ServerFrame};

macro_rules! drain {
    ($ty:ty, $data:expr, $max:expr, $chunk:expr) => {{
        let mut buf = BytesMut::new();
        let mut fed = 0;
        loop {
            if fed < $data.len() {
                let end = (fed + $chunk).min($data.len());
                buf.extend_from_slice(&$data[fed..end]);
                fed = end;
            }
            let before = buf.clone();
            match <$ty>::decode(&mut buf, $max) {
                Ok(Some(frame)) => {
                    let used = before.len() - buf.len();
                    let mut again = BytesMut::new();
                    frame.encode(&mut again).expect("decoded frame re-encodes");
                    assert_eq!(&again[..], &before[..used]);
                    let _ = frame.request_id();
                }
                Ok(None) => {
                    assert_eq!(buf, before);
                    if fed == $data.len() {
                        break;
                    }
                }
                Err(e @ ProtoError::FrameTooLarge { .. }) => {
                    assert_eq!(buf, before);
                    let _ = (e.code(), e.to_string());
                    break;
                }
                Err(e) => {
                    assert!(buf.len() < before.len());
                    let _ = (e.code(), e.is_fatal(), e.to_string());
                }
            }
        }
    }};
}

/// Runs both decoders over `data` (see the module docs for the input's layout).
pub(crate) fn decode(data: &[u8]) {
    let (max, chunk, rest) = match data {
        [m, c, rest @ ..] => (
            match m % 4 {
                0 => levee_proto::DEFAULT_MAX_FRAME,
                1 => levee_proto::HANDSHAKE_MAX_FRAME,
                2 => usize::from(*m),
                _ => 0,
            },
            usize::from(*c).max(1),
            rest,
        ),
        _ => return,
    };
    drain!(ClientFrame, rest, max, chunk);
    drain!(ServerFrame, rest, max, chunk);
}
