//! Broker-wide bounds on what clients can make the broker hold: the connection cap, the handshake
//! deadline, the HTTP header / idle timeout and the budget for large frames still arriving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Raw, Recv, Server, memory_queue, metric, wait_until};
use levee_proto::{ClientFrame, Hello, Message, Overflow, PublishOutcome, ServerFrame};

/// Connects and sends Hello; returns the connection and the server's first reply.
fn hello(server: &Server) -> (Raw, Option<ServerFrame>) {
    let mut raw = Raw::connect(server.wire);
    raw.send(&ClientFrame::Hello(Hello::new("limits-test")));
    let reply = raw.recv();
    (raw, reply)
}

#[test]
fn a_connection_over_max_connections_is_refused_with_a_reason_and_a_freed_slot_admits_again() {
    let server = Server::start_with(&["--max-connections", "3"]);
    let mut held: Vec<Raw> = (0..3).map(|_| Raw::handshake(server.wire)).collect();

    let (mut refused, reply) = hello(&server);
    match reply {
        Some(ServerFrame::Close { reason, .. }) => {
            assert!(reason.contains("too many connections"), "{reason}");
            assert!(reason.contains("limit of 3"), "{reason}");
        }
        other => panic!("expected a Close saying why, got {other:?}"),
    }
    assert!(refused.closed_by_server());
    assert_eq!(metric(server.http, "levee_connections"), 3);

    // The client library reports the reason too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(levee_client::Client::connect(
            server.wire,
            levee_client::ClientOptions {
                reconnect: None,
                ..Default::default()
            },
        ))
        .expect_err("refused");
    assert!(err.to_string().contains("too many connections"), "{err}");

    // Closing one frees its slot.
    drop(held.pop());
    wait_until("the closed connection's slot is released", || {
        metric(server.http, "levee_connections") == 2
    });
    let (_again, reply) = hello(&server);
    assert!(
        matches!(reply, Some(ServerFrame::Welcome(_))),
        "admitted: {reply:?}"
    );
}

#[test]
fn a_handshake_dripped_byte_by_byte_is_cut_off_at_its_deadline() {
    // The handshake deadline is one heartbeat interval: 1 s here.
    let server = Server::start_with(&["--heartbeat-ms", "1000"]);
    let mut frame = BytesMut::new();
    ClientFrame::Hello(Hello::new("d".repeat(80)))
        .encode(&mut frame)
        .unwrap();
    let mut raw = Raw::connect(server.wire);
    let started = Instant::now();
    // One byte every 100 ms, never the last one: ~9 s of drip if the deadline moved with every
    // byte (each wait is far shorter than the deadline).
    let mut outcome = None;
    for &b in &frame[..frame.len() - 1] {
        if raw.sock.write_all(&[b]).is_err() {
            outcome = Some(Recv::Closed);
            break;
        }
        match raw.recv_within(Duration::from_millis(100)) {
            Recv::Silent => {}
            other => {
                outcome = Some(other);
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    match outcome {
        Some(Recv::Frame(ServerFrame::Close { reason, .. })) => {
            assert!(reason.contains("no Hello within 1000 ms"), "{reason}");
            assert!(raw.closed_by_server());
        }
        Some(Recv::Closed) => {}
        other => panic!("still open after {elapsed:?} of dripping: {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(6),
        "closed at the deadline, not after the drip: {elapsed:?}"
    );
}

/// Reads until the server closes the connection (or 10 s pass: `Err`).
fn read_until_closed(s: &mut TcpStream) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn http_connections_with_half_a_header_or_idle_after_a_response_are_closed_after_the_header_timeout()
 {
    let server = Server::start_with(&["--http-header-timeout-ms", "300"]);

    let mut half = TcpStream::connect(server.http).unwrap();
    half.write_all(b"GET /api/queues HTTP/1.1\r\nHost: te")
        .unwrap();
    assert!(
        read_until_closed(&mut half).is_ok(),
        "a half-sent header must not hold the connection"
    );

    let mut idle = TcpStream::connect(server.http).unwrap();
    idle.write_all(b"GET /api/queues HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let resp = read_until_closed(&mut idle).expect("an idle keep-alive connection is closed");
    assert!(resp.starts_with("HTTP/1.1 200"), "answered first: {resp}");

    // The timeout is on headers, not on a request's duration: a body that takes longer than the
    // timeout to arrive is still served.
    let body = br#"{"durability": "memory"}"#;
    let mut slow = TcpStream::connect(server.http).unwrap();
    write!(
        slow,
        "PUT /api/queues/slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    for chunk in body.chunks(6) {
        std::thread::sleep(Duration::from_millis(150));
        slow.write_all(chunk).unwrap();
    }
    assert!(started.elapsed() > Duration::from_millis(300));
    let resp = read_until_closed(&mut slow).unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
}

#[test]
fn an_http_connection_over_max_http_connections_gets_a_503_and_a_freed_slot_admits_again() {
    let server = Server::start_with(&["--max-http-connections", "2"]);
    // Connections are accepted in order, so these two hold both slots before the next one.
    let first = TcpStream::connect(server.http).unwrap();
    let _second = TcpStream::connect(server.http).unwrap();
    let (status, body) = common::http_get(server.http, "/api/queues");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "too-many-connections", "{body}");
    assert!(
        v["message"].as_str().unwrap().contains("limit of 2"),
        "{body}"
    );
    drop(first);
    wait_until("the closed connection's slot is released", || {
        common::http_get(server.http, "/api/queues").0 == 200
    });
}

/// A Publish frame of one `size`-byte message, encoded.
fn publish_frame(req: u64, size: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    ClientFrame::Publish {
        req,
        queue: "big".into(),
        messages: vec![Message::new(vec![7u8; size])],
    }
    .encode(&mut b)
    .unwrap();
    b.to_vec()
}

fn expect_stored(raw: &mut Raw, req: u64) {
    loop {
        match raw.recv() {
            Some(ServerFrame::PublishConfirm { req: r, outcomes }) if r == req => {
                assert!(
                    matches!(outcomes[..], [PublishOutcome::Stored { .. }]),
                    "{outcomes:?}"
                );
                return;
            }
            Some(ServerFrame::PublishCredit { .. }) => {}
            other => panic!("waiting for the confirm of {req}: {other:?}"),
        }
    }
}

fn published(server: &Server) -> u64 {
    let (status, body) = common::http_get(server.http, "/api/queues/big");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["stats"]["published"].as_u64().expect("published")
}

#[test]
fn large_frames_still_arriving_share_one_broker_wide_budget_and_wait_for_room() {
    const MIB: usize = 1 << 20;
    const SIZE: usize = 400 * 1024;
    let server = Server::start_with(&[
        "--max-frame",
        &MIB.to_string(),
        "--max-partial-frame-bytes",
        &MIB.to_string(),
    ]);
    let mut admin = Raw::handshake(server.wire);
    admin.send(&ClientFrame::Declare {
        req: 1,
        queue: "big".into(),
        config: memory_queue(Overflow::Reject, 100, 64 << 20),
    });
    assert!(matches!(admin.recv(), Some(ServerFrame::QueueOk { .. })));

    // Two connections each send half of a 400 KiB frame: together they reserve ~800 KiB of the
    // 1 MiB budget and keep it while their frames are incomplete.
    let (fa, fb, fc) = (
        publish_frame(10, SIZE),
        publish_frame(20, SIZE),
        publish_frame(30, SIZE),
    );
    let mut a = Raw::handshake(server.wire);
    let mut b = Raw::handshake(server.wire);
    a.send_bytes(&fa[..SIZE / 2]);
    b.send_bytes(&fb[..SIZE / 2]);
    wait_until("both partial frames hold a reservation", || {
        metric(server.http, "levee_partial_frame_bytes") >= 2 * SIZE as u64
    });
    let reserved = metric(server.http, "levee_partial_frame_bytes");
    assert!(reserved <= MIB as u64, "within the budget: {reserved}");

    // A third connection's whole frame does not fit: it waits, unread, while small frames on
    // other connections are served as usual.
    let mut c = Raw::handshake(server.wire);
    c.send_bytes(&fc);
    assert!(
        matches!(c.recv_within(Duration::from_millis(500)), Recv::Silent),
        "the third large frame must wait for budget"
    );
    assert_eq!(published(&server), 0);
    assert!(metric(server.http, "levee_partial_frame_bytes") <= MIB as u64);

    // When the first frame completes, its reservation goes to the waiting one.
    a.send_bytes(&fa[SIZE / 2..]);
    expect_stored(&mut a, 10);
    expect_stored(&mut c, 30);
    b.send_bytes(&fb[SIZE / 2..]);
    expect_stored(&mut b, 20);
    assert_eq!(published(&server), 3);
    wait_until("every reservation is released", || {
        metric(server.http, "levee_partial_frame_bytes") == 0
    });

    // A connection that dies mid-frame gives its reservation back.
    let mut d = Raw::handshake(server.wire);
    d.send_bytes(&fa[..SIZE / 2]);
    wait_until("the partial frame holds a reservation", || {
        metric(server.http, "levee_partial_frame_bytes") > 0
    });
    drop(d);
    wait_until("the dead connection's reservation is released", || {
        metric(server.http, "levee_partial_frame_bytes") == 0
    });
}
