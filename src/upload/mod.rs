//! Upload of packed collections to the Internet Archive (SPEC Part 3,
//! "Upload to the Internet Archive"): an item per collection, sent over
//! IA's S3-like API, confirmed from the item's metadata.
//!
//! - [`plan`]: which item each tar goes to, within IA's item limits; the
//!   identifiers and each part's tags.

pub mod client;
pub mod plan;
pub mod settings;
