//! mapillary-downloader: a resumable, crash-safe archiver for Mapillary imagery.
//!
//! A job queue with one durable source of truth (a SQLite file, or a PostgreSQL database several daemons
//! share): enumerators fill it, workers download, tag and store each image, and a supervisor packs and
//! finishes jobs. Everything else can die at any instant and be rebuilt from the store.
//!
//! The public face, for a program that embeds the daemon: [`Settings`] (load them with
//! [`Settings::load`]), [`Application`] (the `serve` daemon: HTTP API + engine, [`Application::spawn`]
//! runs it on a task), [`Store`] and its job model ([`JobSpec`], [`Job`], [`JobState`]), [`Archive`]
//! (where images go, disk or bucket) and [`Engine`] / [`EngineContext`] for the engine alone.
//!
//! Module map:
//! - [`model`]: image metadata, quality, bbox, output format, collection names and the id rules that
//!   guard paths. [`selection`]: what a job archives: one source and its filters, normalised.
//! - [`config`]: layered, typed settings (defaults file, config file, env, flags), its errors that never
//!   echo a value ([`config::errors`]). [`secret`]: a string whose Debug and Display print `[redacted]`.
//! - [`store`]: the job store, one interface on two backends (SQLite, PostgreSQL); every SQL statement.
//! - [`mapillary`]: the Graph API and CDN client, its error classification and the shared rate limiter.
//! - [`exif`]: JPEG bytes + metadata -> tagged JPEG bytes (EXIF, GPS, XMP GPano).
//! - [`archive`]: the one [`Archive`] (local disk or S3-compatible bucket): layout, durable writes,
//!   adoption, create-only publishing, quarantine; [`archive::bucket`], [`archive::checksum`],
//!   [`archive::webp`] (JPEG -> tagged WebP), [`archive::archive_org`] (already an Internet Archive item?).
//! - [`buffers`]: image-sized buffers reused from one image to the next (no allocation per image).
//! - [`package`]: tars per capture date (planned -> written -> cleaned), `metadata.jsonl.gz`, item files.
//! - [`upload`]: a packed collection sent to the Internet Archive (IA-S3), resumable and confirmed.
//! - [`verify`]: re-reads every archived file (loose or in a tar) against its size and SHA-256; repairs.
//! - [`engine`]: enumerators, the dispatcher, workers and the supervisor; crash recovery and shutdown.
//! - [`api`]: the axum HTTP API: job commands, `/status`, `/healthz`, `/metrics`, bearer auth, the page.
//! - [`app`]: wiring for `serve`: store + client + archive + engine + HTTP server, and signal handling.
//! - [`cli`]: the clap command line and each subcommand ([`cli::commands`], [`cli::oneshot`] for
//!   `download`, its [`cli::progress`] and `--dry-run` [`cli::estimate`], [`cli::failures`]).
//! - [`status`]: the status report shared by `GET /status` and the `status` command.
//! - [`stats`]: throughput over the last minute and hour. [`metrics`]: counters and histograms for
//!   `/metrics`. [`telemetry`]: tracing setup. [`units`]: human-readable numbers. [`clock`]: Unix-ms time.

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod archive;
pub mod buffers;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod exif;
pub mod mapillary;
pub mod metrics;
pub mod model;
pub mod package;
pub mod secret;
pub mod selection;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod units;
pub mod upload;
pub mod verify;

pub use app::{Application, RunningApplication};
pub use archive::Archive;
pub use config::Settings;
pub use engine::{Engine, EngineContext};
pub use selection::JobSpec;
pub use store::{Job, JobState, Store, StoreError};
