//! levee-flow (under construction).
