//! Version negotiation and the Hello / Welcome exchange.

use bytes::BytesMut;
use levee_proto::*;
use proptest::prelude::*;

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate_version(1, 1, 1, 1), Ok(1));
    assert_eq!(negotiate_version(1, 5, 2, 3), Ok(3));
    assert_eq!(negotiate_version(3, 9, 1, 4), Ok(4));
    assert_eq!(negotiate_version(2, 2, 1, 7), Ok(2));
}

#[test]
fn disjoint_or_empty_ranges_are_unsupported() {
    for (cmin, cmax, smin, smax) in [(1, 2, 3, 4), (5, 6, 1, 4), (3, 1, 1, 4), (1, 4, 4, 2)] {
        let err = negotiate_version(cmin, cmax, smin, smax).unwrap_err();
        assert_eq!(
            err,
            ProtoError::UnsupportedVersion {
                client_min: cmin,
                client_max: cmax,
                server_min: smin,
                server_max: smax
            }
        );
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert!(err.to_string().contains("no common protocol version"));
    }
}

proptest! {
    #[test]
    fn negotiated_version_is_in_both_ranges_and_maximal(
        cmin in 0u16..20, cmax in 0u16..20, smin in 0u16..20, smax in 0u16..20,
    ) {
        match negotiate_version(cmin, cmax, smin, smax) {
            Ok(v) => {
                prop_assert!((cmin..=cmax).contains(&v) && (smin..=smax).contains(&v));
                prop_assert!(!(cmin..=cmax).contains(&(v + 1)) || !(smin..=smax).contains(&(v + 1)));
            }
            Err(_) => prop_assert!((0..=20u16).all(|v| !((cmin..=cmax).contains(&v) && (smin..=smax).contains(&v)))),
        }
    }
}

#[test]
fn default_hello_offers_this_crates_versions_and_negotiates_with_itself() {
    let hello = Hello::new("test-client");
    assert_eq!(hello.min_version, MIN_PROTOCOL_VERSION);
    assert_eq!(hello.max_version, PROTOCOL_VERSION);
    assert_eq!(
        hello.negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        Ok(PROTOCOL_VERSION)
    );
}

#[test]
fn hello_with_credentials_fits_the_handshake_limit_and_roundtrips() {
    let hello = ClientFrame::Hello(Hello {
        credentials: Some(Credentials {
            user: "u".repeat(20_000),
            password: "p".repeat(20_000),
        }),
        ..Hello::new("c".repeat(20_000))
    });
    let mut buf = BytesMut::new();
    hello.encode_limited(&mut buf, HANDSHAKE_MAX_FRAME).unwrap();
    assert_eq!(
        ClientFrame::decode(&mut buf, HANDSHAKE_MAX_FRAME).unwrap(),
        Some(hello)
    );
}

#[test]
fn credentials_debug_hides_the_password() {
    let c = Credentials {
        user: "alice".into(),
        password: "hunter2".into(),
    };
    let s = format!("{c:?}");
    assert!(s.contains("alice"));
    assert!(!s.contains("hunter2"), "{s}");
}

#[test]
fn server_error_frame_carries_code_and_message_of_a_proto_error() {
    let err = negotiate_version(5, 6, 1, 1).unwrap_err();
    let frame = ServerFrame::error(0, &err);
    let ServerFrame::Error { req, code, message } = &frame else {
        panic!("not an error frame");
    };
    assert_eq!((*req, *code), (0, ErrorCode::UnsupportedVersion));
    assert!(message.contains("5..=6"));
    assert_eq!(frame.request_id(), Some(0));
}
