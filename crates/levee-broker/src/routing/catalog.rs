//! The exchange catalog: `<data_dir>/exchanges.meta`, holding every durable declared exchange and
//! every durable binding.
//!
//! Format: a sequence of wire frames, `DeclareExchange` (`req` 0, not passive) for each exchange
//! then `Bind` (`req` 0) for each binding, so the catalog and the protocol share one encoding
//! (as `queue.meta` does for queues). The whole file is rewritten on each durable change with
//! levee-store's `meta::write_meta_atomic` (temporary file, fsync, rename, fsync the directory):
//! after a crash it holds the state before or after the change, never a mix.
//!
//! # Invariants
//! - An entry that does not decode, or a frame of another type, is an error
//!   ([`BrokerError::Catalog`]): the broker does not start without its durable exchanges.
//! - A binding whose queue no longer exists (a queue deleted just before a crash, before the
//!   catalog was rewritten) is skipped at load, with a warning; the next write drops it.
//!
//! Every function here does blocking I/O: call it from `spawn_blocking`.

use std::path::Path;

use bytes::BytesMut;
use levee_proto::{Binding, ClientFrame, ExchangeConfig};
use levee_store::Backend;

use crate::error::BrokerError;

/// The catalog's file name in the data directory.
pub(crate) const FILE: &str = "exchanges.meta";

/// What the catalog holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub(crate) exchanges: Vec<(String, ExchangeConfig)>,
    pub(crate) bindings: Vec<Binding>,
}

fn encode(d: &Durable) -> Result<Vec<u8>, BrokerError> {
    let mut buf = BytesMut::new();
    for (name, config) in &d.exchanges {
        ClientFrame::DeclareExchange {
            req: 0,
            exchange: name.clone(),
            config: config.clone(),
            passive: false,
        }
        .encode(&mut buf)?;
    }
    for b in &d.bindings {
        ClientFrame::Bind {
            req: 0,
            binding: b.clone(),
        }
        .encode(&mut buf)?;
    }
    Ok(buf.to_vec())
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Durable, BrokerError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Durable::default();
    let bad = |reason: String| BrokerError::Catalog {
        path: path.to_path_buf(),
        reason,
    };
    while !buf.is_empty() {
        match ClientFrame::decode(&mut buf, levee_store::meta::MAX_META_BYTES) {
            Ok(Some(ClientFrame::DeclareExchange {
                exchange, config, ..
            })) => out.exchanges.push((exchange, config)),
            Ok(Some(ClientFrame::Bind { binding, .. })) => out.bindings.push(binding),
            Ok(Some(other)) => return Err(bad(format!("unexpected entry {other:?}"))),
            Ok(None) => return Err(bad("truncated entry".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(out)
}

/// Reads the catalog (empty when the file does not exist).
pub(crate) fn load(backend: &dyn Backend, data_dir: &Path) -> Result<Durable, BrokerError> {
    let path = data_dir.join(FILE);
    match levee_store::meta::read_meta(backend, &path)? {
        Some(bytes) => decode(&path, &bytes),
        None => Ok(Durable::default()),
    }
}

/// Replaces the catalog with `d` (atomically, fsynced).
pub(crate) fn save(backend: &dyn Backend, data_dir: &Path, d: &Durable) -> Result<(), BrokerError> {
    let bytes = encode(d)?;
    levee_store::meta::write_meta_atomic(backend, &data_dir.join(FILE), &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::ExchangeKind;

    #[test]
    fn round_trips_and_refuses_other_entries() {
        let d = Durable {
            exchanges: vec![
                ("logs".into(), ExchangeConfig::new(ExchangeKind::Fanout)),
                (
                    "h".into(),
                    ExchangeConfig::new(ExchangeKind::Headers).auto_delete(true),
                ),
            ],
            bindings: vec![
                Binding::new("logs", "q1", ""),
                Binding::new("h", "q2", "").with_argument("x-match", "any"),
            ],
        };
        let bytes = encode(&d).unwrap();
        assert_eq!(decode(Path::new("x"), &bytes).unwrap(), d);
        assert!(decode(Path::new("x"), &bytes[..bytes.len() - 1]).is_err());
        let mut other = BytesMut::new();
        ClientFrame::ListExchanges { req: 0 }
            .encode(&mut other)
            .unwrap();
        assert!(decode(Path::new("x"), &other).is_err());
    }
}
