//! Bad input gets a clear error frame and harms nobody: garbage, oversized frames, unknown queues,
//! invalid names and configs, oversized messages. The server stays up for other clients.

mod common;

use common::{Raw, Server};
use levee_proto::{
    ClientFrame, Durability, ErrorCode, Message, PublishOutcome, QueueConfig, ServerFrame,
};

fn memory() -> QueueConfig {
    QueueConfig {
        durability: Durability::Memory,
        overflow: levee_proto::Overflow::DropNewest,
        ..QueueConfig::default()
    }
}

/// A healthy client can still declare, publish and get a confirm.
fn still_serves(server: &Server) {
    let mut ok = Raw::handshake(server.wire);
    ok.send(&ClientFrame::Declare {
        req: 1,
        queue: "healthy".into(),
        config: memory(),
    });
    assert!(matches!(
        ok.recv(),
        Some(ServerFrame::QueueOk { req: 1, .. })
    ));
    ok.send(&ClientFrame::Publish {
        req: 2,
        queue: "healthy".into(),
        messages: vec![Message::new("still here")],
    });
    match ok.recv() {
        Some(ServerFrame::PublishConfirm { req: 2, outcomes }) => {
            assert!(matches!(outcomes[..], [PublishOutcome::Stored { .. }]));
        }
        other => panic!("expected a confirm, got {other:?}"),
    }
}

fn expect_error(raw: &mut Raw, want_req: u64, want: ErrorCode) -> String {
    match raw.recv() {
        Some(ServerFrame::Error { req, code, message }) => {
            assert_eq!((req, code), (want_req, want), "{message}");
            message
        }
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

#[test]
fn garbage_instead_of_a_handshake_is_refused_and_the_server_stays_up() {
    let server = Server::start();
    let mut bad = Raw::connect(server.wire);
    bad.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(bad.closed_by_server());
    let mut junk = Raw::connect(server.wire);
    junk.send_bytes(&[0xff; 64]);
    assert!(junk.closed_by_server());
    still_serves(&server);
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_read() {
    let server = Server::start_with(&["--max-frame", "65536"]);
    let mut raw = Raw::handshake(server.wire);
    // Declare 1 GiB and send only the header: the server must not wait for (or allocate) it.
    raw.send_bytes(&(1u32 << 30).to_le_bytes());
    raw.send_bytes(&[0x20]);
    expect_error(&mut raw, 0, ErrorCode::FrameTooLarge);
    assert!(raw.closed_by_server());
    still_serves(&server);
}

#[test]
fn a_malformed_frame_closes_only_that_connection() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    // A Publish frame whose message count claims more messages than the frame holds.
    let mut body = vec![0x20];
    body.extend_from_slice(&7u64.to_le_bytes());
    body.push(1);
    body.push(b'q');
    body.extend_from_slice(&1000u32.to_le_bytes());
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    raw.send_bytes(&frame);
    match raw.recv() {
        Some(ServerFrame::Error { code, .. }) => assert!(code.is_fatal(), "{code:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(raw.closed_by_server());
    still_serves(&server);
}

#[test]
fn unknown_queues_invalid_names_and_configs_get_errors_on_a_live_connection() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Publish {
        req: 1,
        queue: "nope".into(),
        messages: vec![Message::new("x")],
    });
    let msg = expect_error(&mut raw, 1, ErrorCode::UnknownQueue);
    assert!(msg.contains("nope"), "{msg}");
    raw.send(&ClientFrame::Declare {
        req: 2,
        queue: "bad name!".into(),
        config: memory(),
    });
    expect_error(&mut raw, 2, ErrorCode::InvalidName);
    raw.send(&ClientFrame::Declare {
        req: 3,
        queue: "zero".into(),
        config: QueueConfig {
            max_messages: 0,
            ..memory()
        },
    });
    expect_error(&mut raw, 3, ErrorCode::InvalidConfig);
    raw.send(&ClientFrame::Subscribe {
        req: 4,
        queue: "nope".into(),
        credit: 1,
        auto_ack: false,
    });
    expect_error(&mut raw, 4, ErrorCode::UnknownQueue);
    raw.send(&ClientFrame::Ack {
        subscription: 999,
        tags: vec![1],
    });
    expect_error(&mut raw, 0, ErrorCode::UnknownSubscription);
    // The same connection still works.
    raw.send(&ClientFrame::Declare {
        req: 5,
        queue: "fine".into(),
        config: memory(),
    });
    assert!(matches!(
        raw.recv(),
        Some(ServerFrame::QueueOk {
            req: 5,
            created: true,
            ..
        })
    ));
}

#[test]
fn redeclaring_with_another_config_says_what_differs() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Declare {
        req: 1,
        queue: "q".into(),
        config: memory(),
    });
    assert!(matches!(
        raw.recv(),
        Some(ServerFrame::QueueOk { created: true, .. })
    ));
    raw.send(&ClientFrame::Declare {
        req: 2,
        queue: "q".into(),
        config: QueueConfig {
            max_messages: 7,
            ..memory()
        },
    });
    let msg = expect_error(&mut raw, 2, ErrorCode::QueueConfigMismatch);
    assert!(msg.contains("max_messages"), "{msg}");
}

#[test]
fn a_message_larger_than_the_queue_byte_limit_is_rejected_and_counted() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Declare {
        req: 1,
        queue: "small".into(),
        config: QueueConfig {
            max_bytes: 100,
            ..memory()
        },
    });
    raw.recv();
    raw.send(&ClientFrame::Publish {
        req: 2,
        queue: "small".into(),
        messages: vec![Message::new(vec![0u8; 101]), Message::new(vec![0u8; 10])],
    });
    match raw.recv() {
        Some(ServerFrame::PublishConfirm { outcomes, .. }) => {
            assert!(matches!(
                outcomes[0],
                PublishOutcome::Rejected {
                    code: ErrorCode::MessageTooLarge,
                    ..
                }
            ));
            assert!(matches!(outcomes[1], PublishOutcome::Stored { .. }));
        }
        other => panic!("{other:?}"),
    }
    raw.send(&ClientFrame::Inspect {
        req: 3,
        queue: "small".into(),
    });
    match raw.recv() {
        Some(ServerFrame::QueueStats { info, .. }) => {
            assert_eq!((info.stats.published, info.stats.rejected), (2, 1));
            assert!(info.stats.is_balanced());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publishing_to_a_block_queue_without_credit_is_refused() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Declare {
        req: 1,
        queue: "b".into(),
        config: QueueConfig {
            durability: Durability::Memory,
            ..QueueConfig::default()
        },
    });
    raw.recv();
    raw.send(&ClientFrame::Publish {
        req: 2,
        queue: "b".into(),
        messages: vec![Message::new("no credit")],
    });
    match raw.recv() {
        Some(ServerFrame::PublishConfirm { outcomes, .. }) => assert!(matches!(
            outcomes[0],
            PublishOutcome::Rejected {
                code: ErrorCode::NoPublishCredit,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
}

/// A client that keeps sending requests but never reads the replies is disconnected once its
/// outgoing queue is full, instead of making the broker buffer without bound; others are served.
#[test]
fn a_client_that_never_reads_its_replies_is_cut_off() {
    let server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    // Long names make each QueueList reply ~270 bytes: 100k of them (27 MB) far exceed what the
    // kernel's socket buffers absorb.
    let long = "q".repeat(255);
    raw.send(&ClientFrame::Declare {
        req: 1,
        queue: long,
        config: memory(),
    });
    assert!(matches!(raw.recv(), Some(ServerFrame::QueueOk { .. })));
    let mut burst = bytes::BytesMut::new();
    for req in 0..100_000u64 {
        ClientFrame::ListQueues { req }.encode(&mut burst).unwrap();
    }
    // Written from a thread: the server may close before taking it all.
    let mut writer = raw.sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&burst);
    });
    // Until the server gives up on this connection (not a fixed sleep: on a busy machine it may
    // take longer to read enough of the burst to fill the socket buffers).
    common::wait_until("the server cut off the client that does not read", || {
        common::metric(server.http, "levee_connections") == 0
    });
    // Reading now reaches the connection's end well before 100k replies.
    let mut replies = 0u64;
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.recv())) {
            Ok(Some(ServerFrame::QueueList { .. })) => replies += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    sender.join().unwrap();
    assert!(replies < 100_000, "cut off after {replies} replies");
    still_serves(&server);
}
