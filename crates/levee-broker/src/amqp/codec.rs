//! AMQP 0-9-1 framing: splitting the byte stream into frames (checking the declared size against
//! `frame_max` from the 7-byte frame header, before any of the payload is buffered) and encoding
//! what the server sends. Method arguments and the basic property list are decoded and encoded by
//! the `amq-protocol` crate; this module only adds what it does not do: the size check, keeping
//! the raw property block of a content header (so properties are stored byte for byte), and
//! splitting a body into frames of at most `frame_max`.
//!
//! # Invariants
//! - [`decode`] never buffers more than one frame of at most `frame_max` bytes: a larger declared
//!   size is an error before its payload is read.
//! - Every frame written by [`Out`] is at most the negotiated `frame_max` (bodies are split).

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame type bytes (AMQP 0-9-1 section 4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and size.
pub(crate) const FRAME_HEADER_LEN: usize = 7;
/// Header plus the end octet.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;
/// The smallest `frame_max` a peer may ask for (the spec's `frame-min-size`).
pub(crate) const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header this server speaks.
pub(crate) const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// The class id of `basic` (the only content class).
pub(crate) const CLASS_BASIC: u16 = 60;

/// One decoded inbound frame.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A method frame; `raw` is its payload (class and method ids included), kept for the few
    /// arguments `amq-protocol` drops (`basic.qos` prefetch-size).
    Method {
        channel: u16,
        method: Box<AMQPClass>,
        raw: Bytes,
    },
    /// A content header: the body size and the property block exactly as sent.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    },
    /// A content body frame.
    Body { channel: u16, data: Bytes },
    /// A heartbeat (on any channel; the spec wants 0).
    Heartbeat { channel: u16 },
}

/// Why bytes are not a valid frame: each is a connection exception.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FrameError {
    /// The declared size exceeds the negotiated `frame_max` (501 FRAME_ERROR).
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge { size: u64, max: u32 },
    /// The frame does not end with 0xCE (501 FRAME_ERROR).
    #[error("frame does not end with the frame-end octet")]
    BadEnd,
    /// An unknown frame type (501 FRAME_ERROR).
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A method or content header whose fields do not parse (502 SYNTAX_ERROR).
    #[error("malformed {0}")]
    Syntax(&'static str),
}

/// Decodes one frame from the front of `buf`, or `Ok(None)` when more bytes are needed. A frame
/// whose header declares more than `frame_max` bytes is refused as soon as the header is in.
pub(crate) fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Inbound>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    let total = size as u64 + FRAME_OVERHEAD as u64;
    if total > u64::from(frame_max) {
        return Err(FrameError::TooLarge {
            size: total,
            max: frame_max,
        });
    }
    let total = total as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(FrameError::BadEnd);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_LEN);
    let payload = frame.slice(..size);
    Ok(Some(match kind {
        FRAME_METHOD => {
            let Ok(([], method)) = amq_protocol::protocol::parse_class(&payload[..]) else {
                return Err(FrameError::Syntax("method frame"));
            };
            Inbound::Method {
                channel,
                method: Box::new(method),
                raw: payload,
            }
        }
        FRAME_HEADER => {
            if payload.len() < 14 {
                return Err(FrameError::Syntax("content header"));
            }
            let class_id = u16::from_be_bytes([payload[0], payload[1]]);
            let body_size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
            let properties = payload.slice(12..);
            match parse_properties(&properties[..]) {
                Ok(([], _)) => {}
                _ => return Err(FrameError::Syntax("content header properties")),
            }
            Inbound::Header {
                channel,
                class_id,
                body_size,
                properties,
            }
        }
        FRAME_BODY => Inbound::Body {
            channel,
            data: payload,
        },
        _ => Inbound::Heartbeat { channel },
    }))
}

/// Decodes a raw property block (one [`decode`] already checked).
pub(crate) fn parse_props(raw: &[u8]) -> AMQPProperties {
    parse_properties(raw).map(|(_, p)| p).unwrap_or_default()
}

/// Encodes a property block.
pub(crate) fn encode_props(p: &AMQPProperties) -> Bytes {
    let ctx = WriteContext::from(Vec::with_capacity(64));
    match gen_properties(p)(ctx) {
        Ok(ctx) => Bytes::from(ctx.into_inner().0),
        // Cannot happen for values that came from a parse or from short strings we built;
        // an empty block is still valid.
        Err(_) => Bytes::from_static(&[0, 0]),
    }
}

/// The outbound byte stream of one connection.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) buf: BytesMut,
}

impl Out {
    /// Appends a method frame.
    pub(crate) fn method(&mut self, channel: u16, method: AMQPClass) {
        let frame = AMQPFrame::Method(channel, method);
        let ctx = WriteContext::from(Vec::with_capacity(128));
        match gen_frame(&frame)(ctx) {
            Ok(ctx) => self.buf.extend_from_slice(&ctx.into_inner().0),
            Err(e) => tracing::error!(error = ?e, "could not encode an AMQP method"),
        }
    }

    /// Appends a heartbeat frame.
    pub(crate) fn heartbeat(&mut self) {
        self.buf
            .extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    }

    /// Appends a content header with this raw property block and the body, split into body frames
    /// of at most `frame_max` bytes each.
    pub(crate) fn content(&mut self, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
        self.buf.put_u8(FRAME_HEADER);
        self.buf.put_u16(channel);
        self.buf.put_u32((12 + properties.len()) as u32);
        self.buf.put_u16(CLASS_BASIC);
        self.buf.put_u16(0);
        self.buf.put_u64(body.len() as u64);
        self.buf.extend_from_slice(properties);
        self.buf.put_u8(FRAME_END);
        let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
        for part in body.chunks(chunk) {
            self.buf.put_u8(FRAME_BODY);
            self.buf.put_u16(channel);
            self.buf.put_u32(part.len() as u32);
            self.buf.extend_from_slice(part);
            self.buf.put_u8(FRAME_END);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    #[test]
    fn a_frame_larger_than_frame_max_is_refused_from_its_header_alone() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 1, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, 4096).unwrap_err(),
            FrameError::TooLarge {
                size: 65536 + 8,
                max: 4096
            }
        );
    }

    #[test]
    fn methods_roundtrip_and_bodies_split_at_frame_max() {
        let mut out = Out::default();
        out.method(
            3,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        out.content(3, &[0, 0], &[7u8; 10_000], 4096);
        let mut buf = out.buf.clone();
        let Some(Inbound::Method { channel: 3, .. }) = decode(&mut buf, 4096).unwrap() else {
            panic!("method")
        };
        let Some(Inbound::Header { body_size, .. }) = decode(&mut buf, 4096).unwrap() else {
            panic!("header")
        };
        assert_eq!(body_size, 10_000);
        let mut got = 0;
        while let Some(Inbound::Body { data, .. }) = decode(&mut buf, 4096).unwrap() {
            assert!(data.len() + FRAME_OVERHEAD <= 4096);
            got += data.len();
        }
        assert_eq!(got, 10_000);
    }

    #[test]
    fn a_bad_frame_end_and_an_unknown_type_are_frame_errors() {
        let mut buf = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf, 4096).unwrap_err(), FrameError::BadEnd);
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            decode(&mut buf, 4096).unwrap_err(),
            FrameError::UnknownType(9)
        );
    }
}
