//! Golden bytes: the layouts documented in docs/design.md, pinned byte for byte, and the stable
//! numeric values of error codes, drop reasons and frame types.

use bytes::{Bytes, BytesMut};
use levee_proto::*;

fn client(f: &ClientFrame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    let out = b.to_vec();
    assert_eq!(
        ClientFrame::decode(&mut b, DEFAULT_MAX_FRAME)
            .unwrap()
            .as_ref(),
        Some(f)
    );
    out
}

fn server(f: &ServerFrame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    let out = b.to_vec();
    assert_eq!(
        ServerFrame::decode(&mut b, DEFAULT_MAX_FRAME)
            .unwrap()
            .as_ref(),
        Some(f)
    );
    out
}

#[test]
fn heartbeat_is_five_bytes() {
    assert_eq!(client(&ClientFrame::Heartbeat), [1, 0, 0, 0, 0x02]);
    assert_eq!(server(&ServerFrame::Heartbeat), [1, 0, 0, 0, 0x82]);
}

#[test]
fn hello_layout() {
    assert_eq!(
        client(&ClientFrame::Hello(Hello::new("c"))),
        [
            13, 0, 0, 0,    // length
            0x01, // Hello
            b'L', b'E', b'V', b'E', // magic
            1, 0, // min version
            3, 0, // max version
            1, 0, b'c', // client name
            0,    // no credentials
        ]
    );
}

#[test]
fn welcome_layout() {
    let w = ServerFrame::Welcome(Welcome {
        version: 1,
        server_name: "s".into(),
        max_frame: 0x0100_0000,
        heartbeat_ms: 5000,
    });
    assert_eq!(
        server(&w),
        [
            14, 0, 0, 0, 0x81, 1, 0, 1, 0, b's', 0, 0, 0, 1, 0x88, 0x13, 0, 0
        ]
    );
}

#[test]
fn publish_layout() {
    let f = ClientFrame::Publish {
        req: 5,
        queue: "q".into(),
        messages: vec![
            Message::new(Bytes::from_static(b"hi"))
                .with_key(Bytes::from_static(b"k"))
                .with_priority(7)
                .with_ttl_ms(1000)
                .with_header("h", Bytes::from_static(b"v"))
                .with_message_id("9"),
        ],
    };
    #[rustfmt::skip]
    let expected = [
        42, 0, 0, 0,                 // length
        0x20,                        // Publish
        5, 0, 0, 0, 0, 0, 0, 0,      // request id
        1, b'q',                     // queue name
        1, 0, 0, 0,                  // message count
        0x13,                        // flags: key | ttl | message id
        7,                           // priority
        1, 0, b'k',                  // key
        0xe8, 3, 0, 0, 0, 0, 0, 0,   // ttl_ms = 1000
        1, b'9',                     // message id
        1,                           // header count
        1, b'h', 1, 0, b'v',         // header
        2, 0, 0, 0, b'h', b'i',      // payload
    ];
    assert_eq!(client(&f), expected);
}

#[test]
fn declare_with_default_config_layout() {
    let f = ClientFrame::Declare {
        req: 1,
        queue: "q".into(),
        config: QueueConfig::default(),
    };
    #[rustfmt::skip]
    let expected = [
        47, 0, 0, 0, 0x10,
        1, 0, 0, 0, 0, 0, 0, 0,            // request id
        1, b'q',                           // queue
        0xa0, 0x86, 1, 0, 0, 0, 0, 0,      // max_messages = 100 000
        0, 0, 0, 4, 0, 0, 0, 0,            // max_bytes = 64 MiB
        0,                                 // overflow = block
        0,                                 // order = fifo
        1, 0,                              // durability = disk, fsync = always
        0x30, 0x75, 0, 0, 0, 0, 0, 0,      // ack_timeout_ms = 30 000
        1, 20, 0, 0, 0,                    // max_deliveries = Some(20)
        0,                                 // dead_letter = None
        0,                                 // message_ttl_ms = None
        0,                                 // rate_limit = None
                                           // (no protocol-2 trailer: dedup is the default)
    ];
    assert_eq!(client(&f), expected);
}

#[test]
fn protocol1_producer_id_becomes_the_message_id() {
    // A protocol-1 publish with flag 4 (a u64 producer id) still decodes: its id is the decimal.
    #[rustfmt::skip]
    let body = [
        0x20, 5, 0, 0, 0, 0, 0, 0, 0, 1, b'q', 1, 0, 0, 0,
        0x04, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'h', b'i',
    ];
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    let Some(ClientFrame::Publish { messages, .. }) =
        ClientFrame::decode(&mut buf, 1 << 20).unwrap()
    else {
        panic!("a publish");
    };
    assert_eq!(messages[0].message_id.as_deref(), Some(&b"9"[..]));
}

#[test]
fn a_dedup_setting_other_than_the_default_is_a_protocol2_trailer() {
    let off = ClientFrame::Declare {
        req: 1,
        queue: "q".into(),
        config: QueueConfig {
            dedup: None,
            ..QueueConfig::default()
        },
    };
    let bytes = client(&off);
    assert_eq!(bytes.len(), 4 + 47 + 1, "one byte: dedup = None");
    assert_eq!(bytes[bytes.len() - 1], 0);
    // A trailer spelling out the default is not canonical (the encoder omits it): refused.
    let mut bytes = bytes;
    bytes.pop();
    bytes.extend_from_slice(&[1, 1, 0xc0, 0xd4, 1, 0, 0, 0, 0, 0, 0xa0, 0x86, 1, 0]);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        ClientFrame::decode(&mut buf, 1 << 20),
        Err(ProtoError::InvalidValue { .. })
    ));
}

#[test]
fn error_and_ack_layouts() {
    let e = ServerFrame::Error {
        req: 3,
        code: ErrorCode::QueueFull,
        message: "full".into(),
    };
    assert_eq!(
        server(&e),
        [
            17, 0, 0, 0, 0x84, 3, 0, 0, 0, 0, 0, 0, 0, 35, 0, 4, 0, b'f', b'u', b'l', b'l'
        ]
    );
    let a = ClientFrame::Nack {
        subscription: 2,
        tags: vec![10],
        delay_ms: 500,
    };
    #[rustfmt::skip]
    let expected = [
        29, 0, 0, 0, 0x34,
        2, 0, 0, 0, 0, 0, 0, 0,       // subscription
        0xf4, 1, 0, 0, 0, 0, 0, 0,    // delay_ms = 500
        1, 0, 0, 0,                   // tag count
        10, 0, 0, 0, 0, 0, 0, 0,      // tag
    ];
    assert_eq!(client(&a), expected);
}

#[test]
fn queue_closed_layout() {
    let f = ServerFrame::QueueClosed {
        queue: "q".into(),
        code: ErrorCode::UnknownQueue,
        message: "gone".into(),
    };
    #[rustfmt::skip]
    let expected = [
        11, 0, 0, 0, 0xd1,
        1, b'q',                      // queue str8
        16, 0,                        // unknown-queue
        4, 0, b'g', b'o', b'n', b'e', // message str16
    ];
    assert_eq!(server(&f), expected);
}

#[test]
fn confirm_layout() {
    let c = ServerFrame::PublishConfirm {
        req: 1,
        outcomes: vec![
            PublishOutcome::Stored { seq: 4 },
            PublishOutcome::Dropped {
                reason: DropReason::Conflated,
            },
            PublishOutcome::Rejected {
                code: ErrorCode::NoPublishCredit,
                reason: String::new(),
            },
            PublishOutcome::Throttled { retry_after_ms: 2 },
        ],
    };
    #[rustfmt::skip]
    let expected = [
        34, 0, 0, 0, 0xa0,
        1, 0, 0, 0, 0, 0, 0, 0,
        4, 0, 0, 0,
        0, 4, 0, 0, 0, 0, 0, 0, 0,   // stored, seq 4
        1, 3,                        // dropped, conflated
        2, 32, 0, 0, 0,              // rejected, no-publish-credit, ""
        3, 2, 0, 0, 0,               // throttled, 2 ms
    ];
    assert_eq!(server(&c), expected);
}

#[test]
fn error_codes_are_stable() {
    let table: Vec<(u16, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u16(), c.name()))
        .collect();
    assert_eq!(
        table,
        [
            (1, "bad-frame"),
            (2, "frame-too-large"),
            (3, "unsupported-version"),
            (4, "protocol-violation"),
            (5, "auth-failed"),
            (6, "forbidden"),
            (16, "unknown-queue"),
            (17, "queue-config-mismatch"),
            (18, "invalid-name"),
            (19, "invalid-config"),
            (20, "unknown-subscription"),
            (21, "unknown-delivery-tag"),
            (22, "unknown-exchange"),
            (23, "exchange-config-mismatch"),
            (24, "exchange-in-use"),
            (32, "no-publish-credit"),
            (33, "message-too-large"),
            (34, "throttled"),
            (35, "queue-full"),
            (36, "storage-full"),
            (48, "shutting-down"),
            (49, "not-leader"),
            (255, "internal"),
        ]
    );
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(7), None);
}

#[test]
fn drop_reasons_are_stable() {
    let table: Vec<(u8, &str)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_u8(), r.as_str()))
        .collect();
    assert_eq!(
        table,
        [
            (1, "overflow-newest"),
            (2, "evicted-oldest"),
            (3, "conflated"),
            (4, "shed-priority"),
            (5, "expired"),
            (6, "max-deliveries"),
            (7, "purged"),
            (8, "dead-letter-refused"),
            (9, "queue-deleted"),
            (10, "publisher-gone"),
        ]
    );
    assert_eq!(DropReason::from_u8(0), None);
    assert_eq!(DropReason::from_u8(11), None);
}

#[test]
fn client_and_server_frame_types_do_not_overlap() {
    let client_types = [
        frame_type::HELLO,
        frame_type::HEARTBEAT,
        frame_type::CLOSE,
        frame_type::DECLARE,
        frame_type::DELETE,
        frame_type::PURGE,
        frame_type::INSPECT,
        frame_type::LIST_QUEUES,
        frame_type::PUBLISH,
        frame_type::PRODUCE,
        frame_type::SUBSCRIBE,
        frame_type::UNSUBSCRIBE,
        frame_type::CREDIT,
        frame_type::ACK,
        frame_type::NACK,
        frame_type::REJECT,
    ];
    assert!(client_types.iter().all(|t| *t < 0x80));
    let server_types = [
        frame_type::WELCOME,
        frame_type::SERVER_HEARTBEAT,
        frame_type::SERVER_CLOSE,
        frame_type::ERROR,
        frame_type::QUEUE_OK,
        frame_type::QUEUE_STATS,
        frame_type::QUEUE_LIST,
        frame_type::PUBLISH_CONFIRM,
        frame_type::PUBLISH_CREDIT,
        frame_type::SUBSCRIBED,
        frame_type::UNSUBSCRIBED,
        frame_type::DELIVER,
    ];
    assert!(server_types.iter().all(|t| *t >= 0x80));
}

#[test]
fn a_config_without_extensions_encodes_as_in_version_1_and_one_with_them_is_flagged() {
    let plain = QueueConfig::default();
    let mut routed = plain.clone();
    routed.dead_letter_exchange = Some("x".into());
    let a = client(&ClientFrame::Declare {
        req: 0,
        queue: "q".into(),
        config: plain,
    });
    let b = client(&ClientFrame::Declare {
        req: 0,
        queue: "q".into(),
        config: routed,
    });
    // length, type, req, name, max_messages, max_bytes, overflow: then the order byte.
    let order_at = 4 + 1 + 8 + 2 + 8 + 8 + 1;
    assert_eq!(a[order_at], 0);
    assert_eq!(b[order_at], 0x80);
    // One extension entry: count 1, tag 1, length 1, "x".
    assert_eq!(&b[b.len() - 5..], &[1, 1, 1, 0, b'x']);
    assert_eq!(b.len(), a.len() + 5);
}
