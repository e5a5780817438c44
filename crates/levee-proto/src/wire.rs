//! Primitive field encoding: fixed-width little-endian integers, length-prefixed byte strings,
//! option tags and counted sequences.
//!
//! Invariants of [`Reader`]: it never reads past the frame it was given; every length or count is
//! compared with the bytes actually remaining *before* anything is allocated or sliced, so no
//! allocation is ever sized from an untrusted number larger than the frame itself; byte fields are
//! returned as zero-copy [`Bytes`] slices of the frame. Writers check every length against the width
//! of its prefix and the protocol limits, so whatever encodes also decodes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtoError;

type Result<T> = std::result::Result<T, ProtoError>;

/// Cursor over one frame's body.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<()> {
        if self.buf.len() < n {
            Err(ProtoError::Truncated {
                what,
                needed: n as u64,
                remaining: self.buf.len() as u64,
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        self.need(2, what)?;
        Ok(self.buf.get_u16_le())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ProtoError::InvalidValue {
                what,
                value: v.into(),
            }),
        }
    }

    /// `u8` presence tag (0 / 1) followed by the value when present.
    pub(crate) fn option<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.bool(what)? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn array4(&mut self, what: &'static str) -> Result<[u8; 4]> {
        self.need(4, what)?;
        let mut out = [0u8; 4];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// Zero-copy slice of the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn bytes8(&mut self, what: &'static str) -> Result<Bytes> {
        let n = self.u8(what)?;
        self.take(n.into(), what)
    }

    pub(crate) fn bytes16(&mut self, what: &'static str) -> Result<Bytes> {
        let n = self.u16(what)?;
        self.take(n.into(), what)
    }

    pub(crate) fn bytes32(&mut self, what: &'static str) -> Result<Bytes> {
        let n = self.u32(what)?;
        self.take(usize_from(n), what)
    }

    pub(crate) fn str8(&mut self, what: &'static str) -> Result<String> {
        let b = self.bytes8(what)?;
        utf8(&b, what)
    }

    pub(crate) fn str16(&mut self, what: &'static str) -> Result<String> {
        let b = self.bytes16(what)?;
        utf8(&b, what)
    }

    /// Validates an item count read from the wire: at most `max`, and `count * min_item` bytes must
    /// still be in the frame, so a capacity sized from it is bounded by the frame itself.
    fn check_count(
        &self,
        count: usize,
        max: usize,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize> {
        if count > max {
            return Err(ProtoError::LimitExceeded {
                what,
                len: count as u64,
                max: max as u64,
            });
        }
        self.need(count.saturating_mul(min_item), what)?;
        Ok(count)
    }

    /// `u32` count then that many items, each at least `min_item` bytes on the wire.
    pub(crate) fn vec32<T>(
        &mut self,
        what: &'static str,
        max: usize,
        min_item: usize,
        mut f: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let raw = self.u32(what)?;
        let n = self.check_count(usize_from(raw), max, min_item, what)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// `u8` count then that many items, each at least `min_item` bytes on the wire.
    pub(crate) fn vec8<T>(
        &mut self,
        what: &'static str,
        max: usize,
        min_item: usize,
        mut f: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let raw = self.u8(what)?;
        let n = self.check_count(raw.into(), max, min_item, what)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// Whether the frame has bytes left (a protocol-2 trailer follows).
    pub(crate) fn has_more(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Fails with [`ProtoError::TrailingBytes`] unless the whole frame was consumed.
    pub(crate) fn finish(self, frame_type: u8) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                frame_type,
                extra: self.buf.len() as u64,
            })
        }
    }
}

fn utf8(b: &[u8], what: &'static str) -> Result<String> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| ProtoError::InvalidUtf8 { what })
}

/// `u32` to `usize`; saturates on (hypothetical) 16-bit targets, where the result then fails the
/// remaining-bytes check.
pub(crate) fn usize_from(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn limit(len: usize, max: usize, what: &'static str) -> Result<()> {
    if len > max {
        Err(ProtoError::LimitExceeded {
            what,
            len: len as u64,
            max: max as u64,
        })
    } else {
        Ok(())
    }
}

pub(crate) fn put_bytes8(dst: &mut BytesMut, b: &[u8], what: &'static str) -> Result<()> {
    limit(b.len(), u8::MAX.into(), what)?;
    dst.put_u8(b.len() as u8);
    dst.put_slice(b);
    Ok(())
}

pub(crate) fn put_bytes16(dst: &mut BytesMut, b: &[u8], what: &'static str) -> Result<()> {
    limit(b.len(), u16::MAX.into(), what)?;
    dst.put_u16_le(b.len() as u16);
    dst.put_slice(b);
    Ok(())
}

pub(crate) fn put_bytes32(dst: &mut BytesMut, b: &[u8], what: &'static str) -> Result<()> {
    limit(b.len(), usize_from(u32::MAX), what)?;
    dst.put_u32_le(b.len() as u32);
    dst.put_slice(b);
    Ok(())
}

pub(crate) fn put_count32(
    dst: &mut BytesMut,
    n: usize,
    max: usize,
    what: &'static str,
) -> Result<()> {
    limit(n, max.min(usize_from(u32::MAX)), what)?;
    dst.put_u32_le(n as u32);
    Ok(())
}

pub(crate) fn put_count8(
    dst: &mut BytesMut,
    n: usize,
    max: usize,
    what: &'static str,
) -> Result<()> {
    limit(n, max.min(u8::MAX.into()), what)?;
    dst.put_u8(n as u8);
    Ok(())
}

pub(crate) fn put_option<T>(
    dst: &mut BytesMut,
    value: Option<&T>,
    f: impl FnOnce(&mut BytesMut, &T) -> Result<()>,
) -> Result<()> {
    match value {
        None => {
            dst.put_u8(0);
            Ok(())
        }
        Some(v) => {
            dst.put_u8(1);
            f(dst, v)
        }
    }
}
