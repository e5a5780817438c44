//! The decoder never panics, refuses oversized frames from the length prefix alone, waits on
//! truncated input, and reports every malformation as a typed error.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use levee_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// Decodes frames until the buffer needs more bytes or an error occurs; re-encoding anything that
/// decoded must reproduce exactly the bytes it came from (the decoder accepts canonical frames only).
fn drain_client(mut buf: BytesMut, max: usize) {
    loop {
        let before = buf.clone();
        match ClientFrame::decode(&mut buf, max) {
            Ok(Some(f)) => {
                let consumed = before.len() - buf.len();
                let mut again = BytesMut::new();
                f.encode(&mut again).expect("decoded frames re-encode");
                assert_eq!(
                    &again[..],
                    &before[..consumed],
                    "non-canonical frame accepted"
                );
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumes nothing");
                return;
            }
            Err(ProtoError::FrameTooLarge { .. }) => {
                assert_eq!(buf, before, "FrameTooLarge consumes nothing");
                return;
            }
            Err(e) => {
                assert!(buf.len() < before.len(), "{e:?} consumed the bad frame");
                let _ = e.code();
            }
        }
    }
}

fn drain_server(mut buf: BytesMut, max: usize) {
    loop {
        let before = buf.clone();
        match ServerFrame::decode(&mut buf, max) {
            Ok(Some(f)) => {
                let consumed = before.len() - buf.len();
                let mut again = BytesMut::new();
                f.encode(&mut again).expect("decoded frames re-encode");
                assert_eq!(
                    &again[..],
                    &before[..consumed],
                    "non-canonical frame accepted"
                );
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumes nothing");
                return;
            }
            Err(ProtoError::FrameTooLarge { .. }) => {
                assert_eq!(buf, before, "FrameTooLarge consumes nothing");
                return;
            }
            Err(e) => {
                assert!(buf.len() < before.len(), "{e:?} consumed the bad frame");
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Applies mutations to the body (after the length prefix); with `fix_len` the prefix is rewritten
/// to the new body length so the body parser, not the framing, meets the damage.
fn mutate(wire: &[u8], muts: &[Mutation], fix_len: bool) -> BytesMut {
    let mut body = wire[LEN_PREFIX..].to_vec();
    for m in muts {
        let n = body.len().max(1);
        match *m {
            Mutation::Set(i, b) if !body.is_empty() => body[i % n] = b,
            Mutation::Flip(i, bit) if !body.is_empty() => body[i % n] ^= 1 << bit,
            Mutation::Insert(i, b) => body.insert(i % (body.len() + 1), b),
            Mutation::Remove(i) if !body.is_empty() => {
                body.remove(i % n);
            }
            Mutation::Truncate(i) => body.truncate(i % (body.len() + 1)),
            _ => {}
        }
    }
    let mut out = BytesMut::new();
    if fix_len {
        out.put_u32_le(body.len() as u32);
    } else {
        out.extend_from_slice(&wire[..LEN_PREFIX]);
    }
    out.extend_from_slice(&body);
    out
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in 0usize..1024) {
        drain_client(BytesMut::from(&bytes[..]), max);
        drain_server(BytesMut::from(&bytes[..]), max);
        drain_client(BytesMut::from(&bytes[..]), DEFAULT_MAX_FRAME);
        drain_server(BytesMut::from(&bytes[..]), DEFAULT_MAX_FRAME);
    }

    #[test]
    fn random_bodies_with_valid_framing_never_panic(ty in any::<u8>(), body in vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::new();
        buf.put_u32_le(body.len() as u32 + 1);
        buf.put_u8(ty);
        buf.extend_from_slice(&body);
        drain_client(buf.clone(), DEFAULT_MAX_FRAME);
        drain_server(buf, DEFAULT_MAX_FRAME);
    }

    #[test]
    fn mutated_client_frames_never_panic(
        frame in client_frame(),
        muts in vec(mutation(), 1..4),
        fix_len in any::<bool>(),
    ) {
        let wire = encode_client(&frame);
        drain_client(mutate(&wire, &muts, fix_len), DEFAULT_MAX_FRAME);
    }

    #[test]
    fn mutated_server_frames_never_panic(
        frame in server_frame(),
        muts in vec(mutation(), 1..4),
        fix_len in any::<bool>(),
    ) {
        let wire = encode_server(&frame);
        drain_server(mutate(&wire, &muts, fix_len), DEFAULT_MAX_FRAME);
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_incomplete(frame in client_frame()) {
        let wire = encode_client(&frame);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME), Ok(None));
            prop_assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn every_strict_prefix_of_a_server_frame_is_incomplete(frame in server_frame()) {
        let wire = encode_server(&frame);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(ServerFrame::decode(&mut buf, DEFAULT_MAX_FRAME), Ok(None));
        }
    }

    #[test]
    fn a_frame_one_byte_over_the_limit_is_refused(frame in server_frame()) {
        let wire = encode_server(&frame);
        let len = wire.len() - LEN_PREFIX;
        let mut ok = wire.clone();
        prop_assert!(ServerFrame::decode(&mut ok, len).unwrap().is_some());
        let mut big = wire.clone();
        prop_assert_eq!(
            ServerFrame::decode(&mut big, len - 1),
            Err(ProtoError::FrameTooLarge { len: len as u64, max: (len - 1) as u64 })
        );
    }
}

#[test]
fn oversized_length_is_refused_from_the_prefix_alone() {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32_le(u32::MAX);
    let cap = buf.capacity();
    let err = ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap_err();
    assert_eq!(
        err,
        ProtoError::FrameTooLarge {
            len: u32::MAX as u64,
            max: DEFAULT_MAX_FRAME as u64
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert!(err.is_fatal());
    assert_eq!(
        buf.len(),
        4,
        "nothing consumed, so the server can still peek"
    );
    assert_eq!(
        buf.capacity(),
        cap,
        "nothing reserved for the announced size"
    );

    let header = FrameHeader::peek(&buf).unwrap();
    assert_eq!(header.len, u32::MAX);
    assert_eq!(header.frame_type, None);
    assert!(header.check(DEFAULT_MAX_FRAME).is_err());
}

#[test]
fn handshake_limit_refuses_a_big_first_frame() {
    // Anything that is not a Levee client, e.g. an HTTP request, announces an absurd length.
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let err = ClientFrame::decode(&mut buf, HANDSHAKE_MAX_FRAME).unwrap_err();
    assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
fn header_peek_reports_type_once_buffered() {
    let mut wire = BytesMut::new();
    ClientFrame::Heartbeat.encode(&mut wire).unwrap();
    assert_eq!(FrameHeader::peek(&wire[..3]), None);
    assert_eq!(
        FrameHeader::peek(&wire[..4]),
        Some(FrameHeader {
            len: 1,
            frame_type: None
        })
    );
    let h = FrameHeader::peek(&wire).unwrap();
    assert_eq!(h.frame_type, Some(frame_type::HEARTBEAT));
    assert_eq!(h.total_len(), wire.len());
    assert!(h.check(1).is_ok());
}

fn frame(ty: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32_le(body.len() as u32 + 1);
    b.put_u8(ty);
    b.extend_from_slice(body);
    b
}

#[test]
fn malformed_frames_give_typed_errors() {
    let dec = |mut b: BytesMut| ClientFrame::decode(&mut b, DEFAULT_MAX_FRAME).unwrap_err();

    let mut empty = BytesMut::new();
    empty.put_u32_le(0);
    empty.put_u8(0xff);
    assert_eq!(
        ClientFrame::decode(&mut empty, DEFAULT_MAX_FRAME),
        Err(ProtoError::EmptyFrame)
    );
    assert_eq!(empty.len(), 1, "the empty frame's prefix was consumed");

    assert_eq!(dec(frame(0x7e, &[])), ProtoError::UnknownFrameType(0x7e));
    // A server frame sent to a server is unknown in that direction.
    assert_eq!(
        dec(frame(frame_type::WELCOME, &[])),
        ProtoError::UnknownFrameType(frame_type::WELCOME)
    );
    assert_eq!(
        dec(frame(frame_type::HEARTBEAT, &[0])),
        ProtoError::TrailingBytes {
            frame_type: frame_type::HEARTBEAT,
            extra: 1
        }
    );
    assert!(matches!(
        dec(frame(frame_type::LIST_QUEUES, &[1, 2, 3])),
        ProtoError::Truncated {
            what: "request id",
            ..
        }
    ));
    assert_eq!(
        dec(frame(frame_type::HELLO, b"HTTP\x01\x00\x01\x00")),
        ProtoError::BadMagic(*b"HTTP")
    );

    // Close with an unknown error code.
    assert_eq!(
        dec(frame(frame_type::CLOSE, &[0x99, 0x99, 0, 0])),
        ProtoError::InvalidValue {
            what: "close code",
            value: 0x9999
        }
    );
    // Inspect with a queue name that is not UTF-8.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[2, 0xc3, 0x28]);
    assert_eq!(
        dec(frame(frame_type::INSPECT, &body)),
        ProtoError::InvalidUtf8 { what: "queue name" }
    );
}

#[test]
fn counts_beyond_the_frame_are_refused_without_allocating_for_them() {
    // An Ack announcing 65 536 tags (the limit) but carrying one.
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&(MAX_TAGS as u32).to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    let mut b = frame(frame_type::ACK, &body);
    assert_eq!(
        ClientFrame::decode(&mut b, DEFAULT_MAX_FRAME),
        Err(ProtoError::Truncated {
            what: "delivery tags",
            needed: MAX_TAGS as u64 * 8,
            remaining: 8
        })
    );

    // A publish announcing u32::MAX messages exceeds the batch limit.
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'q']);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut b = frame(frame_type::PUBLISH, &body);
    assert_eq!(
        ClientFrame::decode(&mut b, DEFAULT_MAX_FRAME),
        Err(ProtoError::LimitExceeded {
            what: "publish batch",
            len: u32::MAX as u64,
            max: MAX_BATCH as u64
        })
    );

    // A payload length larger than the frame.
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'q']);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0, 0, 0]); // flags, priority, no headers
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut b = frame(frame_type::PUBLISH, &body);
    assert!(matches!(
        ClientFrame::decode(&mut b, DEFAULT_MAX_FRAME),
        Err(ProtoError::Truncated {
            what: "payload",
            ..
        })
    ));

    // Unknown message flags and too many headers.
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'q']);
    body.extend_from_slice(&1u32.to_le_bytes());
    let mut bad_flags = body.clone();
    // 0x80: no flag (8 is the AMQP properties, 16 is reserved for ops).
    bad_flags.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        ClientFrame::decode(
            &mut frame(frame_type::PUBLISH, &bad_flags),
            DEFAULT_MAX_FRAME
        ),
        Err(ProtoError::InvalidValue {
            what: "message flags",
            value: 0x80
        })
    );
    let mut many_headers = body;
    many_headers.extend_from_slice(&[0, 0, MAX_HEADERS as u8 + 1]);
    many_headers.extend_from_slice(&[0; 400]);
    assert!(matches!(
        ClientFrame::decode(
            &mut frame(frame_type::PUBLISH, &many_headers),
            DEFAULT_MAX_FRAME
        ),
        Err(ProtoError::LimitExceeded {
            what: "message headers",
            ..
        })
    ));
}

#[test]
fn every_decode_error_maps_to_a_wire_code() {
    let cases = [
        (ProtoError::EmptyFrame, ErrorCode::BadFrame),
        (ProtoError::UnknownFrameType(0), ErrorCode::BadFrame),
        (
            ProtoError::FrameTooLarge { len: 2, max: 1 },
            ErrorCode::FrameTooLarge,
        ),
        (
            ProtoError::BadMagic(*b"nope"),
            ErrorCode::UnsupportedVersion,
        ),
        (
            ProtoError::InvalidName {
                name: String::new(),
                reason: "x",
            },
            ErrorCode::InvalidName,
        ),
        (
            ProtoError::InvalidConfig {
                field: "max_bytes",
                reason: "x".into(),
            },
            ErrorCode::InvalidConfig,
        ),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err}");
    }
    assert!(ProtoError::EmptyFrame.is_fatal());
    assert!(
        !ProtoError::InvalidConfig {
            field: "f",
            reason: String::new()
        }
        .is_fatal()
    );
}
