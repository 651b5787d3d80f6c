//! The store's interface, declared once: one trait per area, which both
//! backends ([`SqliteStore`] and [`PgStore`]) implement in full, and
//! [`Store`]'s public methods, which send each call to the backend chosen
//! when the store opened.
//!
//! [`store_interface!`] generates both from one list, so a method's doc
//! comment is written once (it shows on [`Store`]), a method missing on
//! either backend is a compile error, and dispatch is a `match` on
//! [`Backend`]: static, no boxing, no `dyn` on the claim path. To add a
//! method: declare it here, then implement it in `sqlite/` and `postgres/`
//! (the compiler lists what is missing).

#[allow(unused_imports)] // named by doc links only
use super::StoreError;
use super::{
    ApiSlot, ArchivedImage, Backend, ClaimedImage, CollectionPosition, CollectionTask, Completion,
    DaemonInfo, DeferPolicy, FailOutcome, FailReason, FailedImage, ImageFilter, ImageRecord, Job,
    JobState, JobTask, JobTotals, Lease, ListedImage, LiveDaemon, PackedFile, Packing, Page,
    PageWrite, Part, PauseReason, RecordedUpload, Rescued, RetryPolicy, StallCandidate, Store,
    StoreResult, StoredCopy, Submitted, TarWritten,
};
use super::{
    NewUploadFile, Placed, TarOnIaOnly, UploadFile, UploadFileState, UploadItem, UploadProgress,
    UploadState, UploadTrack,
};
use crate::archive::ArchivedFile;
use crate::model::Storable;
use crate::selection::JobSpec;
use crate::stats::MinuteThroughput;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Declares the interface: for each `pub trait`, the trait itself (every
/// method as `fn m(&self, ..) -> impl Future<Output = StoreResult<T>> +
/// Send`, which the backends implement with `async fn`), and for every
/// method a public `Store::m` with the same doc comment that dispatches on
/// the backend.
macro_rules! store_interface {
    ($(
        $(#[$trait_meta:meta])*
        pub trait $trait:ident {
            $(
                $(#[$meta:meta])*
                fn $method:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    )*) => {
        $(
            $(#[$trait_meta])*
            pub trait $trait {
                $(
                    $(#[$meta])*
                    fn $method(&self $(, $arg: $ty)*)
                        -> impl ::std::future::Future<Output = StoreResult<$ret>> + Send;
                )*
            }
        )*

        impl Store {
            $($(
                $(#[$meta])*
                pub async fn $method(&self $(, $arg: $ty)*) -> StoreResult<$ret> {
                    match &self.backend {
                        Backend::Sqlite(db) => $trait::$method(db $(, $arg)*).await,
                        Backend::Postgres(db) => $trait::$method(db $(, $arg)*).await,
                    }
                }
            )*)*
        }
    };
}

store_interface! {
    /// The whole store: whether it answers, and housekeeping.
    pub trait Health {
        /// Whether the database answers; for `/healthz`.
        fn ping(&self) -> ();
        /// Moves PostgreSQL's counter deltas onto the job rows (see
        /// `migrations/postgres/0001_init.sql`); returns how many it moved.
        /// Counts read the same before and after. SQLite keeps its counters on
        /// the job rows already: nothing to do.
        fn fold_counts(&self) -> u64;
    }

    /// Job rows: submit, read, and every state change the engine and API make. Each change is
    /// one conditional write, so of two racing callers one wins and the other sees `None`.
    pub trait Jobs {
        /// Creates a job, or returns or re-syncs the newest non-cancelled job
        /// with the same identity ([`JobSpec::key`]), in one IMMEDIATE
        /// transaction on the writer so concurrent submissions of one selection
        /// never make two jobs. A cancelled job does not count: it may be posted
        /// again. A new re-sync interval is applied to an existing job.
        fn submit_job(&self, spec: &JobSpec, now_ms: i64) -> Submitted;
        /// Re-syncs every done job whose `next_sync_at` has come: its enumeration
        /// starts again from its first parts; only new images get added.
        /// Returns the ids.
        fn start_due_resyncs(&self, now_ms: i64) -> Vec<i64>;
        /// One job by id; `None` if there is none.
        fn find_job(&self, id: i64) -> Option<Job>;
        /// Jobs in any of `states`, oldest first.
        fn jobs_in_states(&self, states: &[JobState]) -> Vec<Job>;
        /// Sets or clears `last_error` without touching the state.
        fn set_job_error(&self, id: i64, last_error: Option<&str>, now_ms: i64) -> ();
        /// Sets or clears the job's note (something to know that is not an error).
        fn set_job_note(&self, id: i64, note: Option<&str>, now_ms: i64) -> ();
        /// Ends a job that has not started (`queued`) as done without listing
        /// anything, with `note` saying why (its collection is already on the
        /// Internet Archive). `None` if it was no longer queued.
        fn skip_queued_job(&self, id: i64, note: &str, now_ms: i64) -> Option<Job>;
        /// Lowers the job's listing page size for the rest of the job.
        fn set_page_size(&self, id: i64, page_size: u32) -> ();
        /// Moves job `id` to `to` if it is in one of `from`; `None` if it is not
        /// (or does not exist). Keeps `last_error`. Not for pausing: a pause
        /// needs its reason ([`Store::pause_job`]).
        fn transition_job(
            &self,
            id: i64,
            from: &[JobState],
            to: JobState,
            now_ms: i64,
        ) -> Option<Job>;
        /// Pauses job `id` if it is in one of `from`, recording why (`reason`)
        /// and, when given, the message users read (`last_error`; `None` keeps
        /// the current one). `None` if it did not apply.
        fn pause_job(
            &self,
            id: i64,
            from: &[JobState],
            reason: PauseReason,
            message: Option<&str>,
            now_ms: i64,
        ) -> Option<Job>;
        /// [`Store::finish_job_if_drained`]; with `clear_error`, the job's
        /// `last_error` (a finishing failure that is now over) goes in the same
        /// write, so no reader sees the job done with a stale error. With
        /// `task`, refused ([`StoreError::LostJobTask`]) unless it still holds
        /// the job: a finisher that lost its lease must not end the job.
        fn finish_job_clearing(
            &self,
            id: i64,
            now_ms: i64,
            clear_error: bool,
            task: Option<&JobTask>,
        ) -> Option<Job>;
        /// Puts job `id` back to work if it is in one of `from`: `enumerating`
        /// while its listing is unfinished, else `downloading`; clears
        /// `last_error` and the pause reason (the user has acted on them) and
        /// restarts the no-progress clock. `None` if it did not apply.
        fn reactivate_job(&self, id: i64, from: &[JobState], now_ms: i64) -> Option<Job>;
        /// Ids of the jobs paused for `reason`, oldest first.
        fn jobs_paused_for(&self, reason: PauseReason) -> Vec<i64>;
    }

    /// Writing enumeration pages (image rows plus where the job's part stands, in one
    /// transaction) and refreshed URLs.
    pub trait Ingest {
        /// Stores one page of the job's part `part` (its `seq`) and what becomes
        /// of that part, atomically: after a crash either both are there or
        /// neither is, so a resume re-reads the page and the conflict clause
        /// drops the repeats. `missing` images are recorded failed for good. A
        /// page for a part already done (or gone, after a re-sync reset the
        /// parts) is refused and changes nothing. When no part is left open,
        /// enumeration is complete. Returns how many images were new (repeated
        /// ids are ignored).
        fn store_page(&self, page: PageWrite<'_, impl Storable>) -> u64;
        /// Stores refreshed CDN URLs (`None` clears one) in one transaction.
        /// Returns how many rows exist and were updated.
        fn update_urls(&self, urls: &[(i64, Option<String>)]) -> u64;
    }

    /// The work queue: claim with a lease, then complete, fail or release, each fenced by
    /// (lease owner, lease epoch).
    pub trait Queue {
        /// Claims up to `limit` due images for `owner`, leased until
        /// `now_ms + lease`, taking pending rows from the first active job whose
        /// id is greater than `after_job` (wrapping around): the dispatcher passes
        /// the job it served last, so jobs take turns. A reclaimed expired lease
        /// counts as a new attempt. Only images of `enumerating` or `downloading`
        /// jobs are claimed.
        fn claim(
            &self,
            owner: &Arc<str>,
            limit: u32,
            lease: Duration,
            now_ms: i64,
            after_job: i64,
        ) -> Vec<ClaimedImage>;
        /// [`Store::complete`], saying whether the row joined a tar. A row that
        /// joins a written or cleaned packing takes the member's checksum and
        /// size (the tar is what it now points at), and its loose file is the
        /// caller's to remove: packing may have cleaned that path already, and
        /// nothing else would ever remove a file written after it.
        fn complete_image(&self, lease: &Lease, file: &ArchivedFile, now_ms: i64) -> Completion;
        /// Records a failed attempt: back to pending at `policy.retry_at_ms`, or
        /// failed for good (reason `error`) once `policy.max_attempts` attempts
        /// are burnt.
        fn fail(&self, lease: &Lease, error: &str, policy: RetryPolicy, now_ms: i64) -> FailOutcome;
        /// Fails a claimed image for good now, whatever attempts remain. A
        /// deleted image gets its claim's attempt back: nothing was tried that
        /// could have worked. `false` means the lease was lost.
        fn fail_for_good(
            &self,
            lease: &Lease,
            reason: FailReason,
            error: &str,
            now_ms: i64,
        ) -> bool;
        /// Marks pending (unclaimed) images deleted on Mapillary: failed for
        /// good with reason `deleted`. Rows no longer pending are left alone.
        /// Returns how many changed.
        fn mark_pending_deleted(&self, row_ids: &[i64], error: &str, now_ms: i64) -> u64;
        /// Gives a claimed image back without burning its attempt: for rate
        /// limits, expired URLs, paused jobs, a full disk and shutdown. It is due
        /// again `delay` after `now_ms` (after the database's now on a shared
        /// PostgreSQL queue, whatever this daemon's clock says). `note`, when
        /// given, replaces `last_error`. `false` means the lease was lost.
        fn release(&self, lease: &Lease, delay: Duration, note: Option<&str>, now_ms: i64) -> bool;
        /// [`Store::release`] for a fault that is not the image's but keeps
        /// recurring (the API refusing its URL refresh): no attempt is burnt, but
        /// each deferral doubles the image's next delay, so the same image never
        /// comes back in a tight loop. Returns when it is due again (Unix ms), or
        /// `None` if the lease was lost.
        fn defer(&self, lease: &Lease, note: &str, policy: DeferPolicy, now_ms: i64) -> Option<i64>;
        /// Re-queues a job's failed images with fresh attempts, due now. Images
        /// deleted on Mapillary stay failed unless `include_deleted`.
        fn retry_failed(&self, job_id: i64, include_deleted: bool, now_ms: i64) -> u64;
        /// At startup, before any worker runs: every in-flight row goes back to
        /// pending, due now, with its attempt returned (a crash is not the
        /// image's fault), and every job's task lease is dropped. Only for a
        /// queue this process has alone (SQLite).
        fn reset_in_flight(&self, now_ms: i64) -> u64;
        /// At shutdown: the rows `owner` (this process) still holds go back to
        /// pending, due now, with their attempt returned. Unlike
        /// [`Store::reset_in_flight`] it leaves other owners' leases alone: on a
        /// shared queue those are other daemons' live work.
        fn hand_back_leases_of(&self, owner: &str, now_ms: i64) -> u64;
    }

    /// Reading image rows back: archived pages for `metadata.jsonl`, throughput, failures, one row.
    pub trait Images {
        /// One page of a job's archived (`done`) images in `metadata.jsonl` order:
        /// by `captured_at`, images without one last, ties by row id.
        ///
        /// Keyset paging: pass `None` for the first page, then the last returned
        /// `row_id`. Each page is an index seek, so writing a million-line file
        /// costs O(n) in total and holds one page in memory.
        fn finished_images(
            &self,
            job_id: i64,
            after_row_id: Option<i64>,
            limit: u32,
        ) -> Vec<ArchivedImage>;
        /// One page of a collection's archived images in `metadata.jsonl` order
        /// (capture time, images without one last, then image id), whichever
        /// jobs archived them. Keyset paging: pass `None` first, then the last
        /// returned image's [`ArchivedImage::position`]. An image archived by two
        /// jobs comes twice, next to each other.
        fn collection_images(
            &self,
            collection: &str,
            after: Option<&CollectionPosition>,
            limit: u32,
        ) -> Vec<ArchivedImage>;
        /// The collections a job has written to.
        fn job_collections(&self, job_id: i64) -> Vec<String>;
        /// Images finished (done) at or after `since_ms`, counted per wall-clock
        /// minute, across all jobs, oldest first: the throughput history as the
        /// database knows it, so a `status` command or a restarted daemon shows
        /// the hour that passed. One range scan of the `images_finished` index.
        fn finished_by_minute(&self, since_ms: i64) -> Vec<MinuteThroughput>;
        /// Images finished (done) since `since_ms`, and their bytes, across all
        /// jobs: the `status` command's throughput, readable from any process.
        fn finished_since(&self, since_ms: i64) -> (u64, u64);
        /// Up to `limit` of a job's failed images with their last error, oldest first.
        fn failed_images(&self, job_id: i64, limit: u32) -> Vec<FailedImage>;
        /// The next `limit` due pending images of a job, in claim order, with
        /// their stored URL: `(row_id, image_id, url)`. The dispatcher refreshes
        /// the stale ones together with the images it claimed, so one
        /// `GET /?ids=` serves up to 50 images even when claims come one by one.
        fn upcoming_urls(
            &self,
            job_id: i64,
            now_ms: i64,
            limit: u32,
        ) -> Vec<(i64, String, Option<String>)>;
        /// Everything stored about one image of a job.
        fn image_by_id(&self, job_id: i64, image_id: &str) -> Option<ImageRecord>;
    }

    /// Lists that page (see `store/listing.rs`): keyset `after` the last key
    /// seen, never OFFSET, `limit + 1` rows read so a page knows whether
    /// more follow.
    pub trait Listings {
        /// One page of jobs in id order, after job `after` (the last id seen).
        fn jobs_page(&self, after: Option<i64>, limit: u32) -> Page<Job>;
        /// The `limit` jobs most recently changed or advanced (the later of
        /// `updated_at` and `progress_at`), returned in id order so a page that
        /// polls them keeps its rows in place.
        fn recent_jobs(&self, limit: u32) -> Vec<Job>;
        /// Counts over every job, summed by the database.
        fn job_totals(&self) -> JobTotals;
        /// One page of job `job_id`'s images that `filter` selects, by image
        /// id, after image `after` (the last id seen). A job that does not
        /// exist has no images: callers that must tell look the job up. A
        /// reason paired with a state other than failed is
        /// [`StoreError::Invalid`].
        fn job_images(
            &self,
            job_id: i64,
            filter: &ImageFilter,
            after: Option<&str>,
            limit: u32,
        ) -> Page<ListedImage>;
    }

    /// Tar packings, adoptable copies, and `verify`'s rows and re-queueing.
    pub trait Archives {
        /// An archived copy of `image_id` in `collection`, made by any job: a
        /// packed one first (with its `packing_id`), else a loose one. The caller
        /// adopts a packed copy as is; a loose one only if its file is there.
        fn archived_copy(&self, collection: &str, image_id: &str) -> Option<ArchivedFile>;
        /// A collection's packings not yet `cleaned`, oldest first: what a crash
        /// interrupted.
        fn unfinished_packings(&self, collection: &str) -> Vec<Packing>;
        /// One packing by id.
        fn packing(&self, id: i64) -> Option<Packing>;
        /// Every packing of a collection, in order of creation.
        fn packings(&self, collection: &str) -> Vec<Packing>;
        /// The first loose path (in path order) of a collection's done images
        /// that no packing holds yet: its date folder is the next to pack.
        fn first_unpacked_path(&self, collection: &str) -> Option<String>;
        /// Tar names a collection's packings already use.
        fn tar_names(&self, collection: &str) -> Vec<String>;
        /// Plans one tar: every done, unpacked image of `task`'s collection whose
        /// loose path lies under `folder` (the date folder, no trailing `/`) joins
        /// a new `planned` packing named `tar_name`, in one transaction. `None`
        /// when there was nothing to pack. Refused once `task` is lost, as are
        /// every packing write below.
        fn plan_packing(
            &self,
            task: &CollectionTask,
            date: &str,
            folder: &str,
            tar_name: &str,
            now_ms: i64,
        ) -> Option<Packing>;
        /// The files of a packing in tar order (by path), a page at a time: pass
        /// the last path returned as `after`.
        fn packed_files(&self, packing_id: i64, after: Option<&str>, limit: u32) -> Vec<PackedFile>;
        /// Sum of a packing's file sizes: the room its tar needs.
        fn packing_size(&self, packing_id: i64) -> u64;
        /// The tar is durable: record its size and hash, give rows without a
        /// checksum the one packing computed, let go of (and re-queue) the rows
        /// whose loose file was missing or did not match, and bring in rows of
        /// other jobs that archived a member path meanwhile. One transaction.
        fn mark_packing_written(
            &self,
            task: &CollectionTask,
            packing: &Packing,
            written: &TarWritten,
            now_ms: i64,
        ) -> ();
        /// Drops a `planned` packing whose tar came out empty (every loose file
        /// it planned was gone or damaged): its rows go back to the queue with
        /// their reasons, and the packing row goes, so the date's next tar takes
        /// the name this one would have had.
        fn abandon_empty_packing(
            &self,
            task: &CollectionTask,
            packing: &Packing,
            written: &TarWritten,
            now_ms: i64,
        ) -> ();
        /// The loose files are gone: the packing is finished.
        fn mark_packing_cleaned(&self, task: &CollectionTask, packing: &Packing) -> ();
        /// Done rows that share row `row_id`'s copy (same collection, image,
        /// path and packing: one loose file or one tar member), with whether
        /// each one's job was cancelled.
        fn copy_sharers(&self, row_id: i64) -> Vec<(i64, bool)>;
        /// Sends done images back to the queue to be archived again (their copy
        /// is missing or corrupt), and reopens their finished jobs so a daemon,
        /// or the next `download`, fetches them. Every row sharing the copy must
        /// go together: one left `done` would hand the damaged copy back to the
        /// others as theirs. `reason` becomes their `last_error`. Returns how
        /// many rows changed.
        fn requeue_images(&self, row_ids: &[i64], reason: &str, now_ms: i64) -> u64;
        /// Stores the checksum `verify` computed for a file archived before
        /// checksums existed. Never overwrites one.
        fn record_checksum(&self, row_id: i64, sha256: &str, bytes: u64) -> ();
        /// Done rows whose file is loose (no packing, or one still `planned`),
        /// of one job or all, by row id: pass the last `row_id` as `after`.
        fn loose_copies(&self, job_id: Option<i64>, after: i64, limit: u32) -> Vec<StoredCopy>;
        /// Whether row `row_id` is still done at the loose file `path` (not yet
        /// in a written tar): what [`Store::loose_copies`] said a moment ago.
        fn is_still_loose(&self, row_id: i64, path: &str) -> bool;
        /// Packings whose tar holds images (of one job, or of any).
        fn written_packings(&self, job_id: Option<i64>) -> Vec<Packing>;
        /// The done rows a packing holds (of one job, or of any).
        fn packing_rows(&self, packing_id: i64, job_id: Option<i64>) -> Vec<StoredCopy>;
        /// How many done rows there are (of one job, or of all): `verify`'s total.
        fn done_rows(&self, job_id: Option<i64>) -> u64;
        /// Whether any tar was ever planned for `collection`: its item files are
        /// then the packed kind (`metadata.jsonl.gz`, thumbnail, `.meta/`).
        fn is_packed_collection(&self, collection: &str) -> bool;
        /// What a packed collection's `.meta/` says about it: distinct images
        /// and the first and last capture times (Unix ms).
        fn collection_summary(&self, collection: &str) -> (u64, Option<i64>, Option<i64>);
    }

    /// A job's enumeration as resumable parts.
    pub trait Parts {
        /// The job's first `limit` parts not done, in order.
        fn open_parts(&self, job_id: i64, limit: u32) -> Vec<Part>;
        /// How many parts the job has, and how many are done.
        fn part_progress(&self, job_id: i64) -> (u64, u64);
    }

    /// No-progress marks on jobs that have work but stopped moving.
    pub trait Stalls {
        /// Active jobs with work left that have made no progress since
        /// `before_ms` and are not marked stalled yet.
        fn stall_candidates(&self, before_ms: i64) -> Vec<StallCandidate>;
        /// The most recent error recorded on one of the job's waiting images:
        /// what held it back. Looks at the newest 1000 due rows only, so the
        /// cost stays flat however many images wait.
        fn latest_image_error(&self, job_id: i64) -> Option<String>;
        /// Marks the job stalled with `message` as its `last_error`, unless it
        /// progressed (or changed state) since the check. Returns whether it did.
        fn mark_stalled(&self, job_id: i64, before_ms: i64, message: &str, now_ms: i64) -> bool;
        /// Unmarks every stalled job that has progressed since it was marked,
        /// clearing the stall message. Returns their ids.
        fn clear_recovered_stalls(&self, now_ms: i64) -> Vec<i64>;
    }

    /// Stored paths moved onto the archive directory as opened.
    pub trait Rebase {
        /// Makes every image path begin with `archive_dir`. Returns how many
        /// rows were rewritten. A no-op (one read) once the root is recorded.
        fn rebase_archive(&self, archive_dir: &Path) -> u64;
        /// The archive root the paths were last rebased onto (by a daemon, or
        /// `download`), if any. Read-only: for `verify`, which maps stored
        /// paths onto its own root in memory instead of rewriting them.
        fn recorded_archive_root(&self) -> Option<String>;
    }

    /// Rescuing a dead daemon's work by its heartbeat (see `store::rescue`).
    /// Nothing to do on SQLite: one engine holds the data dir's lock file and
    /// its start-up reset hands back whatever a crash left.
    pub trait Rescue {
        /// Rescues every daemon but `rescuer` whose last heartbeat is older
        /// than `dead_after`: one transaction each, so a failure part-way
        /// leaves the rest for the next round.
        fn rescue_dead_daemons(
            &self,
            rescuer: &str,
            dead_after: Duration,
            now_ms: i64,
        ) -> Vec<Rescued>;
        /// Rescues `daemon` if its last heartbeat is (still) older than
        /// `dead_after`; `None` if it is not dead, or another rescuer got
        /// there first. The fenced step [`Store::rescue_dead_daemons`] takes
        /// for each daemon it found silent.
        fn rescue_daemon(&self, daemon: &str, dead_after: Duration, now_ms: i64) -> Option<Rescued>;
    }

    /// What daemons sharing one queue know of each other: heartbeats and the shared API budget.
    pub trait Cluster {
        /// Records that `daemon` is alive (its row is made at the first beat).
        fn heartbeat(&self, daemon: &DaemonInfo, now_ms: i64) -> ();
        /// Daemons whose last heartbeat is at most `within` old, by id. (A
        /// crashed daemon's row stays, silent, and is no longer listed.)
        fn live_daemons(&self, within: Duration, now_ms: i64) -> Vec<LiveDaemon>;
        /// A daemon stopping: its row goes (a crashed one's ages out).
        fn forget_daemon(&self, id: &str) -> ();
        /// Takes the next API call's slot of the cluster's budget: calls evenly
        /// spaced `interval` apart, up to `tolerance` ahead of the schedule (the
        /// burst). SQLite: the daemon's own limiter is the budget.
        fn take_api_slot(&self, interval: Duration, tolerance: Duration) -> ApiSlot;
        /// Holds every daemon's API calls for `pause` (a rate limit one of them
        /// was told about). SQLite: the daemon's own limiter holds it.
        fn hold_api_calls(&self, pause: Duration) -> ();
    }

    /// A job's task lease (its enumeration or finishing): one holder in the whole cluster.
    pub trait JobTasks {
        /// Takes the job's task lease for `owner` until `now_ms + ttl`: when
        /// nobody holds it, or its holder's lease expired. `None`: another
        /// owner holds it.
        fn take_job_task(
            &self,
            job_id: i64,
            owner: &Arc<str>,
            ttl: Duration,
            now_ms: i64,
        ) -> Option<JobTask>;
        /// Extends a held lease to `now_ms + ttl`; `false` if it was lost.
        fn renew_job_task(&self, task: &JobTask, ttl: Duration, now_ms: i64) -> bool;
        /// Gives a held lease up (the task ended); a lost one is left alone.
        fn release_job_task(&self, task: &JobTask) -> ();
    }

    /// A collection's packing lease, and the ledger of the multipart uploads its packer began.
    pub trait CollectionTasks {
        /// Takes `collection`'s lease for `owner` until `now_ms + ttl`: when
        /// nobody holds it, or its holder's lease expired. `None`: another
        /// holder (another daemon, or another job's finishing in this one).
        fn take_collection_task(
            &self,
            collection: &str,
            owner: &Arc<str>,
            ttl: Duration,
            now_ms: i64,
        ) -> Option<CollectionTask>;
        /// Extends a held lease to `now_ms + ttl`; `false` if it was lost.
        fn renew_collection_task(&self, task: &CollectionTask, ttl: Duration, now_ms: i64) -> bool;
        /// Gives a held lease up; a lost one is left alone.
        fn release_collection_task(&self, task: &CollectionTask) -> ();
        /// `Ok` while `task` still holds its collection, else
        /// [`StoreError::LostCollectionTask`]: a last check before an effect
        /// the database cannot fence (a tar taking its name).
        fn check_collection_task(&self, task: &CollectionTask) -> ();
        /// Records a multipart upload `task`'s packer began at `path`, before
        /// any part goes up. Refused once the lease is lost: the caller aborts.
        fn record_upload(
            &self,
            task: &CollectionTask,
            upload_id: &str,
            path: &str,
            now_ms: i64,
        ) -> ();
        /// The collection's uploads begun and not seen to end, oldest first.
        fn recorded_uploads(&self, collection: &str) -> Vec<RecordedUpload>;
        /// The upload completed or was aborted. Unfenced: forgetting an upload
        /// that is over is right whoever does it.
        fn forget_upload(&self, upload_id: &str) -> ();
    }

    /// The upload to the Internet Archive (see `store/uploads.rs`): a job's
    /// track, a collection's items, and each file's way to one.
    pub trait Uploads {
        /// Gives job `job_id` an upload track (`waiting`) if it has none;
        /// `true` when it was created. Idempotent: a re-post calls it again.
        fn enable_upload(&self, job_id: i64, now_ms: i64) -> bool;
        /// The job's upload track; `None` when it asked for no upload.
        fn upload_track(&self, job_id: i64) -> Option<UploadTrack>;
        /// Every upload track, by job id: what the engine's upload loop walks.
        fn upload_tracks(&self) -> Vec<UploadTrack>;
        /// Moves the job's track from `from` to `to`, setting `last_error`
        /// (`None` clears it); `false` if it was not in `from`, so of two
        /// racing callers one wins.
        fn set_upload_state(
            &self,
            job_id: i64,
            from: UploadState,
            to: UploadState,
            last_error: Option<&str>,
            now_ms: i64,
        ) -> bool;
        /// A collection's items, by part.
        fn upload_items(&self, collection: &str) -> Vec<UploadItem>;
        /// Part `part` of `collection`, named `identifier`: created empty if
        /// missing. [`StoreError::Invalid`] when the identifier belongs to
        /// another collection or part.
        fn add_upload_item(&self, collection: &str, part: u32, identifier: &str) -> UploadItem;
        /// Places a file in `item`, in one transaction with the item's byte
        /// and file counts. A tar already placed (in this item or any other
        /// of its collection) stays where it is ([`Placed::Unchanged`]); an
        /// item file whose size or MD5 changed goes back to pending.
        fn place_upload_file(&self, item: &UploadItem, file: &NewUploadFile<'_>) -> Placed;
        /// A collection's placed files, by item, then in placement order.
        fn upload_files(&self, collection: &str) -> Vec<UploadFile>;
        /// A PUT of the file begins: counts an attempt, before any byte goes,
        /// so a crash mid-send shows as a resend.
        fn begin_file_send(&self, file_id: i64) -> ();
        /// Moves one file from `from` to `to`; `false` if it was not in `from`.
        fn set_file_state(
            &self,
            file_id: i64,
            from: UploadFileState,
            to: UploadFileState,
            now_ms: i64,
        ) -> bool;
        /// Upload tracks with their sums over the files of each job's
        /// collections (the job object's `upload`): of one job, or of all.
        fn upload_progress(&self, job_id: Option<i64>) -> Vec<UploadProgress>;
        /// `ia.delete_after_confirm`: records tar `file_id` as held on the
        /// Internet Archive only, before its local file is removed, in a
        /// commit that survives a power loss. Only a tar that is confirmed
        /// (and whose packing, if any, is `cleaned`) is recorded; returns
        /// whether it is recorded (now or before). See `store/ia_only.rs`.
        fn record_tar_on_ia_only(&self, file_id: i64, now_ms: i64) -> bool;
        /// A collection's tars recorded as held on the Internet Archive only
        /// whose local file is not known to be removed yet.
        fn tars_to_remove(&self, collection: &str) -> Vec<UploadFile>;
        /// The local file of tar `file_id` is durably removed.
        fn mark_tar_removed(&self, file_id: i64, now_ms: i64) -> ();
        /// Packings whose tar is held on the Internet Archive only, each with
        /// its done image rows (of one job, or of all): what `verify` reports
        /// as such instead of reading the tar.
        fn tars_on_ia_only(&self, job_id: Option<i64>) -> Vec<TarOnIaOnly>;
    }
}
