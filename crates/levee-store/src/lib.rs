//! levee-store (under construction).
