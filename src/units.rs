//! Human-readable units.
