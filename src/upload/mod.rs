//! Upload of packed collections to the Internet Archive (SPEC Part 3,
//! "Upload to the Internet Archive"): an item per collection, sent over
//! IA's S3-like API, confirmed from the item's metadata.
//!
//! - [`credentials`]: the IA keys from the environment, their `_FILE` forms
//!   or the `ia` tool's config file; the secret never printable.
//! - [`headers`]: the `x-archive-*` headers of a `PUT`, built from the
//!   collection's `.meta` tags, and their redacted rendering for `--dry-run`.
//! - [`plan`]: which item each tar goes to, within IA's item limits; the
//!   identifiers and each part's tags.
//! - [`client`]: IA-S3 `PUT`s streamed from disk, an item's file list,
//!   `check_limit`; each error's retry-or-pause decision.
//! - [`sync`]: placements and each item's own files recorded before sending.
//! - [`run`]: one job's track: send, skip what the item holds, confirm.
//! - [`ia_only`]: `ia.delete_after_confirm`: a confirmed tar recorded as held
//!   on the Internet Archive only, then removed locally (crash-safe).
//! - [`command`]: the `upload` command and `download --upload-ia`.
//! - [`progress`]: their progress bar or lines, and the summary line.
//! - [`daemon`]: the track's loop in `serve`; pause, resume, retry.
//!
//! Settings: `config::IaSettings` (`[ia]`).
//!
//! What IA-S3 really does (limits, multipart, header encoding) is written up
//! in `docs/ia-s3.md`.

pub mod client;
pub mod command;
pub mod credentials;
pub mod daemon;
pub mod headers;
pub mod ia_only;
pub mod plan;
pub mod progress;
pub mod run;
pub mod sync;
