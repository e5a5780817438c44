//! [`Key`]: the conflation key of the in-process channel, a byte string that is stored inline
//! (no allocation) up to [`Key::INLINE`] bytes and shares a [`Bytes`] buffer beyond that.
//!
//! # Invariants
//! - Equality and hashing are those of the byte string, whatever the representation, so a key
//!   built from a `u64`, a `&str`, a `Vec<u8>` or `Bytes` with the same bytes is the same key.
//! - Building a key from an integer, a `&'static str`, a short `String`/`Vec<u8>` or `Bytes`
//!   never allocates (a long `String`/`Vec<u8>` is moved into `Bytes`, no copy), and cloning one
//!   never allocates except for `Bytes` made from a `Vec` (which allocates its shared header
//!   once, on first clone).

use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// A conflation key (see the module docs). Build it with `From`/`Into`: integers (little
/// endian bytes), `&'static str`, `String`, `Vec<u8>`, `&'static [u8]`, `Bytes`.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; Key::INLINE] },
    Shared(Bytes),
}

impl Key {
    /// Keys up to this many bytes are stored inline.
    pub const INLINE: usize = 23;

    /// A key holding a copy of `b` (inline when short enough).
    pub fn copy_from_slice(b: &[u8]) -> Self {
        if b.len() <= Self::INLINE {
            let mut buf = [0; Self::INLINE];
            buf[..b.len()].copy_from_slice(b);
            Key(Repr::Inline {
                len: b.len() as u8,
                buf,
            })
        } else {
            Key(Repr::Shared(Bytes::copy_from_slice(b)))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Shared(b) => b,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) => write!(f, "Key({s:?})"),
            Err(_) => write!(f, "Key({:?})", self.as_bytes()),
        }
    }
}

impl From<Bytes> for Key {
    fn from(b: Bytes) -> Self {
        if b.len() <= Self::INLINE {
            Key::copy_from_slice(&b)
        } else {
            Key(Repr::Shared(b))
        }
    }
}
impl From<Vec<u8>> for Key {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= Self::INLINE {
            Key::copy_from_slice(&v)
        } else {
            Key(Repr::Shared(Bytes::from(v)))
        }
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        s.into_bytes().into()
    }
}
impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Key::from(s.as_bytes())
    }
}
impl From<&'static [u8]> for Key {
    fn from(b: &'static [u8]) -> Self {
        if b.len() <= Self::INLINE {
            Key::copy_from_slice(b)
        } else {
            Key(Repr::Shared(Bytes::from_static(b)))
        }
    }
}
impl<const N: usize> From<[u8; N]> for Key {
    fn from(b: [u8; N]) -> Self {
        Key::copy_from_slice(&b)
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(v: $t) -> Self {
                Key::copy_from_slice(&v.to_le_bytes())
            }
        }
    )*};
}
int_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h(k: &Key) -> u64 {
        let mut s = DefaultHasher::new();
        k.hash(&mut s);
        s.finish()
    }

    #[test]
    fn same_bytes_are_the_same_key_whatever_the_representation() {
        let long = "a key that is longer than twenty-three bytes";
        let a = Key::from(long);
        let b = Key::from(Bytes::from(long.to_string()));
        let c = Key::from(long.to_string());
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(h(&a), h(&c));
        assert_eq!(Key::from(7u64), Key::from(7u64.to_le_bytes().to_vec()));
        assert_eq!(Key::from("s1"), Key::from(Bytes::from_static(b"s1")));
        assert_ne!(Key::from("s1"), Key::from("s2"));
        assert_eq!(Key::from(long).as_bytes(), long.as_bytes());
    }
}
