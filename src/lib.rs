//! mapillary-downloader: a resumable, crash-safe archiver for Mapillary imagery.
//!
//! Module map:
//! - [`model`]: image metadata, quality, bbox, output format and the id rules that guard paths.
//! - [`selection`]: what a job archives: one source and its filters, normalised.
//! - [`config`]: layered, typed settings (defaults file, config file, env, flags); secrets redacted.
//! - [`store`]: the SQLite job store; every SQL statement lives here.
//! - [`mapillary`]: the Graph API and CDN client, its error classification and the shared rate limiter.
//! - [`exif`]: JPEG bytes + metadata -> tagged JPEG bytes (EXIF, GPS, XMP GPano).
//! - [`api`]: the axum HTTP API: job commands, `/status`, `/healthz`, `/metrics`, bearer auth.
//! - [`stats`]: throughput over the last minute and the ETA derived from it.
//!   [`metrics`]: counters and histograms (calls by outcome, download times) for `/metrics`.
//! - [`secret`]: a string type whose Debug and Display print `[redacted]`.
//! - [`units`]: human-readable sizes, counts, rates and durations. [`clock`]: Unix-ms wall time.
//! - [`archive`]: the on-disk layout and durable writes (`.part`, fsync, rename, fsync dir).
//!   [`checksum`]: SHA-256 while writing. [`webp`]: JPEG -> tagged WebP.
//!   [`bucket`]: the archive in an S3-compatible bucket instead (`storage.archive_url = s3://…`);
//!   [`archive_files`]: reading, writing and removing archive files on either, for packaging and `verify`.
//! - [`package`]: tars per capture date (planned -> written -> cleaned), `metadata.jsonl.gz`, item files.
//!   [`archive_org`]: is a collection already an Internet Archive item?
//!   [`upload`]: sending a packed collection to the Internet Archive (IA-S3), resumable and confirmed.
//! - [`verify`]: re-reads every archived file (loose or in a tar) against its size and SHA-256; repairs.
//! - [`engine`]: enumerators, the dispatcher, workers and the supervisor; crash recovery and shutdown.
//! - [`app`]: wiring for `serve`: store + client + engine + HTTP server, and signal handling.
//! - [`oneshot`]: the `download` command (engine in-process until done). [`estimate`]: its `--dry-run`.
//! - [`progress`]: progress bars on a terminal, plain lines elsewhere; pure rendering helpers.
//! - [`status`]: the status report shared by `GET /status` and the `status` command.
//! - [`commands`]: per-subcommand glue and exit codes. [`cli`]: the clap command line. [`telemetry`]: tracing setup.

pub mod api;
pub mod app;
pub mod archive;
pub mod archive_files;
pub mod archive_org;
pub mod bucket;
pub mod checksum;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod config_errors;
pub mod engine;
pub mod estimate;
pub mod exif;
pub mod failures;
pub mod mapillary;
pub mod metrics;
pub mod model;
pub mod oneshot;
pub mod package;
pub mod progress;
pub mod secret;
pub mod selection;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod units;
pub mod upload;
pub mod verify;
pub mod webp;
