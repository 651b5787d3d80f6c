//! Upload of packed collections to the Internet Archive (SPEC Part 3,
//! "Upload to the Internet Archive"): an item per collection, sent over
//! IA's S3-like API, confirmed from the item's metadata.
//!
//! - [`credentials`]: the IA keys from the environment, their `_FILE` forms
//!   or the `ia` tool's config file; the secret never printable.
//! - [`headers`]: the `x-archive-*` headers of a `PUT`, built from the
//!   collection's `.meta` tags, and their redacted rendering for `--dry-run`.
//!
//! What IA-S3 really does (limits, multipart, header encoding) is written up
//! in `docs/ia-s3.md`.

pub mod credentials;
pub mod headers;
