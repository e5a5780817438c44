//! levee-proto (under construction).
