//! Every frame type encodes and decodes back to an equal value: whole, and fed in arbitrary chunks.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use levee_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// Feeds `wire` into a decoder buffer in chunks cut at `cuts` and decodes after every chunk.
fn decode_chunked<F>(
    wire: &[u8],
    cuts: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<F>, ProtoError>,
) -> Vec<F> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        buf.extend_from_slice(&wire[w[0]..w[1]]);
        while let Some(f) = decode(&mut buf).expect("valid stream decodes") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "no bytes left over");
    out
}

proptest! {
    #[test]
    fn client_frame_roundtrips(frame in client_frame()) {
        let mut buf = encode_client(&frame);
        let decoded = ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_frame_roundtrips(frame in server_frame()) {
        let mut buf = encode_server(&frame);
        let decoded = ServerFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn client_stream_roundtrips_in_random_chunks(
        frames in vec(client_frame(), 1..6),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        let got = decode_chunked(&wire, &cuts, |b| ClientFrame::decode(b, DEFAULT_MAX_FRAME));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn server_stream_roundtrips_in_random_chunks(
        frames in vec(server_frame(), 1..6),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        let got = decode_chunked(&wire, &cuts, |b| ServerFrame::decode(b, DEFAULT_MAX_FRAME));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn message_wire_len_is_exact(m in message()) {
        let frame = ClientFrame::Publish { req: 1, queue: "q".into(), messages: vec![m.clone()] };
        let empty = ClientFrame::Publish { req: 1, queue: "q".into(), messages: vec![] };
        let with = encode_client(&frame).len();
        let without = encode_client(&empty).len();
        prop_assert_eq!(with - without, m.wire_len());
    }

    #[test]
    fn encode_limited_refuses_exactly_above_the_limit(frame in client_frame()) {
        let len = encode_client(&frame).len() - LEN_PREFIX;
        let mut dst = BytesMut::from(&b"prefix"[..]);
        prop_assert!(frame.encode_limited(&mut dst, len).is_ok());
        let mut dst2 = BytesMut::from(&b"prefix"[..]);
        let err = frame.encode_limited(&mut dst2, len - 1).unwrap_err();
        prop_assert_eq!(err, ProtoError::FrameTooLarge { len: len as u64, max: (len - 1) as u64 });
        prop_assert_eq!(&dst2[..], b"prefix", "nothing written on failure");
    }
}

#[test]
fn decode_leaves_following_frames_in_the_buffer() {
    let mut buf = BytesMut::new();
    ClientFrame::Heartbeat.encode(&mut buf).unwrap();
    ClientFrame::ListQueues { req: 9 }.encode(&mut buf).unwrap();
    assert_eq!(
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
        Some(ClientFrame::Heartbeat)
    );
    assert_eq!(buf.len(), 4 + 1 + 8);
    assert_eq!(
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
        Some(ClientFrame::ListQueues { req: 9 })
    );
    assert_eq!(
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
        None
    );
}

#[test]
fn payloads_are_zero_copy_slices_of_the_frame() {
    let payload = Bytes::from(vec![0xab; 4096]);
    let frame = ClientFrame::Publish {
        req: 1,
        queue: "q".into(),
        messages: vec![Message::new(payload.clone())],
    };
    let mut buf = encode_client(&frame);
    let frame_start = buf.as_ptr() as usize;
    let frame_end = frame_start + buf.len();
    let Some(ClientFrame::Publish { messages, .. }) =
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap()
    else {
        panic!("expected a publish");
    };
    let p = messages[0].payload.as_ptr() as usize;
    assert_eq!(messages[0].payload, payload);
    assert!(
        (frame_start..frame_end).contains(&p),
        "payload points into the received frame buffer, not a copy"
    );
}

#[test]
fn limits_at_the_boundary_roundtrip_and_one_beyond_fails_to_encode() {
    let full = Message {
        key: Some(Bytes::from(vec![1; u16::MAX as usize])),
        priority: 255,
        ttl_ms: Some(u64::MAX),
        headers: (0..MAX_HEADERS)
            .map(|i| ("h".repeat(255 - (i % 2)), Bytes::from(vec![2; 100])))
            .collect(),
        message_id: Some(Bytes::from(vec![b'i'; 255])),
        properties: Some(Bytes::from(vec![4; 300])),
        payload: Bytes::from(vec![3; 1000]),
    };
    let frame = ClientFrame::Publish {
        req: u64::MAX,
        queue: "q".repeat(MAX_QUEUE_NAME_LEN),
        messages: vec![full.clone()],
    };
    let mut buf = encode_client(&frame);
    assert_eq!(
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
        Some(frame)
    );

    let batch = ClientFrame::Publish {
        req: 1,
        queue: "q".into(),
        messages: vec![Message::new("x"); MAX_BATCH],
    };
    let mut buf = encode_client(&batch);
    assert_eq!(
        ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
        Some(batch)
    );

    let too_many: Vec<_> = [
        ClientFrame::Publish {
            req: 1,
            queue: "q".into(),
            messages: vec![Message::new("x"); MAX_BATCH + 1],
        },
        ClientFrame::Publish {
            req: 1,
            queue: "q".repeat(256),
            messages: vec![],
        },
        ClientFrame::Publish {
            req: 1,
            queue: "q".into(),
            messages: vec![full.clone().with_header("one", "more")],
        },
        ClientFrame::Publish {
            req: 1,
            queue: "q".into(),
            messages: vec![full.clone().with_key(vec![0; u16::MAX as usize + 1])],
        },
        ClientFrame::Publish {
            req: 1,
            queue: "q".into(),
            messages: vec![Message::new("x").with_header("n".repeat(256), "v")],
        },
        ClientFrame::Ack {
            subscription: 1,
            tags: vec![0; MAX_TAGS + 1],
        },
    ]
    .into();
    for f in too_many {
        let mut dst = BytesMut::new();
        let err = f.encode(&mut dst).unwrap_err();
        assert!(
            matches!(err, ProtoError::LimitExceeded { .. }),
            "{err:?} for {:?}",
            f.frame_type()
        );
        assert!(dst.is_empty(), "a failed encode writes nothing");
    }
}
