//! levee-store: durable, segmented, crash-safe storage for Levee's queues. No networking.
//!
//! One [`QueueLog`] per queue, in a directory the broker chooses. A log is an append-only sequence of
//! checksummed records in fixed-maximum-size segment files: messages, settlements (acked, dropped with a
//! reason, expired, dead-lettered) and delivery counts. [`QueueLog::open`] rebuilds the unsettled
//! messages in sequence order (metadata only; payloads are read back on demand with
//! [`QueueLog::read`]), cutting off a torn tail and refusing damage anywhere else.
//!
//! Durability is explicit: every append returns a [`Durability`] handle that resolves to a
//! [`Durable`] proof only the store can create — under [`FsyncPolicy::Always`] only after an fsync
//! (group commit on the log's sync thread) covering the records.
//!
//! All disk access goes through the [`backend::Backend`] trait; [`backend::fault::FaultyBackend`]
//! simulates power loss and injects I/O errors for tests. [`meta`] offers atomically replaced metadata
//! files for the broker's queue catalog. The on-disk format is documented byte by byte in
//! `docs/design.md` and implemented in [`format`](mod@format).
//!
//! ```
//! use std::sync::Arc;
//! use levee_store::{FsBackend, LogConfig, NewMessage, QueueLog, Settlement};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (log, recovered) = QueueLog::open(FsBackend::shared(), dir.path().join("q"), LogConfig::default()).unwrap();
//! assert!(recovered.unsettled.is_empty());
//! let appended = log.append(&NewMessage { payload: "hello".into(), ..Default::default() }).unwrap();
//! let proof = appended.durability.wait().unwrap(); // after the fsync
//! assert_eq!(proof.level(), levee_store::DurabilityLevel::Fsynced);
//! assert_eq!(&log.read(appended.first_seq).unwrap().message.payload[..], b"hello");
//! drop(log.settle(appended.first_seq, Settlement::Acked).unwrap()); // the ack rides along
//! log.close().unwrap();
//! ```

#![warn(missing_docs)]

pub mod backend;
mod durability;
mod error;
pub mod format;
mod log;
pub mod meta;
pub mod wal;

pub use backend::{Backend, FsBackend, OpenMode, StorageFile};
pub use durability::{Durability, DurabilityLevel, Durable};
pub use error::{Result, StoreError};
pub use format::{NewMessage, Settlement, StoredMessage, key_hash};
pub use log::{
    Appended, FsyncPolicy, LogConfig, LogStats, MessageId, MessageMeta, QueueLog, Recovered,
    RecoveryReport, TruncatedTail,
};
pub use wal::{LogId, ReplayReport, Wal, WalConfig, WalStats};
