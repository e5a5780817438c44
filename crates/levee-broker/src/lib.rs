//! The Levee broker.
//!
//! - [`queue`]: the per-queue state machine (pure: time is an argument, effects are returned).

pub mod queue;
