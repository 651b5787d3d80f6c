//! The command line: what each subcommand takes (clap, parsing only, in
//! this file), and the subcommands themselves below it: [`commands`] maps
//! each to the library and to exit codes, [`oneshot`] runs `download`
//! (with [`progress`] and the `--dry-run` [`estimate`]), [`failures`] lists
//! failed images.

pub mod commands;
pub mod estimate;
pub mod failures;
pub mod oneshot;
pub mod progress;

use crate::model::{Bbox, OutputFormat, Quality};
use crate::selection::{Pano, parse_date};
use crate::store::FailReason;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The whole command line (its help text is the `about` below).
#[derive(Debug, Parser)]
#[command(
    name = "mapillary-downloader",
    version,
    about = "Archive Mapillary imagery: resumable, crash-safe, with correct EXIF",
    long_about = "Archive all of a Mapillary user's images, at a chosen quality, optionally inside a bounding box, \
                  each JPEG tagged with its GPS position, heading and capture time.\n\n\
                  Environment: MAPILLARY_TOKEN (required access token), MAPILLARY_API_URL (API base), \
                  MLD__<SECTION>__<KEY> (any setting of config/default.toml)."
)]
pub struct Cli {
    /// A TOML file overriding config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each variant's text is its `--help` summary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP API, enumerators and workers.
    Serve(ServeArgs),
    /// Archive users' images now, in-process, until done (run again to resume).
    Download(DownloadArgs),
    /// Print the jobs and their progress from the database (works beside a running daemon).
    Status(StatusArgs),
    /// Print the images that failed for good and why (every job's, or one job's), from the
    /// database (works beside a running daemon).
    Failures(FailuresArgs),
    /// Check every archived image (loose or in a tar): there, right size and SHA-256, decodable.
    /// Exit 0 when all are ok, 1 when a problem is found, 2 for a usage or config error.
    Verify(VerifyArgs),
    /// Upload packed collections to the Internet Archive (every job with an unfinished upload, or
    /// --job ID); exit 0 once every file is confirmed, 1 when paused or failed, 130 interrupted.
    Upload(UploadArgs),
    /// Exit 0 when the daemon's /healthz answers 200 (for Docker's HEALTHCHECK; needs no curl).
    Healthcheck(HealthcheckArgs),
}

/// Where the database and the archive are: the flags `serve`, `download`,
/// `verify`, `status` and `failures` share (the last two, which only read,
/// word them as [`read_only_storage`] says).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where the database and archive live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Archive into an S3-compatible bucket instead of <data-dir>/archive: s3://bucket/prefix
    /// (endpoint and credentials from the AWS_* variables). Sets storage.archive_url.
    #[arg(long, value_name = "URL")]
    pub archive_url: Option<String>,
    /// Share a PostgreSQL job queue instead of <data-dir>/mapillary.db: postgres://user:pass@host/db
    /// (prefer MLD__STORAGE__DATABASE_URL: a command line is visible to every user of the machine).
    /// Sets storage.database_url.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// [`StorageArgs`] as the commands that only read the database word them.
fn read_only_storage(arg: clap::Arg) -> clap::Arg {
    match arg.get_id().as_str() {
        "data_dir" => arg.help("Where the database lives"),
        "archive_url" => arg.help(
            "The archive's bucket, as serve and download were given it (checked, not needed): \
             s3://bucket/prefix (endpoint and credentials from the AWS_* variables). \
             Sets storage.archive_url",
        ),
        _ => arg,
    }
}

/// `healthcheck`'s flags.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// URL to probe; defaults to /healthz on the configured `api.listen` address.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// `download`'s arguments and flags.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Mapillary usernames to archive (each its own job). Optional when
    /// --organization, --sequence or --image is given.
    #[arg(value_name = "USERNAME")]
    pub usernames: Vec<String>,
    /// An organization to archive (digits; repeatable, each its own job).
    #[arg(long = "organization", value_name = "ID")]
    pub organizations: Vec<String>,
    /// A sequence to archive (repeatable; all of them make one job).
    #[arg(long = "sequence", value_name = "ID")]
    pub sequences: Vec<String>,
    /// An image to archive (repeatable; all of them make one job).
    #[arg(long = "image", value_name = "ID")]
    pub images: Vec<String>,
    /// Image size: original, 2048, 1024 or 256.
    #[arg(long, default_value = "original", value_parser = parse_quality)]
    pub quality: Quality,
    /// Only images inside this box: west,south,east,north in degrees.
    #[arg(long, value_name = "W,S,E,N", value_parser = parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<Bbox>,
    /// Only images captured at or after this date (YYYY-MM-DD, midnight UTC, or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
    pub since: Option<i64>,
    /// Only images captured before this date (YYYY-MM-DD, midnight UTC, or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_date_arg)]
    pub until: Option<i64>,
    /// Only panoramas (`only`) or no panoramas (`exclude`).
    #[arg(long, value_name = "only|exclude", value_parser = parse_pano)]
    pub pano: Option<Pano>,
    /// Where the database, the archive and the queue are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Concurrent downloads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Enumerate only: print the image count and an estimated total size, download nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// File format: jpeg (the CDN's JPEG, tagged) or webp (re-encoded at output.webp_quality,
    /// same tags, in a mapillary-<user>-<quality>-webp collection).
    #[arg(long, default_value = "jpeg", value_parser = parse_format)]
    pub format: OutputFormat,
    /// Package for the Internet Archive when done: one tar per capture date,
    /// metadata.jsonl.gz, __ia_thumb__.jpg and .meta/ item tags.
    #[arg(long)]
    pub tar: bool,
    /// Upload each packed collection to the Internet Archive (implies --tar); exit 0 only once
    /// every file is confirmed on archive.org. Keys: IA_ACCESS_KEY / IA_SECRET_KEY (or _FILE),
    /// else the `ia` tool's ia.ini.
    #[arg(long)]
    pub upload_ia: bool,
}

/// `upload`: send packed collections to the Internet Archive.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Where the database and archive live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Share a PostgreSQL job queue instead of <data-dir>/mapillary.db: postgres://user:pass@host/db
    /// (prefer MLD__STORAGE__DATABASE_URL: a command line is visible to every user of the machine).
    /// Sets storage.database_url.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Only this job's collections (a packed job; given an upload if it asked for none).
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub job: Option<i64>,
    /// Print each item's files, sizes and headers (the secret key redacted); send and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `verify`'s flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Where the database, the archive and the queue are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Only this job's images.
    #[arg(long, value_name = "ID")]
    pub job: Option<i64>,
    /// Queue missing and corrupt images again (reopening their jobs) so the daemon
    /// or the next `download` fetches them. Works while a daemon runs.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `status`'s flags.
#[derive(Debug, Args)]
#[command(mut_args(read_only_storage))]
pub struct StatusArgs {
    /// Where the database, the archive and the queue are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Print the same JSON as `GET /status`.
    #[arg(long)]
    pub json: bool,
}

/// `failures`' flags.
#[derive(Debug, Args)]
#[command(mut_args(read_only_storage))]
pub struct FailuresArgs {
    /// Only this job's failed images (default: every job's).
    #[arg(value_name = "JOB", value_parser = clap::value_parser!(i64).range(1..))]
    pub job: Option<i64>,
    /// Only images failed for this reason: deleted (gone from Mapillary) or error.
    #[arg(long, value_name = "deleted|error", value_parser = parse_reason)]
    pub reason: Option<FailReason>,
    /// Where the database, the archive and the queue are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Print a JSON array of the objects `GET /jobs/{id}/images` answers.
    #[arg(long)]
    pub json: bool,
}

/// `serve`'s flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the database, the archive and the queue are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address for the HTTP API, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Concurrent downloads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
}

/// Parses `--quality` for clap.
pub fn parse_quality(s: &str) -> Result<Quality, String> {
    s.parse()
}

/// Parses `--bbox W,S,E,N` for clap.
pub fn parse_bbox(s: &str) -> Result<Bbox, String> {
    s.parse()
}

/// Parses `--since` / `--until` for clap (Unix ms).
pub fn parse_date_arg(s: &str) -> Result<i64, String> {
    parse_date(s)
}

/// Parses `--format` for clap.
pub fn parse_format(s: &str) -> Result<OutputFormat, String> {
    s.parse()
}

/// Parses `--reason` for clap.
pub fn parse_reason(s: &str) -> Result<FailReason, String> {
    s.parse()
}

/// Parses `--pano` for clap.
pub fn parse_pano(s: &str) -> Result<Pano, String> {
    s.parse()
}
