//! The on-disk format: segment header, record framing and the three record types.
//!
//! Documented byte by byte in `docs/design.md` (section levee-store). All integers little-endian.
//!
//! ```text
//! segment header (32 bytes): magic "LEVEESEG" | version u16 | flags u16 (0) | segment index u64
//!                            | base seq u64 | crc32c(bytes 0..28) u32
//! frame:                     len u32 (= 1 + body length) | crc32c(len bytes ++ type ++ body) u32
//!                            | type u8 | body
//! ```
//!
//! The decoders here are total: any input yields a value or a [`FrameError`], never a panic (fuzzed by
//! `fuzz/` and a proptest). They never allocate more than the input's size.

use bytes::Bytes;

/// Format version written in every segment header and WAL file header. Version 2 added the
/// message id (record flag 8) and the properties block (record flag 4); version 3 added the copy
/// record (compaction) and the shared write-ahead log; version 4 added the skip record (a WAL-attached
/// log's segments leave out records settled before they were written). Each version only adds, so version 1 and 2
/// segments still decode ([`MIN_FORMAT_VERSION`]: an old data directory opens as it is, no
/// migration step), and any newer version is refused on open.
pub const FORMAT_VERSION: u16 = 4;
/// Oldest format version still read (version 1 records have neither field).
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LEVEESEG";
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a frame's fixed prefix (length + CRC).
pub const FRAME_PREFIX_LEN: usize = 8;
/// Absolute upper bound of a frame's `len` field (1 GiB); configured limits are lower.
pub const MAX_FRAME_LEN: u32 = 1 << 30;

/// Record type byte of a message.
pub const TYPE_MESSAGE: u8 = 1;
/// Record type byte of a settlement batch.
pub const TYPE_SETTLE: u8 = 2;
/// Record type byte of a delivery-count batch.
pub const TYPE_DELIVERY: u8 = 3;
/// Record type byte of the seal record, the last record of every complete (rolled) segment.
pub const TYPE_SEAL: u8 = 4;
/// Record type byte of a copy: a live message moved forward by compaction, body as
/// [`TYPE_MESSAGE`] (format version 3). Its seq may be below earlier records'; recovery moves the
/// message to the copy's place.
pub const TYPE_COPY: u8 = 5;
/// Record type byte of a skip (format version 4): the next `gap` bytes of the segment, this frame
/// included, hold no record (they are a hole or stale bytes); recovery resumes at the frame's
/// offset + `gap` and raises its next sequence number to the frame's. Written only by a
/// WAL-attached log when it writes its segments behind the WAL and leaves out records settled
/// (durably) before they were written. Body: gap u32 | next seq u64.
pub const TYPE_SKIP: u8 = 6;
/// Size of a skip frame (prefix + type + gap u32 + next seq u64): the smallest gap it can cover.
pub const SKIP_FRAME_LEN: usize = FRAME_PREFIX_LEN + 1 + 12;
/// Size of a seal frame (prefix + type + offset u64 + next seq u64).
pub const SEAL_FRAME_LEN: usize = FRAME_PREFIX_LEN + 1 + 16;

const FLAG_KEY: u8 = 1;
const FLAG_TTL: u8 = 2;
/// A message id (`u8` length + bytes) follows the key (format version 2). Bit 4 is the AMQP
/// branch's.
const FLAG_MESSAGE_ID: u8 = 8;
/// The record carries a properties block (format version 2).
const FLAG_PROPERTIES: u8 = 4;

const SETTLE_ACKED: u8 = 1;
const SETTLE_DROPPED: u8 = 2;
const SETTLE_EXPIRED: u8 = 3;
const SETTLE_DEAD_LETTERED: u8 = 4;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The input ends before the frame (or header) does.
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the frame claims.
        needed: u64,
        /// Bytes available.
        have: u64,
    },
    /// The length field is zero or above [`MAX_FRAME_LEN`].
    #[error("invalid frame length {0}")]
    BadLength(u32),
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A checksum-valid frame of an unknown type.
    #[error("unknown record type {0}")]
    UnknownType(u8),
    /// A checksum-valid frame whose body does not parse.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// The segment header's magic is wrong.
    #[error("bad segment magic")]
    BadMagic,
    /// The segment header's version is outside [`MIN_FORMAT_VERSION`]..=[`FORMAT_VERSION`].
    #[error("unsupported format version {0}")]
    Version(u16),
}

/// How a message was settled. Once settled, a message is never returned by recovery again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Consumed and acknowledged.
    Acked,
    /// Dropped by policy; the reason is kept for accounting (at most 65535 bytes).
    Dropped(String),
    /// Its TTL passed.
    Expired,
    /// Moved to the named dead-letter queue (name at most 65535 bytes).
    DeadLettered(String),
}

/// A message to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// Producer or broker timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Optional routing/dedup key (at most 65535 bytes).
    pub key: Option<Bytes>,
    /// Priority, higher first (the broker's interpretation).
    pub priority: u8,
    /// Time to live in milliseconds from `timestamp_ms`.
    pub ttl_ms: Option<u64>,
    /// Headers (at most 65535; names at most 65535 bytes).
    pub headers: Vec<(String, Bytes)>,
    /// The producer's message id, the deduplication key (at most 255 bytes; format version 2).
    pub message_id: Option<Bytes>,
    /// Opaque protocol properties kept with the message byte for byte (AMQP 0-9-1: the encoded
    /// basic property block of its content header; at most 4 GiB). Format version 2.
    pub properties: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

/// A message read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its sequence number.
    pub seq: u64,
    /// Current delivery count (from delivery records; 0 if never recorded).
    pub delivery_count: u32,
    /// The message as appended.
    pub message: NewMessage,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message with its sequence number.
    Message {
        /// Sequence number.
        seq: u64,
        /// The message.
        message: NewMessage,
    },
    /// Settlements of earlier messages.
    Settle(Vec<(u64, Settlement)>),
    /// Delivery counts (absolute values) of earlier messages.
    Delivery(Vec<(u64, u32)>),
    /// Bytes left out up to `gap` bytes from this record's start ([`TYPE_SKIP`]).
    Skip {
        /// Bytes from this record's start to the next record.
        gap: u32,
        /// Every message before the next record has a seq below this.
        next_seq: u64,
    },
    /// End of a complete segment.
    Seal {
        /// Offset of this record in its segment (= bytes of data before it).
        offset: u64,
        /// The next sequence number when the segment was sealed.
        next_seq: u64,
    },
}

/// A frame located in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Record type byte.
    pub kind: u8,
    /// Record body (after the type byte).
    pub body: &'a [u8],
    /// Total bytes the frame occupies (prefix + type + body).
    pub total_len: usize,
}

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment index (file name).
    pub index: u64,
    /// The next sequence number when the segment was created: every message in it has seq >= this.
    pub base_seq: u64,
}

/// Encodes a segment header.
pub fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..20].copy_from_slice(&h.index.to_le_bytes());
    out[20..28].copy_from_slice(&h.base_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a segment header from the start of `buf`.
pub fn decode_segment_header(buf: &[u8]) -> Result<SegmentHeader, FrameError> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: SEGMENT_HEADER_LEN as u64,
            have: buf.len() as u64,
        });
    }
    let stored = u32::from_le_bytes(buf[28..32].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&buf[..28]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    if buf[..8] != SEGMENT_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = u16::from_le_bytes(buf[8..10].try_into().expect("2 bytes"));
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    Ok(SegmentHeader {
        index: u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")),
        base_seq: u64::from_le_bytes(buf[20..28].try_into().expect("8 bytes")),
    })
}

/// Locates and checks the frame at the start of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    decode_frame_salted(buf, 0)
}

/// [`decode_frame`] for a frame whose stored CRC was XORed with `salt` (`salt_frames`; the WAL
/// salts its frames with the file's index, so the stale frames of a recycled file do not check).
pub fn decode_frame_salted(buf: &[u8], salt: u32) -> Result<Frame<'_>, FrameError> {
    if buf.len() < FRAME_PREFIX_LEN {
        return Err(FrameError::Truncated {
            needed: FRAME_PREFIX_LEN as u64,
            have: buf.len() as u64,
        });
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    let total = FRAME_PREFIX_LEN + len as usize;
    if buf.len() < total {
        return Err(FrameError::Truncated {
            needed: total as u64,
            have: buf.len() as u64,
        });
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) ^ salt;
    let computed = frame_crc(&buf[..4], &buf[FRAME_PREFIX_LEN..total]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(Frame {
        kind: buf[FRAME_PREFIX_LEN],
        body: &buf[FRAME_PREFIX_LEN + 1..total],
        total_len: total,
    })
}

fn frame_crc(len_bytes: &[u8], type_and_body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), type_and_body)
}

/// Decodes every frame of `buf` in turn (what the fuzz target and the decoder proptest call): returns
/// the records, or the first error with its byte offset.
pub fn decode_all(buf: &[u8]) -> Result<Vec<Record>, (usize, FrameError)> {
    let bytes = Bytes::copy_from_slice(buf);
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let frame = decode_frame(&bytes[off..]).map_err(|e| (off, e))?;
        let record = decode_record(&frame, &bytes).map_err(|e| (off, e))?;
        let step = match record {
            Record::Skip { gap, .. } => gap as usize,
            _ => frame.total_len,
        };
        if off + step > bytes.len() {
            return Err((
                off,
                FrameError::Truncated {
                    needed: step as u64,
                    have: (bytes.len() - off) as u64,
                },
            ));
        }
        out.push(record);
        off += step;
    }
    Ok(out)
}

/// Fully decodes a checked frame. `owner` must be the `Bytes` the frame's body points into; payloads,
/// keys and header values are zero-copy slices of it.
pub fn decode_record(frame: &Frame<'_>, owner: &Bytes) -> Result<Record, FrameError> {
    match frame.kind {
        TYPE_MESSAGE | TYPE_COPY => {
            let p = parse_message(frame.body)?;
            let mut headers = Vec::with_capacity(p.header_count as usize);
            let mut c = Cursor(p.headers_raw);
            for _ in 0..p.header_count {
                let (name, value) = read_header(&mut c)?;
                let name = std::str::from_utf8(name)
                    .map_err(|_| FrameError::Malformed("header name not UTF-8"))?;
                headers.push((name.to_owned(), owner.slice_ref(value)));
            }
            Ok(Record::Message {
                seq: p.seq,
                message: NewMessage {
                    timestamp_ms: p.timestamp_ms,
                    key: p.key.map(|k| owner.slice_ref(k)),
                    priority: p.priority,
                    ttl_ms: p.ttl_ms,
                    headers,
                    message_id: p.message_id.map(|k| owner.slice_ref(k)),
                    properties: p.properties.map(|b| owner.slice_ref(b)),
                    payload: owner.slice_ref(p.payload),
                },
            })
        }
        TYPE_SETTLE => {
            let mut out = Vec::new();
            for_each_settlement(frame.body, |seq, s| out.push((seq, s)))?;
            Ok(Record::Settle(out))
        }
        TYPE_DELIVERY => {
            let mut out = Vec::new();
            for_each_delivery(frame.body, |seq, n| out.push((seq, n)))?;
            Ok(Record::Delivery(out))
        }
        TYPE_SEAL => {
            let (offset, next_seq) = parse_seal(frame.body)?;
            Ok(Record::Seal { offset, next_seq })
        }
        TYPE_SKIP => {
            let (gap, next_seq) = parse_skip(frame.body)?;
            Ok(Record::Skip { gap, next_seq })
        }
        other => Err(FrameError::UnknownType(other)),
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed(
                "field runs past the end of the record",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn read_header<'a>(c: &mut Cursor<'a>) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    let nl = c.u16()? as usize;
    let name = c.take(nl)?;
    let vl = c.u32()? as usize;
    let value = c.take(vl)?;
    Ok((name, value))
}

/// A message body parsed without copying.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageParts<'a> {
    pub seq: u64,
    pub timestamp_ms: u64,
    pub ttl_ms: Option<u64>,
    pub priority: u8,
    pub key: Option<&'a [u8]>,
    pub message_id: Option<&'a [u8]>,
    pub header_count: u16,
    pub headers_raw: &'a [u8],
    pub properties: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

pub(crate) fn parse_message(body: &[u8]) -> Result<MessageParts<'_>, FrameError> {
    let mut c = Cursor(body);
    let seq = c.u64()?;
    let timestamp_ms = c.u64()?;
    let ttl = c.u64()?;
    let flags = c.u8()?;
    if flags & !(FLAG_KEY | FLAG_TTL | FLAG_MESSAGE_ID | FLAG_PROPERTIES) != 0 {
        return Err(FrameError::Malformed("unknown message flags"));
    }
    let priority = c.u8()?;
    let key_len = c.u16()? as usize;
    let key_bytes = c.take(key_len)?;
    let key = if flags & FLAG_KEY != 0 {
        Some(key_bytes)
    } else if key_len != 0 {
        return Err(FrameError::Malformed("key bytes without key flag"));
    } else {
        None
    };
    let message_id = if flags & FLAG_MESSAGE_ID != 0 {
        let n = c.u8()? as usize;
        Some(c.take(n)?)
    } else {
        None
    };
    let header_count = c.u16()?;
    let start = c.0;
    for _ in 0..header_count {
        let (name, _) = read_header(&mut c)?;
        if std::str::from_utf8(name).is_err() {
            return Err(FrameError::Malformed("header name not UTF-8"));
        }
    }
    let headers_raw = &start[..start.len() - c.0.len()];
    let properties = if flags & FLAG_PROPERTIES != 0 {
        let n = c.u32()? as usize;
        Some(c.take(n)?)
    } else {
        None
    };
    let payload_len = c.u32()? as usize;
    let payload = c.take(payload_len)?;
    if !c.0.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after payload"));
    }
    Ok(MessageParts {
        seq,
        timestamp_ms,
        ttl_ms: (flags & FLAG_TTL != 0).then_some(ttl),
        priority,
        key,
        message_id,
        header_count,
        headers_raw,
        properties,
        payload,
    })
}

fn read_str(c: &mut Cursor<'_>) -> Result<String, FrameError> {
    let n = c.u16()? as usize;
    let b = c.take(n)?;
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| FrameError::Malformed("string not UTF-8"))
}

pub(crate) fn for_each_settlement(
    body: &[u8],
    mut f: impl FnMut(u64, Settlement),
) -> Result<(), FrameError> {
    let mut c = Cursor(body);
    let count = c.u32()?;
    for _ in 0..count {
        let seq = c.u64()?;
        let s = match c.u8()? {
            SETTLE_ACKED => Settlement::Acked,
            SETTLE_DROPPED => Settlement::Dropped(read_str(&mut c)?),
            SETTLE_EXPIRED => Settlement::Expired,
            SETTLE_DEAD_LETTERED => Settlement::DeadLettered(read_str(&mut c)?),
            _ => return Err(FrameError::Malformed("unknown settlement kind")),
        };
        f(seq, s);
    }
    if !c.0.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after settlements"));
    }
    Ok(())
}

pub(crate) fn for_each_delivery(
    body: &[u8],
    mut f: impl FnMut(u64, u32),
) -> Result<(), FrameError> {
    let mut c = Cursor(body);
    let count = c.u32()?;
    for _ in 0..count {
        let seq = c.u64()?;
        let n = c.u32()?;
        f(seq, n);
    }
    if !c.0.is_empty() {
        return Err(FrameError::Malformed(
            "trailing bytes after delivery counts",
        ));
    }
    Ok(())
}

pub(crate) fn parse_seal(body: &[u8]) -> Result<(u64, u64), FrameError> {
    let mut c = Cursor(body);
    let offset = c.u64()?;
    let next_seq = c.u64()?;
    if !c.0.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after seal"));
    }
    Ok((offset, next_seq))
}

/// Encodes a seal frame.
/// Parses a skip record's body: (gap, next seq). A gap smaller than the frame itself is malformed.
pub(crate) fn parse_skip(body: &[u8]) -> Result<(u32, u64), FrameError> {
    if body.len() != 12 {
        return Err(FrameError::Malformed("skip record body is not 12 bytes"));
    }
    let gap = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
    if (gap as usize) < SKIP_FRAME_LEN {
        return Err(FrameError::Malformed("skip record shorter than itself"));
    }
    Ok((
        gap,
        u64::from_le_bytes(body[4..].try_into().expect("8 bytes")),
    ))
}

/// Encodes a skip record covering `gap` bytes (>= [`SKIP_FRAME_LEN`]) from its own start.
pub(crate) fn encode_skip(out: &mut Vec<u8>, gap: u32, next_seq: u64) -> usize {
    debug_assert!(gap as usize >= SKIP_FRAME_LEN);
    frame_into(out, TYPE_SKIP, |b| {
        b.extend_from_slice(&gap.to_le_bytes());
        b.extend_from_slice(&next_seq.to_le_bytes());
    })
}

pub(crate) fn encode_seal(out: &mut Vec<u8>, offset: u64, next_seq: u64) -> usize {
    frame_into(out, TYPE_SEAL, |b| {
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&next_seq.to_le_bytes());
    })
}

/// Appends one frame to `out`: reserves the prefix, lets `body` write type + body, then fills in the
/// length and CRC. Returns the frame's size.
pub(crate) fn frame_into(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_LEN]);
    out.push(kind);
    body(out);
    let len = (out.len() - start - FRAME_PREFIX_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// XORs the stored CRC of every frame of `buf` (whole frames, as [`frame_into`] made them) with
/// `salt`: what [`decode_frame_salted`] undoes. Stops at a length that does not fit (never the case
/// for frames made by [`frame_into`]).
pub(crate) fn salt_frames(buf: &mut [u8], salt: u32) {
    let mut off = 0;
    while off + FRAME_PREFIX_LEN <= buf.len() {
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let total = FRAME_PREFIX_LEN + len;
        if len == 0 || off + total > buf.len() {
            debug_assert!(false, "salt_frames over a partial frame at {off}");
            return;
        }
        let crc = u32::from_le_bytes(buf[off + 4..off + 8].try_into().expect("4 bytes")) ^ salt;
        buf[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        off += total;
    }
}

/// Bytes a message's frame will take, or an error if a field exceeds its on-disk width.
pub(crate) fn message_frame_len(m: &NewMessage) -> Result<u64, String> {
    let key_len = m.key.as_ref().map_or(0, |k| k.len());
    if key_len > u16::MAX as usize {
        return Err(format!("key of {key_len} bytes exceeds 65535"));
    }
    if m.headers.len() > u16::MAX as usize {
        return Err(format!("{} headers exceed 65535", m.headers.len()));
    }
    let id_len = match &m.message_id {
        Some(id) if id.len() > u8::MAX as usize => {
            return Err(format!("message id of {} bytes exceeds 255", id.len()));
        }
        Some(id) => 1 + id.len() as u64,
        None => 0,
    };
    let mut len = FRAME_PREFIX_LEN as u64 + 1 + 8 + 8 + 8 + 1 + 1 + 2 + key_len as u64 + id_len + 2;
    for (name, value) in &m.headers {
        if name.len() > u16::MAX as usize {
            return Err(format!("header name of {} bytes exceeds 65535", name.len()));
        }
        if value.len() as u64 > u32::MAX as u64 {
            return Err("header value exceeds 4 GiB".into());
        }
        len += 2 + name.len() as u64 + 4 + value.len() as u64;
    }
    if let Some(p) = &m.properties {
        if p.len() as u64 > u32::MAX as u64 {
            return Err("properties exceed 4 GiB".into());
        }
        len += 4 + p.len() as u64;
    }
    if m.payload.len() as u64 > u32::MAX as u64 {
        return Err("payload exceeds 4 GiB".into());
    }
    Ok(len + 4 + m.payload.len() as u64)
}

/// Encodes a message frame (fields must have passed [`message_frame_len`]).
pub(crate) fn encode_message(out: &mut Vec<u8>, seq: u64, m: &NewMessage) -> usize {
    frame_into(out, TYPE_MESSAGE, |b| {
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&m.timestamp_ms.to_le_bytes());
        b.extend_from_slice(&m.ttl_ms.unwrap_or(0).to_le_bytes());
        let mut flags = 0;
        if m.key.is_some() {
            flags |= FLAG_KEY;
        }
        if m.ttl_ms.is_some() {
            flags |= FLAG_TTL;
        }
        if m.message_id.is_some() {
            flags |= FLAG_MESSAGE_ID;
        }
        if m.properties.is_some() {
            flags |= FLAG_PROPERTIES;
        }
        b.push(flags);
        b.push(m.priority);
        let key = m.key.as_deref().unwrap_or(&[]);
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.extend_from_slice(key);
        if let Some(id) = &m.message_id {
            b.push(id.len() as u8);
            b.extend_from_slice(id);
        }
        b.extend_from_slice(&(m.headers.len() as u16).to_le_bytes());
        for (name, value) in &m.headers {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(value.len() as u32).to_le_bytes());
            b.extend_from_slice(value);
        }
        if let Some(p) = &m.properties {
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p);
        }
        b.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&m.payload);
    })
}

/// Checks a settlement's strings fit their on-disk width.
pub(crate) fn check_settlement(s: &Settlement) -> Result<(), String> {
    match s {
        Settlement::Dropped(r) | Settlement::DeadLettered(r) if r.len() > u16::MAX as usize => Err(
            format!("settlement string of {} bytes exceeds 65535", r.len()),
        ),
        _ => Ok(()),
    }
}

/// Encodes a settlement batch frame.
pub(crate) fn encode_settlements(out: &mut Vec<u8>, items: &[(u64, Settlement)]) -> usize {
    frame_into(out, TYPE_SETTLE, |b| {
        b.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (seq, s) in items {
            b.extend_from_slice(&seq.to_le_bytes());
            let (kind, text) = match s {
                Settlement::Acked => (SETTLE_ACKED, None),
                Settlement::Dropped(r) => (SETTLE_DROPPED, Some(r)),
                Settlement::Expired => (SETTLE_EXPIRED, None),
                Settlement::DeadLettered(t) => (SETTLE_DEAD_LETTERED, Some(t)),
            };
            b.push(kind);
            if let Some(t) = text {
                b.extend_from_slice(&(t.len() as u16).to_le_bytes());
                b.extend_from_slice(t.as_bytes());
            }
        }
    })
}

/// Encodes a delivery-count batch frame.
pub(crate) fn encode_deliveries(out: &mut Vec<u8>, items: &[(u64, u32)]) -> usize {
    frame_into(out, TYPE_DELIVERY, |b| {
        b.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (seq, n) in items {
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
    })
}

/// Stable 64-bit FNV-1a hash of a key, the form the in-memory index keeps (never 0; 0 means "no key").
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_roundtrip() {
        let m = NewMessage {
            timestamp_ms: 7,
            key: Some(Bytes::from_static(b"k")),
            priority: 3,
            ttl_ms: Some(0),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            message_id: Some(Bytes::from_static(b"id-1")),
            properties: Some(Bytes::from_static(b"\x80\x00\x04text")),
            payload: Bytes::from_static(b"payload"),
        };
        let mut buf = Vec::new();
        let n = encode_message(&mut buf, 42, &m);
        assert_eq!(n as u64, message_frame_len(&m).unwrap());
        encode_settlements(
            &mut buf,
            &[
                (42, Settlement::Dropped("full".into())),
                (1, Settlement::Acked),
            ],
        );
        encode_deliveries(&mut buf, &[(42, 3)]);
        assert_eq!(encode_seal(&mut buf, 9, 43), SEAL_FRAME_LEN);
        let recs = decode_all(&buf).unwrap();
        assert_eq!(
            recs[3],
            Record::Seal {
                offset: 9,
                next_seq: 43
            }
        );
        assert_eq!(
            recs[0],
            Record::Message {
                seq: 42,
                message: m
            }
        );
        assert_eq!(
            recs[1],
            Record::Settle(vec![
                (42, Settlement::Dropped("full".into())),
                (1, Settlement::Acked)
            ])
        );
        assert_eq!(recs[2], Record::Delivery(vec![(42, 3)]));
    }

    #[test]
    fn version_1_segments_are_still_read() {
        let mut b = encode_segment_header(&SegmentHeader {
            index: 1,
            base_seq: 0,
        });
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_segment_header(&b).is_ok());
        b[8..10].copy_from_slice(&5u16.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&b), Err(FrameError::Version(5)));
    }

    #[test]
    fn header_roundtrip_and_damage() {
        let h = SegmentHeader {
            index: 5,
            base_seq: 99,
        };
        let mut b = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&b).unwrap(), h);
        b[13] ^= 1;
        assert!(matches!(
            decode_segment_header(&b),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode_deliveries(&mut buf, &[(1, 2)]);
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(decode_all(&b).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn segments_of_version_1_are_read_and_unknown_versions_refused() {
        let h = SegmentHeader {
            index: 3,
            base_seq: 10,
        };
        let mut bytes = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&bytes), Ok(h));
        for (version, ok) in [
            (1u16, true),
            (2, true),
            (3, true),
            (4, true),
            (0, false),
            (5, false),
        ] {
            bytes[8..10].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..28]);
            bytes[28..32].copy_from_slice(&crc.to_le_bytes());
            match decode_segment_header(&bytes) {
                Ok(got) => assert!(ok && got == h, "version {version}"),
                Err(e) => assert!(
                    !ok && e == FrameError::Version(version),
                    "version {version}: {e}"
                ),
            }
        }
    }

    #[test]
    fn a_version_1_message_record_without_properties_still_decodes() {
        // A record as version 1 wrote it: flags without bit 4, no properties field.
        let m = NewMessage {
            timestamp_ms: 1,
            payload: Bytes::from_static(b"old"),
            ..NewMessage::default()
        };
        let mut buf = Vec::new();
        encode_message(&mut buf, 5, &m);
        assert_eq!(
            buf[FRAME_PREFIX_LEN + 1 + 24],
            0,
            "no flag set: the version 1 layout"
        );
        assert_eq!(
            decode_all(&buf).unwrap(),
            vec![Record::Message { seq: 5, message: m }]
        );
    }
}
