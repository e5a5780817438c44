//! [`BrokerError`]: everything the broker layer can fail with, and its wire error code.

use std::path::{Path, PathBuf};

use levee_proto::{ErrorCode, ProtoError};
use levee_store::StoreError;

/// An error of the broker layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No queue has this name.
    #[error("unknown queue {0}")]
    UnknownQueue(String),
    /// The queue is replicated and served by another node now (see levee-cluster).
    #[error("queue {queue} is replicated and served by another node{}", serving.as_ref().map(|a| format!(": try {a}")).unwrap_or_default())]
    NotLeader {
        /// The queue.
        queue: String,
        /// The wire address of the node serving it, if known.
        serving: Option<String>,
    },
    /// The queue exists with another config; the message lists every difference.
    #[error("queue {queue} exists with a different config: {differences}")]
    ConfigMismatch {
        /// The queue.
        queue: String,
        /// What differs, field by field.
        differences: String,
    },
    /// No exchange has this name.
    #[error("unknown exchange {0}")]
    UnknownExchange(String),
    /// The exchange exists with another config; the message lists every difference.
    #[error("exchange {exchange} exists with a different config: {differences}")]
    ExchangeMismatch {
        /// The exchange.
        exchange: String,
        /// What differs, field by field.
        differences: String,
    },
    /// `if_unused` delete of an exchange that still has bindings.
    #[error("exchange {exchange} is in use ({bindings} bindings)")]
    ExchangeInUse {
        /// The exchange.
        exchange: String,
        /// Its bindings.
        bindings: u64,
    },
    /// An operation an exchange does not allow (declaring the default exchange or an `amq.`
    /// name, deleting a predeclared one, publishing to an internal one).
    #[error("exchange {exchange:?}: {reason}")]
    ExchangeAccess {
        /// The exchange.
        exchange: String,
        /// Why.
        reason: &'static str,
    },
    /// A name, config or frame was invalid.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The storage layer failed (I/O error, full disk, corruption).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A catalog entry (`queue.meta`) could not be understood.
    #[error("catalog entry {path}: {reason}")]
    Catalog {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A file-system operation outside the queue logs failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another broker (its PID in `holder`, when the lock file says) uses this data directory.
    #[error(
        "data directory {} is locked by another levee process ({}): stop it or use another --data-dir",
        dir.display(),
        match holder { Some(pid) => format!("pid {pid}"), None => "pid unknown".to_string() }
    )]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// The PID written in the lock file by its holder.
        holder: Option<u32>,
    },
    /// A broker setting is out of range ([`crate::BrokerConfig::validate`]).
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting, as its config-file key (e.g. `segment_bytes`).
        setting: &'static str,
        /// What is wrong with it, with the accepted range.
        reason: String,
    },
    /// A security setting is unusable (a TLS file, a user entry, no users on a public address).
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    /// The principal may not do this (wire `AccessDenied`, stable string `forbidden`).
    #[error(transparent)]
    Forbidden(#[from] crate::security::Forbidden),
    /// An internal task failed (a bug: it panicked or was cancelled).
    #[error("internal task failed: {0}")]
    Internal(String),
}

impl BrokerError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        BrokerError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn join(e: tokio::task::JoinError) -> Self {
        BrokerError::Internal(e.to_string())
    }

    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::UnknownQueue(_) => ErrorCode::UnknownQueue,
            BrokerError::NotLeader { .. } => ErrorCode::NotLeader,
            BrokerError::ConfigMismatch { .. } => ErrorCode::QueueConfigMismatch,
            BrokerError::UnknownExchange(_) => ErrorCode::UnknownExchange,
            BrokerError::ExchangeMismatch { .. } => ErrorCode::ExchangeConfigMismatch,
            BrokerError::ExchangeInUse { .. } => ErrorCode::ExchangeInUse,
            BrokerError::ExchangeAccess { .. } => ErrorCode::AccessDenied,
            BrokerError::Proto(e) => e.code(),
            BrokerError::Forbidden(_) => ErrorCode::AccessDenied,
            BrokerError::Store(StoreError::DiskFull { .. }) => ErrorCode::StorageFull,
            // Every other storage failure (I/O, corruption, format version, and any variant
            // levee-store adds: its enum is non_exhaustive) is the broker's failure, not the
            // client's: `internal`, never a code that would tell the client to change its request.
            BrokerError::Store(_) => ErrorCode::Internal,
            // Failures of the broker's own files and tasks; settings are refused at start and
            // never reach a client.
            BrokerError::Catalog { .. }
            | BrokerError::Io { .. }
            | BrokerError::DataDirLocked { .. }
            | BrokerError::InvalidSetting { .. }
            | BrokerError::Security(_)
            | BrokerError::Internal(_) => ErrorCode::Internal,
        }
    }
}
