//! The test kit of mapillary-downloader: what its integration tests, benches
//! and end-to-end runs share.
//!
//! - [`fake`]: a fake Mapillary Graph API + CDN with scriptable faults and a
//!   request log (`src/bin/fake_mapillary.rs` runs it standalone);
//! - [`fake_ia`]: a fake Internet Archive (IA-S3 uploads, `check_limit`,
//!   `/metadata`) with throttling, refusals, a kill switch and a bandwidth cap;
//! - [`jpeg`]: JPEG fixtures built in code, and segment surgery;
//! - [`process`]: the daemon binary as a child process, and `/proc` readings;
//! - [`env`]: the daemon's environment against the fake (one list);
//! - [`api_client`]: the daemon's HTTP API as tests drive it;
//! - [`server`]: an HTTP server on a task of its own, stopped gracefully;
//! - [`archive_check`]: an archive on disk against the fake's truth;
//! - [`latency`]: request-latency sampling for the benches;
//! - [`tar_check`]: tars read with GNU tar (an independent reader) and gzip;
//! - [`tmpfs`]: a small filesystem of its own for full-disk tests;
//! - [`browser`]: chromedriver and headless Chromium for the operator page;
//! - [`s3`]: moto's S3 server with one bucket, and an independent reader of it.
//! - [`postgres`]: a throwaway PostgreSQL cluster, a fresh database per test.
//!
//! The kit does not depend on `mapillary-downloader`, whose dev-dependency it
//! is: a dependency back would give the daemon's tests a second copy of its
//! types. The fake speaks JSON and has its own small types
//! ([`fake::FakeImage`], [`fake::Quality`]) that convert to the daemon's with
//! `to()`; what needs the daemon's own types (an in-process daemon) lives in
//! the root package's `tests/common/`.

pub mod api_client;
pub mod archive_check;
pub mod browser;
pub mod env;
pub mod fake;
pub mod fake_ia;
pub mod jpeg;
pub mod latency;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod server;
pub mod sigv4;
pub mod tar_check;
pub mod tmpfs;
