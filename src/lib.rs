//! mapillary-downloader: a resumable, crash-safe archiver for Mapillary imagery.
//!
//! Module map:
//! - [`model`]: image metadata, quality, bbox and the id rules that guard paths.
//! - [`config`]: layered, typed settings (defaults file, config file, env, flags); secrets redacted.
//! - [`store`]: the SQLite job store; every SQL statement lives here.
//! - [`mapillary`]: the Graph API and CDN client, its error classification and the shared rate limiter.
//! - [`exif`]: JPEG bytes + metadata -> tagged JPEG bytes (EXIF, GPS, XMP GPano).
//! - [`api`]: the axum HTTP API: job commands, `/status`, `/healthz`, `/metrics`, bearer auth.
//! - [`stats`]: throughput over the last minute and the ETA derived from it.
//! - [`secret`]: a string type whose Debug and Display print `[redacted]`.
//! - [`units`]: human-readable sizes, rates and durations.

pub mod api;
pub mod config;
pub mod exif;
pub mod mapillary;
pub mod model;
pub mod secret;
pub mod stats;
pub mod store;
pub mod units;
