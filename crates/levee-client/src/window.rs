//! [`Window`]: an in-flight window of messages and payload bytes (two semaphores), used by the
//! client as a whole and by each producer to bound what is unconfirmed.
//!
//! # Invariants
//! - At most `msgs` permits of messages and `bytes` permits of bytes are out at once; a message
//!   larger than the whole byte window takes all of it (it then travels alone), so it never waits
//!   forever.
//! - The semaphores are never closed; a cancelled wait holds nothing.
//!
//! A module of its own so that `client` and `producer` share it without importing each other.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An in-flight window (messages and payload bytes) made of two semaphores.
#[derive(Debug)]
pub(crate) struct Window {
    msgs: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

impl Window {
    pub(crate) fn new(msgs: u32, bytes: u32) -> Self {
        Window {
            msgs: Arc::new(Semaphore::new(msgs as usize)),
            bytes: Arc::new(Semaphore::new(bytes as usize)),
            max_bytes: bytes,
        }
    }

    /// A message larger than the whole byte window takes all of it (it then travels alone).
    fn weight(&self, bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX).min(self.max_bytes)
    }

    /// Waits for room. Cancel-safe: a cancelled wait holds nothing.
    pub(crate) async fn acquire(&self, bytes: usize) -> [OwnedSemaphorePermit; 2] {
        // The semaphores are never closed.
        let m = self.msgs.clone().acquire_many_owned(1).await.expect("open");
        let b = self
            .bytes
            .clone()
            .acquire_many_owned(self.weight(bytes))
            .await
            .expect("open");
        [m, b]
    }

    pub(crate) fn try_acquire(&self, bytes: usize) -> Option<[OwnedSemaphorePermit; 2]> {
        let m = self.msgs.clone().try_acquire_many_owned(1).ok()?;
        let b = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.weight(bytes))
            .ok()?;
        Some([m, b])
    }
}
