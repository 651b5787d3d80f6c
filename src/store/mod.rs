//! The job store: the only module that speaks SQL, on one of two backends.
//!
//! - **SQLite** ([`sqlite`]): one file under the data dir, one daemon at a
//!   time. One writer connection serialises every write; a pool of
//!   read-only connections serves queries that never write.
//! - **PostgreSQL** ([`postgres`]): a shared database, any number of
//!   daemons; the database's clock stamps leases and times, claims skip
//!   rows other daemons are claiming.
//!
//! **One interface.** [`interface`] declares it once, as one trait per area
//! (jobs, ingest, queue, images, listings, archives, parts, stalls, rebase,
//! cluster, job and collection task leases, health). `SqliteStore` and `PgStore`
//! each implement all of it, so a method missing on either is a compile
//! error, and [`Store`]'s public methods, generated from the same
//! declaration, dispatch with a `match` on the backend chosen when the
//! store opens ([`open`]). Written once at this level and used by both:
//! shared types and policies (the area files: [`jobs`], [`queue`], ...),
//! row mapping (`FromRow` structs, `*_from_fields`), the statements that
//! read the same on both dialects ([`sql`], with `$N` placeholders, which
//! SQLite binds too), method bodies that are the same on both ([`shared`]),
//! the task lease protocol ([`task_lease`]), and shorthands over the
//! interface ([`composed`]).
//!
//! Every method is one small named query or one short transaction, none
//! held across a network call; a completion is one fenced statement and a
//! claim one `UPDATE ... RETURNING`. Times are Unix milliseconds (`i64`)
//! passed in by the caller (on PostgreSQL, the database's unless the store
//! opened on [`PgClock::Caller`]), so tests control the clock.
//!
//! Per-job counts are columns on the job row kept by triggers on `images`
//! (deltas folded later on PostgreSQL; see `migrations/`), so `/status`
//! reads O(jobs) rows however many images exist. One more trigger
//! (`images_share_loose_copy`) gives a completed loose file's checksum to
//! the other done rows at its path: one file, one checksum.

mod cluster;
mod collection_tasks;
mod composed;
mod images;
mod ingest;
mod interface;
mod job_tasks;
mod jobs;
mod listing;
mod open;
mod parts;
mod postgres;
mod queue;
mod rebase;
mod rescue;
mod shared;
mod sql;
mod sqlite;
mod stalls;
mod task_lease;

pub use cluster::{ApiSlot, DaemonInfo, LiveDaemon};
pub use collection_tasks::{CollectionTask, RecordedUpload};
pub use ingest::{MissingImage, PageWrite, PartStep, strip_token};
pub use job_tasks::JobTask;
pub use jobs::{ACTIVE, Submitted};
pub use listing::{ImageFilter, JobTotals, ListedImage, Page, scrub_secrets};
pub use parts::Part;
pub use postgres::PgClock;
pub use queue::{DeferPolicy, RetryPolicy};
pub use rescue::Rescued;
pub use sqlite::{Durability, StoreOptions};
pub use stalls::StallCandidate;
pub use uploads::{
    NewUploadFile, Placed, UploadFile, UploadFileKind, UploadFileState, UploadItem, UploadProgress,
    UploadState, UploadTrack,
};

use crate::model::{Bbox, ImageMeta, OutputFormat, Packaging, Quality};
use crate::selection::{self, Selection, Source};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Errors at the store boundary. Every one is fatal for the operation; the
/// caller decides whether the process goes on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    /// A database error (connection, statement, decoding).
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    /// The schema could not be brought up to date.
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no job with id {0}")]
    /// No job has this id.
    NoSuchJob(i64),
    #[error("the store was opened read-only; this operation writes")]
    /// A write on a store opened read-only (`status` beside a daemon).
    ReadOnly,
    #[error("{0}")]
    /// The database's schema is not this binary's.
    Schema(String),
    #[error("{0}")]
    /// A stored value this binary cannot read, or an input the store refuses.
    Invalid(String),
    /// The job's task lease was taken over (it expired while this process
    /// stalled): its write was refused, and the task must stop.
    #[error("lost the lease on job {0}'s task to another process; stopping it")]
    LostJobTask(i64),
    /// The collection's packing lease was taken over: the packing write was
    /// refused, and packing it must stop here.
    #[error("lost the lease on collection {0}'s packing to another process; stopping it")]
    LostCollectionTask(String),
}

/// What every store method returns: one error type for both backends.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether the database itself was away rather than the call wrong: a
    /// connection refused, cut or not had in time, or a PostgreSQL server
    /// shutting down or starting up. The same call may well succeed later.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Sqlx(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Class 08: connection exception; 57P01-57P03: admin or
                // crash shutdown, cannot connect now; 53300: too many
                // connections (a restarted server filling up again).
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }
}

/// Declares a string-backed enum stored in a TEXT column: `as_str`,
/// `Display`, `FromStr` and snake_case serde, from one list of variants.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order (for schemas and tests).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the column and shown by the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // By hand: the derive cannot read a `rename` that arrives as a
        // macro fragment, and would describe the variants' Rust names.
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl ::utoipa::ToSchema for $name {
            fn name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", stringify!($name), " {:?}"), s))
            }
        }
    };
}

// After `text_enum!`, which it uses.
mod uploads;
// Tars held on the Internet Archive only: part of the upload's interface.
mod ia_only;
pub use ia_only::TarOnIaOnly;

text_enum! {
    /// A job's lifecycle state.
    JobState {
        /// Submitted; the engine has not started it.
        Queued => "queued",
        /// Its parts are being listed (images may download meanwhile).
        Enumerating => "enumerating",
        /// Every part listed; images still downloading.
        Downloading => "downloading",
        /// Held (see its `PauseReason`); nothing is claimed.
        Paused => "paused",
        /// Every image archived or failed for good; item files written.
        Done => "done",
        /// Gave up (a fault no retry fixes).
        Failed => "failed",
        /// Cancelled by the user; its identity is free for a new job.
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// An image row's state.
    ImageState {
        /// Waiting for a worker (due at its `run_at`).
        Pending => "pending",
        /// Leased by a worker.
        InProgress => "in_progress",
        /// Archived.
        Done => "done",
        /// Failed for good (see its `FailReason`).
        Failed => "failed",
    }
}

text_enum! {
    /// Why a job is paused. The engine acts on it (a full disk resumes by
    /// itself once space is back; a rejected token resumes at the next start),
    /// so it is data, never read out of a message.
    PauseReason {
        /// `POST /jobs/{id}/pause`.
        User => "user",
        /// A write hit ENOSPC or the free-space reserve.
        DiskFull => "disk_full",
        /// Mapillary rejected the access token (code 190, HTTP 401).
        TokenRejected => "token_rejected",
    }
}

text_enum! {
    /// Why an image is failed for good.
    FailReason {
        /// Mapillary no longer has the image: nothing to archive, and a retry
        /// would not change that.
        Deleted => "deleted",
        /// Attempts used up, or a fault no retry can fix.
        Error => "error",
    }
}

mod archives;
pub use archives::{PackedFile, Packing, PackingState, StoredCopy, TarWritten};

/// Per-job image counts, kept as counters so `/status` is O(jobs), not O(images).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Images the enumeration found.
    pub discovered: u64,
    /// Images waiting for a worker.
    pub pending: u64,
    /// Images a worker holds a lease on.
    pub in_progress: u64,
    /// Images archived.
    pub done: u64,
    /// Images failed for good.
    pub failed: u64,
    /// Failed because Mapillary deleted them: a subset of `failed`.
    pub deleted: u64,
    /// WebP jobs: images kept as JPEG (a side over 16,383 px); a subset of `done`.
    pub kept_jpeg: u64,
}

/// A job row as the API shows it (never holds a secret: cursors are
/// token-free and never shown).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job's id, in URLs and logs.
    pub id: i64,
    /// What it archives: one source and its filters, normalised.
    pub selection: Selection,
    /// The image size archived.
    pub quality: Quality,
    /// JPEG as served, or WebP.
    pub format: OutputFormat,
    /// Loose files, or tars per capture date.
    pub package: Packaging,
    /// Re-sync by itself this long after finishing; `None`: never.
    pub resync_every: Option<Duration>,
    /// RFC 3339 UTC: when the next re-sync is due (while done).
    pub next_sync_at: Option<String>,
    /// Where the job stands.
    pub state: JobState,
    /// Whether every part is enumerated: a job is done only then.
    pub enumeration_complete: bool,
    /// Its images by state (kept by triggers, or deltas folded on PostgreSQL).
    pub counts: Counts,
    /// Bytes archived for the job.
    pub bytes_done: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When the row last changed (RFC 3339).
    pub updated_at: String,
    /// Why the job is paused or stalled, if it is.
    pub last_error: Option<String>,
    /// Set while `state` is `paused`.
    pub pause_reason: Option<PauseReason>,
    /// RFC 3339 UTC: when the job last moved forward (an image finished, a
    /// page was stored, or it was started or resumed).
    pub progress_at: Option<String>,
    /// RFC 3339 UTC: set while the job has work but has made no progress for
    /// longer than `jobs.stall_after_secs`; `last_error` then says why.
    pub stalled_since: Option<String>,
    /// Something to know that is not an error (say, a bbox tile still full
    /// at the smallest size).
    pub note: Option<String>,
    /// The `limit` of its listing pages, when a query timeout lowered it.
    pub page_size: Option<u32>,
    /// Its upload to the Internet Archive, when it asked for one. Not a
    /// column: [`Store::with_uploads`] fills it for the answers that show it.
    pub upload: Option<UploadProgress>,
}

impl Job {
    /// The posted username, for a username job.
    pub fn username(&self) -> Option<&str> {
        match &self.selection.source {
            Source::Username(name) => Some(name),
            _ => None,
        }
    }
}

/// The job's JSON: its whole selection spelt out field by field (every key
/// present, `null` when unused), so clients see one stable shape. Its
/// schema is the API description's `Job`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Job)]
struct JobView<'a> {
    id: i64,
    /// `username`, `organization`, `sequences` or `images`.
    #[schema(value_type = String)]
    source_kind: &'static str,
    #[schema(value_type = Option<String>)]
    username: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    organization_id: Option<&'a str>,
    #[schema(value_type = Option<Vec<String>>)]
    sequence_ids: Option<&'a [String]>,
    #[schema(value_type = Option<Vec<String>>)]
    image_ids: Option<&'a [String]>,
    /// `[west, south, east, north]` in degrees.
    #[schema(value_type = Option<Vec<f64>>)]
    bbox: Option<Bbox>,
    /// RFC 3339 UTC.
    start_captured_at: Option<String>,
    end_captured_at: Option<String>,
    #[schema(value_type = crate::selection::Pano)]
    pano: &'static str,
    quality: Quality,
    format: OutputFormat,
    package: Packaging,
    /// `90m`, `6h`, `7d`...
    resync_every: Option<String>,
    #[schema(value_type = Option<String>)]
    next_sync_at: Option<&'a str>,
    state: JobState,
    enumeration_complete: bool,
    counts: Counts,
    bytes_done: u64,
    #[schema(value_type = String)]
    created_at: &'a str,
    #[schema(value_type = String)]
    updated_at: &'a str,
    #[schema(value_type = Option<String>)]
    last_error: Option<&'a str>,
    pause_reason: Option<PauseReason>,
    #[schema(value_type = Option<String>)]
    note: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    progress_at: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    stalled_since: Option<&'a str>,
    /// The upload to the Internet Archive (`"upload": "ia"`); null without one.
    upload: Option<&'a UploadProgress>,
}

impl utoipa::PartialSchema for Job {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <JobView<'static> as utoipa::PartialSchema>::schema()
    }
}

/// A job's schema is its view's: [`Job`] serialises through [`JobView`].
impl utoipa::ToSchema for Job {
    fn name() -> std::borrow::Cow<'static, str> {
        "Job".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <JobView<'static> as utoipa::ToSchema>::schemas(schemas);
    }
}

impl Serialize for Job {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let source = &self.selection.source;
        let filters = &self.selection.filters;
        JobView {
            id: self.id,
            source_kind: source.kind(),
            username: self.username(),
            organization_id: match source {
                Source::Organization(id) => Some(id),
                _ => None,
            },
            sequence_ids: match source {
                Source::Sequences(ids) => Some(ids),
                _ => None,
            },
            image_ids: match source {
                Source::Images(ids) => Some(ids),
                _ => None,
            },
            bbox: filters.bbox,
            start_captured_at: filters.start_captured_at.map(selection::rfc3339),
            end_captured_at: filters.end_captured_at.map(selection::rfc3339),
            pano: filters.pano.as_str(),
            quality: self.quality,
            format: self.format,
            package: self.package,
            resync_every: self.resync_every.map(selection::format_interval),
            next_sync_at: self.next_sync_at.as_deref(),
            state: self.state,
            enumeration_complete: self.enumeration_complete,
            counts: self.counts,
            bytes_done: self.bytes_done,
            created_at: &self.created_at,
            updated_at: &self.updated_at,
            last_error: self.last_error.as_deref(),
            pause_reason: self.pause_reason,
            note: self.note.as_deref(),
            progress_at: self.progress_at.as_deref(),
            stalled_since: self.stalled_since.as_deref(),
            upload: self.upload.as_ref(),
        }
        .serialize(serializer)
    }
}

/// The right to change one in-flight image row: who claimed it, and which
/// claim of the row this is. Every outcome is fenced by row, owner and epoch,
/// so a worker whose lease expired and was taken over cannot overwrite the
/// new holder's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The claimed row.
    pub row_id: i64,
    /// Who claimed it: the fence of every outcome.
    pub owner: Arc<str>,
    /// The attempt number this claim holds (1-based): drives backoff and
    /// the give-up decision, but a retry resets it, so it cannot fence.
    pub attempt: i64,
    /// The row's claim count at this claim. It only grows (a retry, a
    /// release or a restart never lowers it), so no later claim shares it.
    pub epoch: i64,
}

/// What a worker gets from a claim.
#[derive(Debug, Clone)]
pub struct ClaimedImage {
    /// The claim's fence: owner and epoch.
    pub lease: Lease,
    /// The job the image belongs to.
    pub job_id: i64,
    /// The Mapillary image id.
    pub image_id: String,
    /// The size to download (the job's).
    pub quality: Quality,
    /// JPEG or WebP (the job's).
    pub format: OutputFormat,
    /// The collection folder it goes to (`mapillary-<user>-<quality>`).
    pub collection: String,
    /// The image's metadata, for EXIF and `metadata.jsonl`.
    pub meta: ImageMeta,
    /// Last known CDN URL for the job's quality, if any.
    pub url: Option<String>,
    /// A copy of this image another job already packed into a tar of the
    /// same collection: adopted as is instead of downloaded.
    pub packed_copy: Option<crate::archive::ArchivedFile>,
}

impl ClaimedImage {
    /// The claimed row's id.
    pub fn row_id(&self) -> i64 {
        self.lease.row_id
    }
}

/// What [`Store::complete_image`] did with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Done, at its file.
    Done,
    /// Done, as a member of a tar already written for its path: its loose
    /// file is not needed (and nothing else would remove it).
    JoinedTar,
    /// The caller no longer holds the lease: nothing changed.
    LeaseLost,
}

/// What [`Store::fail`] did with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to pending, due again at `run_at` (Unix ms).
    Retrying {
        /// When the row is due again (Unix ms).
        run_at: i64,
    },
    /// Attempts are used up: the row is `failed` with its last error.
    FailedForGood,
    /// The caller no longer holds the lease (expired and reclaimed, or reset):
    /// nothing changed.
    LeaseLost,
}

/// One archived image, for writing `metadata.jsonl` page by page.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedImage {
    /// Pass the last one's `row_id` as `after` to fetch a job's next page.
    pub row_id: i64,
    /// The stored metadata (no URLs).
    pub meta: ImageMeta,
    /// The loose file, or the tar member's path.
    pub path: String,
    /// The archived file's size and SHA-256 (`None` before checksums existed).
    pub bytes: Option<u64>,
    /// The file's SHA-256 (hex), when known.
    pub sha256: Option<String>,
    /// Where it stands in its collection's order: pass the last one's to
    /// fetch a collection's next page.
    pub position: CollectionPosition,
}

/// A place in a collection's `metadata.jsonl` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionPosition {
    /// `captured_at`, or `i64::MAX` without one (those go last).
    pub capture_order: i64,
    /// The Mapillary image id, the page's tie-break.
    pub image_id: String,
    /// The row id, the last tie-break.
    pub row_id: i64,
}

/// A failed image and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedImage {
    /// The image row.
    pub row_id: i64,
    /// The Mapillary image id.
    pub image_id: String,
    /// Attempts used.
    pub attempts: i64,
    /// The last error, as the worker recorded it.
    pub last_error: Option<String>,
    /// Why it failed for good.
    pub fail_reason: Option<FailReason>,
}

/// Everything stored about one image row; for tests and debugging.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The image row.
    pub row_id: i64,
    /// The job it belongs to.
    pub job_id: i64,
    /// The Mapillary image id.
    pub image_id: String,
    /// Its metadata as enumerated.
    pub meta: ImageMeta,
    /// Its CDN URL (token-free, may have expired).
    pub url: Option<String>,
    /// Where it stands.
    pub state: ImageState,
    /// Attempts used (a release gives one back).
    pub attempts: i64,
    /// When it is due (ms).
    pub run_at: i64,
    /// Who holds its lease, while in progress.
    pub lease_owner: Option<String>,
    /// When that lease expires (ms).
    pub lease_until: Option<i64>,
    /// The archived file's size.
    pub bytes: Option<i64>,
    /// The archived file (or tar member) path.
    pub path: Option<String>,
    /// The last error recorded.
    pub last_error: Option<String>,
    /// Why it failed for good, if it did.
    pub fail_reason: Option<FailReason>,
    /// How often it was deferred (backoff doubles each time).
    pub deferrals: i64,
    /// Capture time in ms, if Mapillary gave one.
    pub captured_at: Option<i64>,
    /// Unix ms of the last claim, completion or failure.
    pub updated_at: i64,
    /// The archived file's SHA-256 (hex).
    pub sha256: Option<String>,
    /// Whether the JPEG was kept as served (no WebP re-encode).
    pub kept_jpeg: bool,
    /// The packing whose tar holds (or will hold) its file.
    pub packing_id: Option<i64>,
}

/// The job store. Cheap to share behind an `Arc`; every method takes `&self`.
///
/// One interface, two implementations: the backend is chosen once, when the
/// store opens ([`Store::open`] or [`Store::open_postgres`]), and every
/// method of the interface (see [`interface`]) is the same call on either.
/// Callers never know which; `tests/store.rs` runs one suite against both.
pub struct Store {
    backend: Backend,
}

/// The database a [`Store`] is on.
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The two queue backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One file under the data dir: one daemon at a time (the lock file).
    Sqlite,
    /// A shared database: any number of daemons, on any machines.
    Postgres,
}

/// Renders stored Unix milliseconds as the API's RFC 3339 UTC string.
fn rfc3339_from_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses a stored metadata JSON column; a row we wrote ourselves that no
/// longer parses means the database was edited or corrupted.
fn parse_meta(row_id: i64, json: &str) -> StoreResult<ImageMeta> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::Invalid(format!("image row {row_id} has unreadable metadata: {e}"))
    })
}

/// How a row mapper reports a column it cannot read: `what` of the row
/// `kind id` (`job 7`, `upload file 3`), as [`StoreError::Invalid`] (a row
/// we wrote ourselves that no longer reads was edited or corrupted).
fn corrupt_row(kind: &'static str, id: i64) -> impl Fn(String) -> StoreError + Copy {
    move |what| StoreError::Invalid(format!("{kind} {id}: {what}"))
}

/// An optional text column parsed into its type (`None` stays `None`).
fn parse_optional<T: std::str::FromStr<Err = String>>(
    text: Option<String>,
) -> Result<Option<T>, String> {
    text.map(|text| text.parse()).transpose()
}

/// A duration as the store's milliseconds, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
