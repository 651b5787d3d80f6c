//! The job store, one suite on both backends: a real SQLite file per test
//! and a fresh database per test on a throwaway PostgreSQL cluster.

use mapillary_downloader::archive::ArchivedFile;
use mapillary_downloader::model::{Bbox, GeoPoint, ImageMeta, Quality};
use mapillary_downloader::selection::{JobSpec, Resync};
use mapillary_downloader::store::{
    ApiSlot, ClaimedImage, Counts, DaemonInfo, DeferPolicy, FailOutcome, FailReason, ImageState,
    Job, JobState, Lease, PackingState, PageWrite, PartStep, PauseReason, PgClock, RetryPolicy,
    Store, StoreError, StoreResult, TarWritten,
};
use mld_testkit::postgres::PgCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);
const LEASE_MS: i64 = 60_000;

struct Fixture {
    _dir: tempfile::TempDir,
    /// The SQLite file (SQLite fixtures only).
    path: PathBuf,
    /// The PostgreSQL database (PostgreSQL fixtures only).
    url: Option<String>,
    store: Store,
}

/// A SQLite store in a fresh file.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("mapillary.db");
    let store = Store::open(&path).await.unwrap();
    Fixture {
        _dir: dir,
        path,
        url: None,
        store,
    }
}

/// A PostgreSQL store in a fresh database of the test binary's cluster, on
/// the caller's clock so tests step time by hand like on SQLite.
async fn pg_fixture() -> Fixture {
    let url = PgCluster::shared().fresh_database();
    let store = Store::open_postgres(&url, PgClock::Caller).await.unwrap();
    Fixture {
        _dir: tempfile::tempdir().unwrap(),
        path: PathBuf::new(),
        url: Some(url),
        store,
    }
}

impl Fixture {
    /// A second, independent connection for checks and fault injection.
    async fn raw(&self) -> Raw {
        match &self.url {
            Some(url) => Raw::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .unwrap(),
            ),
            None => Raw::Sqlite(raw(&self.path).await),
        }
    }
}

/// A raw connection to either backend, with the few checks tests make
/// behind the store's back, each spelt in both dialects.
#[derive(Clone)]
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Raw {
    async fn row_ids(&self, job: i64, state: &str, limit: i64) -> Vec<i64> {
        match self {
            Raw::Sqlite(pool) => sqlx::query_scalar(
                "SELECT rowid FROM images WHERE job_id = ? AND state = ? ORDER BY rowid LIMIT ?",
            )
            .bind(job)
            .bind(state)
            .bind(limit)
            .fetch_all(pool)
            .await
            .unwrap(),
            Raw::Postgres(pool) => sqlx::query_scalar(
                "SELECT rowid FROM images WHERE job_id = $1 AND state = $2 ORDER BY rowid LIMIT $3",
            )
            .bind(job)
            .bind(state)
            .bind(limit)
            .fetch_all(pool)
            .await
            .unwrap(),
        }
    }

    async fn row_of(&self, job: i64, image: &str) -> i64 {
        match self {
            Raw::Sqlite(pool) => {
                sqlx::query_scalar("SELECT rowid FROM images WHERE job_id = ? AND image_id = ?")
                    .bind(job)
                    .bind(image)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Raw::Postgres(pool) => {
                sqlx::query_scalar("SELECT rowid FROM images WHERE job_id = $1 AND image_id = $2")
                    .bind(job)
                    .bind(image)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        }
    }

    /// `(job_id, sha256, bytes)` of every image, by job and image id.
    async fn checksums(&self) -> Vec<(i64, String, i64)> {
        let sql = "SELECT job_id, sha256, bytes FROM images ORDER BY job_id, image_id";
        match self {
            Raw::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
            Raw::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        }
    }

    /// Makes every insert of an image with this id fail.
    async fn fail_inserts_of(&self, image_id: &str) {
        match self {
            Raw::Sqlite(pool) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TRIGGER test_boom BEFORE INSERT ON images WHEN NEW.image_id = '{image_id}' \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )))
                .execute(pool)
                .await
                .unwrap();
            }
            Raw::Postgres(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE FUNCTION test_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
                     CREATE TRIGGER test_boom BEFORE INSERT ON images FOR EACH ROW \
                     WHEN (NEW.image_id = '{image_id}') EXECUTE FUNCTION test_boom();"
                )))
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// Per-state counts of a job's rows, and its done bytes, by GROUP BY.
    async fn group_by_counts(&self, job_id: i64) -> (Counts, u64) {
        let rows: Vec<(String, i64, i64, i64)> = match self {
            Raw::Sqlite(pool) => sqlx::query_as(
                "SELECT state, count(*), ifnull(sum(CASE WHEN state = 'done' THEN bytes ELSE 0 END), 0), \
                 sum(fail_reason IS 'deleted') FROM images WHERE job_id = ? GROUP BY state",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await
            .unwrap(),
            Raw::Postgres(pool) => sqlx::query_as(
                "SELECT state, count(*), coalesce(sum(CASE WHEN state = 'done' THEN bytes ELSE 0 END), 0)::BIGINT, \
                 count(*) FILTER (WHERE fail_reason = 'deleted') FROM images WHERE job_id = $1 GROUP BY state",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await
            .unwrap(),
        };
        let mut c = Counts::default();
        let mut bytes = 0;
        for (state, n, b, d) in rows {
            let n = n as u64;
            match state.as_str() {
                "pending" => c.pending = n,
                "in_progress" => c.in_progress = n,
                "done" => {
                    c.done = n;
                    bytes = b as u64;
                }
                "failed" => {
                    c.failed = n;
                    c.deleted = d as u64;
                }
                other => panic!("unexpected state {other}"),
            }
        }
        c.discovered = c.pending + c.in_progress + c.done + c.failed;
        (c, bytes)
    }
}

/// A SQLite connection of its own to the file.
async fn raw(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

fn meta(id: &str, captured_at: Option<i64>) -> ImageMeta {
    ImageMeta {
        id: id.to_string(),
        captured_at,
        geometry: Some(GeoPoint {
            kind: Some("Point".into()),
            coordinates: vec![13.4, 52.5],
        }),
        compass_angle: Some(0.0),
        sequence: Some("seqA".into()),
        thumb_original_url: Some(format!("https://cdn.example/{id}/orig.jpg?oe=FFFF")),
        thumb_256_url: Some(format!("https://cdn.example/{id}/256.jpg")),
        ..ImageMeta::default()
    }
}

/// What the store keeps of an image: its metadata, without URLs.
fn stored(meta: &ImageMeta) -> serde_json::Value {
    serde_json::to_value(meta).unwrap()
}

fn metas(ids: impl IntoIterator<Item = u64>) -> Vec<ImageMeta> {
    ids.into_iter()
        .map(|i| meta(&i.to_string(), Some(1_600_000_000_000 + i as i64)))
        .collect()
}

async fn active_job(store: &Store, username: &str) -> i64 {
    let job = store
        .create_job(username, Quality::Original, None, 1_000)
        .await
        .unwrap();
    store
        .set_job_state(job.id, JobState::Downloading, None, 1_000)
        .await
        .unwrap();
    job.id
}

/// The store operations these tests were written against, in terms of the
/// store's API: one job per call, forced states, and leases spelt out as
/// (row, owner, attempt). Test-side only; production code uses the store's
/// own methods.
trait StoreExt {
    async fn create_job(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
        now: i64,
    ) -> StoreResult<Job>;
    async fn set_job_state(
        &self,
        id: i64,
        state: JobState,
        last_error: Option<&str>,
        now: i64,
    ) -> StoreResult<()>;
    async fn find_job_by_key(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
    ) -> StoreResult<Option<Job>>;
    async fn job_cursor(&self, id: i64) -> StoreResult<Option<String>>;
    async fn restart_enumeration(&self, id: i64, now: i64) -> StoreResult<()>;
    async fn claim_as(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        now: i64,
    ) -> StoreResult<Vec<ClaimedImage>>;
    async fn complete_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        bytes: u64,
        path: &str,
        now: i64,
    ) -> StoreResult<bool>;
    #[allow(clippy::too_many_arguments)]
    async fn fail_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        error: &str,
        max_attempts: u32,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<FailOutcome>;
    async fn release_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        run_at: i64,
        note: Option<&str>,
    ) -> StoreResult<bool>;
}

/// A lease as a worker holds it; the fence reads only row, owner and epoch.
fn lease(row_id: i64, owner: &str, epoch: i64) -> Lease {
    Lease {
        row_id,
        owner: owner.into(),
        attempt: 0,
        epoch,
    }
}

impl StoreExt for Store {
    async fn create_job(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
        now: i64,
    ) -> StoreResult<Job> {
        Ok(self
            .submit_job(&JobSpec::user(username, quality).with_bbox(bbox), now)
            .await?
            .job()
            .clone())
    }

    async fn set_job_state(
        &self,
        id: i64,
        state: JobState,
        last_error: Option<&str>,
        now: i64,
    ) -> StoreResult<()> {
        let changed = if state == JobState::Paused {
            self.pause_job(id, JobState::ALL, PauseReason::User, last_error, now)
                .await?
        } else {
            self.transition_job(id, JobState::ALL, state, now).await?
        };
        changed.ok_or(StoreError::NoSuchJob(id))?;
        self.set_job_error(id, last_error, now).await
    }

    async fn find_job_by_key(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
    ) -> StoreResult<Option<Job>> {
        Ok(self.list_jobs().await?.into_iter().rev().find(|j| {
            j.username() == Some(username)
                && j.quality == quality
                && j.selection.filters.bbox == bbox
                && j.state != JobState::Cancelled
        }))
    }

    async fn job_cursor(&self, id: i64) -> StoreResult<Option<String>> {
        self.find_job(id).await?.ok_or(StoreError::NoSuchJob(id))?;
        Ok(self.current_part(id).await?.and_then(|part| part.cursor))
    }

    async fn restart_enumeration(&self, id: i64, now: i64) -> StoreResult<()> {
        let job = self.find_job(id).await?.ok_or(StoreError::NoSuchJob(id))?;
        let spec = JobSpec {
            selection: job.selection.clone(),
            quality: job.quality,
            format: job.format,
            package: job.package,
            upload: None,
            resync: mapillary_downloader::selection::Resync::KeepOr(None),
        };
        self.submit_job(&spec, now).await?;
        Ok(())
    }

    async fn claim_as(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        now: i64,
    ) -> StoreResult<Vec<ClaimedImage>> {
        self.claim(&Arc::from(owner), limit, lease, now, 0).await
    }

    async fn complete_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        bytes: u64,
        path: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.complete(
            &lease(row, owner, epoch),
            &ArchivedFile::loose(path, bytes, None),
            now,
        )
        .await
    }

    async fn fail_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        error: &str,
        max_attempts: u32,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<FailOutcome> {
        let policy = RetryPolicy {
            max_attempts,
            retry_at_ms: retry_at,
        };
        self.fail(&lease(row, owner, epoch), error, policy, now)
            .await
    }

    async fn release_as(
        &self,
        row: i64,
        owner: &str,
        epoch: i64,
        run_at: i64,
        note: Option<&str>,
    ) -> StoreResult<bool> {
        self.release(&lease(row, owner, epoch), Duration::ZERO, note, run_at)
            .await
    }
}

async fn counts(store: &Store, job_id: i64) -> Counts {
    store.find_job(job_id).await.unwrap().unwrap().counts
}

/// A worker as `owner`: claims `batch` at a time and completes each until
/// the queue is empty; the row ids it completed.
async fn drain_as(store: Arc<Store>, owner: String, batch: u32) -> Vec<i64> {
    let mut mine = Vec::new();
    loop {
        let got = store.claim_as(&owner, batch, LEASE, 0).await.unwrap();
        if got.is_empty() {
            return mine;
        }
        for c in got {
            assert!(
                store
                    .complete_as(c.row_id(), &owner, c.lease.epoch, 1, "p", 0)
                    .await
                    .unwrap()
            );
            mine.push(c.row_id());
        }
    }
}

fn ids(claimed: &[ClaimedImage]) -> Vec<&str> {
    claimed.iter().map(|c| c.image_id.as_str()).collect()
}

#[tokio::test]
async fn open_creates_the_directory_uses_wal_and_reopens() {
    let f = fixture().await;
    assert!(f.path.exists());
    let pool = raw(&f.path).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    f.store.ping().await.unwrap();
    let job = f
        .store
        .create_job("alice", Quality::Q2048, None, 5)
        .await
        .unwrap();
    f.store.close().await;
    let again = Store::open(&f.path).await.unwrap();
    assert_eq!(again.find_job(job.id).await.unwrap().unwrap(), job);
}

async fn jobs_are_created_found_by_key_and_listed(f: Fixture) {
    let s = &f.store;
    let bbox = Bbox::new(13.0, 52.0, 14.0, 53.0).unwrap();
    let a = s
        .create_job("alice", Quality::Original, Some(bbox), 1_000)
        .await
        .unwrap();
    assert_eq!(a.state, JobState::Queued);
    assert_eq!(a.selection.filters.bbox, Some(bbox));
    assert_eq!(a.created_at, "1970-01-01T00:00:01.000Z");
    assert_eq!(a.counts, Counts::default());
    assert!(!a.enumeration_complete);
    let b = s
        .create_job("alice", Quality::Original, None, 2_000)
        .await
        .unwrap();

    let found = s
        .find_job_by_key("alice", Quality::Original, Some(bbox))
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(a.id));
    let other_box = Bbox::new(13.0, 52.0, 14.0, 53.5).unwrap();
    assert!(
        s.find_job_by_key("alice", Quality::Original, Some(other_box))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.find_job_by_key("alice", Quality::Q256, None)
            .await
            .unwrap()
            .is_none()
    );

    // A cancelled job is not a match; the newest live one is.
    s.set_job_state(b.id, JobState::Cancelled, None, 3_000)
        .await
        .unwrap();
    assert!(
        s.find_job_by_key("alice", Quality::Original, None)
            .await
            .unwrap()
            .is_none()
    );
    let c = s
        .create_job("alice", Quality::Original, None, 4_000)
        .await
        .unwrap();
    assert_eq!(
        s.find_job_by_key("alice", Quality::Original, None)
            .await
            .unwrap()
            .map(|j| j.id),
        Some(c.id)
    );

    let listed: Vec<i64> = s.list_jobs().await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, vec![a.id, b.id, c.id]);
    let queued: Vec<i64> = s
        .jobs_in_states(&[JobState::Queued, JobState::Paused])
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, vec![a.id, c.id]);

    s.set_job_state(a.id, JobState::Paused, Some("token rejected"), 5_000)
        .await
        .unwrap();
    let paused = s.find_job(a.id).await.unwrap().unwrap();
    assert_eq!(paused.state, JobState::Paused);
    assert_eq!(paused.last_error.as_deref(), Some("token rejected"));
    assert_eq!(paused.updated_at, "1970-01-01T00:00:05.000Z");
    s.set_job_error(a.id, None, 6_000).await.unwrap();
    let cleared = s.find_job(a.id).await.unwrap().unwrap();
    assert_eq!(cleared.last_error, None);
    assert_eq!(cleared.state, JobState::Paused);

    assert!(matches!(
        s.set_job_state(999, JobState::Done, None, 1).await,
        Err(StoreError::NoSuchJob(999))
    ));
    assert!(s.find_job(999).await.unwrap().is_none());
}

async fn page_insert_is_idempotent_and_stores_the_cursor(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;

    let new = s
        .insert_page(job, &metas(1..=3), Some("https://h/images?after=c1"), 10)
        .await
        .unwrap();
    assert_eq!(new, 3);
    assert_eq!(
        s.job_cursor(job).await.unwrap().as_deref(),
        Some("https://h/images?after=c1")
    );

    // Overlapping page: only the unseen image is new.
    let new = s
        .insert_page(job, &metas(2..=4), Some("https://h/images?after=c2"), 20)
        .await
        .unwrap();
    assert_eq!(new, 1);
    // The same id twice inside one page counts once.
    let new = s
        .insert_page(job, &metas([5, 5]), Some("https://h/images?after=c3"), 30)
        .await
        .unwrap();
    assert_eq!(new, 1);
    let j = s.find_job(job).await.unwrap().unwrap();
    assert_eq!(j.counts.discovered, 5);
    assert_eq!(j.counts.pending, 5);
    assert!(!j.enumeration_complete);

    // The last page completes enumeration and clears the cursor.
    let new = s.insert_page(job, &metas(5..=6), None, 40).await.unwrap();
    assert_eq!(new, 1);
    let j = s.find_job(job).await.unwrap().unwrap();
    assert!(j.enumeration_complete);
    assert_eq!(s.current_part(job).await.unwrap(), None, "every part done");
    assert_eq!(j.counts.discovered, 6);

    // Stored metadata has no URL; the url column has the job quality's URL.
    let rec = s.image_by_id(job, "2").await.unwrap().unwrap();
    assert_eq!(stored(&rec.meta), stored(&metas([2])[0]));
    assert_eq!(
        rec.url.as_deref(),
        Some("https://cdn.example/2/orig.jpg?oe=FFFF")
    );
    assert_eq!(rec.state, ImageState::Pending);
    assert_eq!(rec.attempts, 0);
    assert_eq!(rec.run_at, 10);
    assert_eq!(rec.captured_at, Some(1_600_000_000_002));

    // A re-sync starts from the first page and adds only new images.
    s.set_job_state(job, JobState::Done, None, 50)
        .await
        .unwrap();
    s.restart_enumeration(job, 60).await.unwrap();
    let j = s.find_job(job).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Enumerating);
    assert!(!j.enumeration_complete);
    let new = s
        .insert_page(job, &metas(1..=8), Some("https://h/images?after=R"), 70)
        .await
        .unwrap();
    assert_eq!(new, 2);

    // A large page crosses every chunk size and still counts right.
    let big = s
        .insert_page(job, &metas(1..=2_345), None, 80)
        .await
        .unwrap();
    assert_eq!(big, 2_345 - 8);
    assert_eq!(counts(s, job).await.discovered, 2_345);

    assert!(matches!(
        s.insert_page(777, &metas([1]), None, 1).await,
        Err(StoreError::NoSuchJob(777))
    ));
}

async fn a_failing_page_insert_leaves_rows_and_cursor_unchanged(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=2), Some("https://h/?after=c1"), 10)
        .await
        .unwrap();

    f.raw().await.fail_inserts_of("boom").await;

    // Enough rows before the failing one that several chunks already ran.
    let mut page = metas(3..=400);
    page.push(meta("boom", None));
    let err = s
        .insert_page(job, &page, Some("https://h/?after=c2"), 20)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");

    assert_eq!(
        s.job_cursor(job).await.unwrap().as_deref(),
        Some("https://h/?after=c1")
    );
    assert_eq!(counts(s, job).await.discovered, 2);
    assert!(s.image_by_id(job, "3").await.unwrap().is_none());
    // The writer is usable after the rollback.
    assert_eq!(
        s.insert_page(job, &metas(3..=4), None, 30).await.unwrap(),
        2
    );
}

async fn claim_respects_limit_order_run_at_and_job_state(f: Fixture) {
    let s = &f.store;
    let job = s
        .create_job("alice", Quality::Q256, None, 0)
        .await
        .unwrap()
        .id;
    s.insert_page(job, &metas(1..=5), None, 1_000)
        .await
        .unwrap();
    // A queued job's images are not handed out.
    assert!(s.claim_as("w1", 10, LEASE, 1_000).await.unwrap().is_empty());
    s.set_job_state(job, JobState::Enumerating, None, 1_000)
        .await
        .unwrap();

    let first = s.claim_as("w1", 2, LEASE, 1_000).await.unwrap();
    assert_eq!(ids(&first), vec!["1", "2"]);
    let c = &first[0];
    assert_eq!(c.job_id, job);
    assert_eq!(c.quality, Quality::Q256);
    assert_eq!(c.collection, "mapillary-alice-256");
    assert_eq!(c.lease.attempt, 1);
    assert_eq!(c.url.as_deref(), Some("https://cdn.example/1/256.jpg"));
    assert_eq!(stored(&c.meta), stored(&metas([1])[0]));
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(rec.state, ImageState::InProgress);
    assert_eq!(rec.lease_owner.as_deref(), Some("w1"));
    assert_eq!(rec.lease_until, Some(1_000 + LEASE_MS));

    // Image 3 is put back for later; it is not due before its run_at.
    let rest = s.claim_as("w2", 1, LEASE, 1_000).await.unwrap();
    assert_eq!(ids(&rest), vec!["3"]);
    assert!(
        s.release_as(rest[0].row_id(), "w2", 1, 9_000, None)
            .await
            .unwrap()
    );
    let rest = s.claim_as("w2", 10, LEASE, 2_000).await.unwrap();
    assert_eq!(ids(&rest), vec!["4", "5"]);
    assert!(s.claim_as("w2", 10, LEASE, 8_999).await.unwrap().is_empty());
    let later = s.claim_as("w2", 10, LEASE, 9_000).await.unwrap();
    assert_eq!(ids(&later), vec!["3"]);
    assert!(s.claim_as("w2", 0, LEASE, 9_000).await.unwrap().is_empty());

    let c = counts(s, job).await;
    assert_eq!((c.pending, c.in_progress), (0, 5));
}

async fn paused_and_cancelled_jobs_are_not_claimed(f: Fixture) {
    let s = &f.store;
    let a = active_job(s, "alice").await;
    let b = active_job(s, "bob").await;
    let c = active_job(s, "carol").await;
    s.insert_page(a, &metas(1..=3), None, 0).await.unwrap();
    s.insert_page(b, &metas(10..=12), None, 0).await.unwrap();
    s.insert_page(c, &metas(20..=22), None, 0).await.unwrap();
    s.set_job_state(a, JobState::Paused, None, 0).await.unwrap();
    s.set_job_state(c, JobState::Cancelled, None, 0)
        .await
        .unwrap();

    let got = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    assert_eq!(ids(&got), vec!["10", "11", "12"]);
    assert!(got.iter().all(|c| c.collection == "mapillary-bob-original"));
    assert!(s.claim_as("w", 10, LEASE, 0).await.unwrap().is_empty());

    // An expired lease of a paused job is not reclaimed either.
    s.set_job_state(b, JobState::Paused, None, 0).await.unwrap();
    assert!(
        s.claim_as("w", 10, LEASE, LEASE_MS * 2)
            .await
            .unwrap()
            .is_empty()
    );

    s.set_job_state(a, JobState::Downloading, None, 0)
        .await
        .unwrap();
    let got = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    assert_eq!(ids(&got), vec!["1", "2", "3"]);
}

async fn an_expired_lease_is_reclaimed_as_a_new_attempt(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();
    let a = s
        .claim_as("A", 1, Duration::from_secs(10), 0)
        .await
        .unwrap();
    assert_eq!(a[0].lease.attempt, 1);
    assert!(s.claim_as("B", 1, LEASE, 9_999).await.unwrap().is_empty());
    assert!(s.claim_as("B", 1, LEASE, 10_000).await.unwrap().is_empty());
    let b = s.claim_as("B", 1, LEASE, 10_001).await.unwrap();
    assert_eq!(ids(&b), vec!["1"]);
    assert_eq!(b[0].lease.attempt, 2);
    assert_eq!(counts(s, job).await.in_progress, 1);

    // The old holder has lost the row in every way it could touch it.
    assert!(
        !s.complete_as(a[0].row_id(), "A", 1, 10, "x.jpg", 10_002)
            .await
            .unwrap()
    );
    assert_eq!(
        s.fail_as(a[0].row_id(), "A", 1, "boom", 5, 20_000, 10_002)
            .await
            .unwrap(),
        FailOutcome::LeaseLost
    );
    assert!(!s.release_as(a[0].row_id(), "A", 1, 0, None).await.unwrap());
    assert!(
        s.complete_as(b[0].row_id(), "B", 2, 10, "x.jpg", 10_003)
            .await
            .unwrap()
    );
}

async fn complete_is_fenced_by_owner_and_epoch(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();
    let c = s.claim_as("w1", 1, LEASE, 0).await.unwrap().remove(0);
    let before = s.image_by_id(job, "1").await.unwrap().unwrap();

    assert!(
        !s.complete_as(c.row_id(), "w2", c.lease.epoch, 5, "p", 1)
            .await
            .unwrap()
    );
    assert!(
        !s.complete_as(c.row_id(), "w1", c.lease.epoch - 1, 5, "p", 1)
            .await
            .unwrap()
    );
    assert!(
        !s.complete_as(c.row_id(), "w1", c.lease.epoch + 1, 5, "p", 1)
            .await
            .unwrap()
    );
    assert_eq!(s.image_by_id(job, "1").await.unwrap().unwrap(), before);

    assert!(
        s.complete_as(c.row_id(), "w1", c.lease.epoch, 12_345, "archive/1.jpg", 2)
            .await
            .unwrap()
    );
    let done = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(done.state, ImageState::Done);
    assert_eq!(done.bytes, Some(12_345));
    assert_eq!(done.path.as_deref(), Some("archive/1.jpg"));
    assert_eq!(done.lease_owner, None);
    // Completing twice is a lost lease, not a second count.
    assert!(
        !s.complete_as(c.row_id(), "w1", c.lease.epoch, 1, "p", 3)
            .await
            .unwrap()
    );
    let j = s.find_job(job).await.unwrap().unwrap();
    assert_eq!((j.counts.done, j.bytes_done), (1, 12_345));
}

/// The attempt number cannot fence: a retry of failed images resets it, so
/// a worker whose lease expired long ago would find the row claimed again by
/// the same daemon on the same attempt number. The epoch only grows.
async fn a_stale_holder_cannot_complete_a_row_retried_and_claimed_again_on_its_attempt_number(
    f: Fixture,
) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();
    let stale = s.claim_as("w", 1, LEASE, 0).await.unwrap().remove(0);
    assert_eq!((stale.lease.attempt, stale.lease.epoch), (1, 1));
    // Its lease expires; the same daemon takes the row over and it fails for good.
    let expired = LEASE_MS + 1;
    let second = s.claim_as("w", 1, LEASE, expired).await.unwrap().remove(0);
    assert_eq!((second.lease.attempt, second.lease.epoch), (2, 2));
    let give_up = RetryPolicy {
        max_attempts: 2,
        retry_at_ms: expired,
    };
    let outcome = s
        .fail(&second.lease, "HTTP 500", give_up, expired)
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::FailedForGood);
    // The user retries: attempts start again, and the next claim is attempt 1 again.
    assert_eq!(s.retry_failed(job, false, expired).await.unwrap(), 1);
    let third = s.claim_as("w", 1, LEASE, expired).await.unwrap().remove(0);
    assert_eq!((third.lease.attempt, third.lease.epoch), (1, 3));
    assert_eq!(third.lease.attempt, stale.lease.attempt);

    // The first holder wakes up: none of its outcomes may land.
    let before = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert!(
        !s.complete(
            &stale.lease,
            &ArchivedFile::loose("stale.jpg", 1, None),
            expired
        )
        .await
        .unwrap()
    );
    assert!(
        !s.release(&stale.lease, Duration::ZERO, Some("stale"), expired)
            .await
            .unwrap()
    );
    let policy = RetryPolicy {
        max_attempts: 1,
        retry_at_ms: expired,
    };
    assert_eq!(
        s.fail(&stale.lease, "stale", policy, expired)
            .await
            .unwrap(),
        FailOutcome::LeaseLost
    );
    assert_eq!(s.image_by_id(job, "1").await.unwrap().unwrap(), before);
    // The current holder's completion is the one that counts.
    assert!(
        s.complete(
            &third.lease,
            &ArchivedFile::loose("1.jpg", 7, None),
            expired
        )
        .await
        .unwrap()
    );
    let j = s.find_job(job).await.unwrap().unwrap();
    assert_eq!((j.counts.done, j.bytes_done), (1, 7));
}

async fn fail_backs_off_then_fails_for_good_and_retry_requeues(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();

    let mut now = 0;
    for attempt in 1..=2 {
        let c = s.claim_as("w", 1, LEASE, now).await.unwrap().remove(0);
        assert_eq!(c.lease.attempt, attempt);
        let retry_at = now + 1_000 * attempt;
        let outcome = s
            .fail_as(c.row_id(), "w", c.lease.epoch, "HTTP 503", 3, retry_at, now)
            .await
            .unwrap();
        assert_eq!(outcome, FailOutcome::Retrying { run_at: retry_at });
        let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
        assert_eq!(rec.state, ImageState::Pending);
        assert_eq!(rec.last_error.as_deref(), Some("HTTP 503"));
        assert!(
            s.claim_as("w", 1, LEASE, retry_at - 1)
                .await
                .unwrap()
                .is_empty()
        );
        now = retry_at;
    }
    let c = s.claim_as("w", 1, LEASE, now).await.unwrap().remove(0);
    assert_eq!(c.lease.attempt, 3);
    let outcome = s
        .fail_as(
            c.row_id(),
            "w",
            3,
            "body is not a JPEG",
            3,
            now + 10_000,
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::FailedForGood);
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(rec.state, ImageState::Failed);
    assert_eq!(rec.attempts, 3);
    assert!(
        s.claim_as("w", 1, LEASE, now + 1_000_000)
            .await
            .unwrap()
            .is_empty()
    );

    let failed = s.failed_images(job, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].image_id, "1");
    assert_eq!(failed[0].last_error.as_deref(), Some("body is not a JPEG"));
    assert_eq!(counts(s, job).await.failed, 1);

    assert_eq!(s.retry_failed(job, false, 50_000).await.unwrap(), 1);
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempts, rec.run_at),
        (ImageState::Pending, 0, 50_000)
    );
    assert_eq!(rec.last_error, None);
    assert_eq!(counts(s, job).await.pending, 1);
    assert_eq!(s.retry_failed(job, false, 50_000).await.unwrap(), 0);
    let again = s.claim_as("w", 1, LEASE, 50_000).await.unwrap();
    assert_eq!(again[0].lease.attempt, 1);
}

async fn release_costs_no_attempt(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();
    for _ in 0..5 {
        let c = s.claim_as("w", 1, LEASE, 100).await.unwrap().remove(0);
        assert_eq!(c.lease.attempt, 1);
        assert!(
            s.release_as(c.row_id(), "w", c.lease.epoch, 100, Some("rate limited"))
                .await
                .unwrap()
        );
    }
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (ImageState::Pending, 0));
    assert_eq!(rec.last_error.as_deref(), Some("rate limited"));
    assert_eq!((rec.lease_owner, rec.lease_until), (None, None));
    // Without a note the last error stays.
    let c = s.claim_as("w", 1, LEASE, 100).await.unwrap().remove(0);
    assert!(
        s.release_as(c.row_id(), "w", c.lease.epoch, 100, None)
            .await
            .unwrap()
    );
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(rec.last_error.as_deref(), Some("rate limited"));
    // Released with a delay (a Retry-After): due that long after now.
    let c = s.claim_as("w", 1, LEASE, 200).await.unwrap().remove(0);
    assert!(
        s.release(&c.lease, Duration::from_secs(5), None, 1_000)
            .await
            .unwrap()
    );
    assert!(s.claim_as("w", 1, LEASE, 5_999).await.unwrap().is_empty());
    assert_eq!(s.claim_as("w", 1, LEASE, 6_000).await.unwrap().len(), 1);
}

async fn reset_in_flight_returns_rows_and_their_attempts(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=4), None, 0).await.unwrap();
    let claimed = s.claim_as("w", 3, LEASE, 0).await.unwrap();
    assert!(
        s.complete_as(claimed[0].row_id(), "w", 1, 9, "p", 1)
            .await
            .unwrap()
    );

    assert_eq!(s.reset_in_flight(500).await.unwrap(), 2);
    for id in ["2", "3"] {
        let rec = s.image_by_id(job, id).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempts, rec.run_at),
            (ImageState::Pending, 0, 500)
        );
        assert_eq!(rec.lease_owner, None);
    }
    assert_eq!(
        s.image_by_id(job, "1").await.unwrap().unwrap().state,
        ImageState::Done
    );
    let c = counts(s, job).await;
    assert_eq!((c.pending, c.in_progress, c.done), (3, 0, 1));
    // The reset holders' outcomes no longer land.
    assert!(
        !s.complete_as(claimed[1].row_id(), "w", 1, 9, "p", 600)
            .await
            .unwrap()
    );
}

async fn two_jobs_with_the_same_image_are_independent(f: Fixture) {
    let s = &f.store;
    let a = active_job(s, "alice").await;
    let b = s
        .create_job("alice", Quality::Q1024, None, 0)
        .await
        .unwrap()
        .id;
    s.set_job_state(b, JobState::Downloading, None, 0)
        .await
        .unwrap();
    assert_eq!(s.insert_page(a, &metas([42]), None, 0).await.unwrap(), 1);
    assert_eq!(s.insert_page(b, &metas([42]), None, 0).await.unwrap(), 1);
    let got = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    assert_eq!(got.len(), 1);
    let first = &got[0];
    assert!(
        s.complete_as(first.row_id(), "w", 1, 7, "p", 1)
            .await
            .unwrap()
    );
    let got = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].job_id, first.job_id);
    assert_eq!(got[0].image_id, "42");
    assert_eq!(counts(s, first.job_id).await.done, 1);
    assert_eq!(counts(s, got[0].job_id).await.in_progress, 1);
}

/// Two jobs of one collection completing the same image at the same loose
/// path: the file is the last writer's, so every done row at that path
/// takes its checksum and size (and the job counters follow).
async fn rows_sharing_a_loose_file_take_the_last_writers_checksum(f: Fixture) {
    let s = &f.store;
    let a = active_job(s, "alice").await;
    let b = s
        .create_job(
            "alice",
            Quality::Original,
            Bbox::new(-1.0, -1.0, 1.0, 1.0).ok(),
            0,
        )
        .await
        .unwrap()
        .id;
    s.set_job_state(b, JobState::Downloading, None, 0)
        .await
        .unwrap();
    s.insert_page(a, &metas([42, 43]), None, 0).await.unwrap();
    s.insert_page(b, &metas([42]), None, 0).await.unwrap();
    let pool = f.raw().await;
    let row_of = |job: i64, image: &'static str| {
        let pool = pool.clone();
        async move { pool.row_of(job, image).await }
    };
    let claimed = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    let claimed_b = s.claim_as("w", 10, LEASE, 0).await.unwrap();
    let all: Vec<&ClaimedImage> = claimed.iter().chain(claimed_b.iter()).collect();
    assert_eq!(all.len(), 3);
    let (a42, a43, b42) = (
        row_of(a, "42").await,
        row_of(a, "43").await,
        row_of(b, "42").await,
    );
    let file = |bytes: u64, sha: &str| ArchivedFile {
        sha256: Some(sha.into()),
        ..ArchivedFile::loose("/x/mapillary-alice-original/d/42.jpg", bytes, None)
    };
    assert!(
        s.complete(&lease(a42, "w", 1), &file(100, "aaa"), 1)
            .await
            .unwrap()
    );
    assert!(
        s.complete(
            &lease(a43, "w", 1),
            &ArchivedFile::loose(
                "/x/mapillary-alice-original/d/43.jpg",
                7,
                Some("ccc".into())
            ),
            1
        )
        .await
        .unwrap()
    );
    assert!(
        s.complete(&lease(b42, "w", 1), &file(120, "bbb"), 2)
            .await
            .unwrap()
    );
    let rows = pool.checksums().await;
    assert_eq!(
        rows,
        [
            (a, "bbb".to_string(), 120),
            (a, "ccc".to_string(), 7),
            (b, "bbb".to_string(), 120)
        ]
    );
    let (counted, bytes) = pool.group_by_counts(a).await;
    let job = s.find_job(a).await.unwrap().unwrap();
    assert_eq!((job.counts, job.bytes_done), (counted, bytes));
    assert_eq!(bytes, 127);
}

async fn finished_images_page_by_capture_time_with_missing_times_last(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    let page = vec![
        meta("1", Some(300)),
        meta("2", None),
        meta("3", Some(100)),
        meta("4", Some(200)),
        meta("5", Some(100)),
        meta("6", None),
        meta("7", Some(50)),
    ];
    s.insert_page(job, &page, None, 0).await.unwrap();
    for c in s.claim_as("w", 10, LEASE, 0).await.unwrap() {
        if c.image_id == "7" {
            // Failed images are not archived.
            s.fail_as(c.row_id(), "w", 1, "x", 1, 0, 0).await.unwrap();
        } else {
            let path = format!("archive/{}.jpg", c.image_id);
            assert!(
                s.complete_as(c.row_id(), "w", 1, 1, &path, 0)
                    .await
                    .unwrap()
            );
        }
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.finished_images(job, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|img| img.row_id);
        for img in page {
            assert_eq!(img.path, format!("archive/{}.jpg", img.meta.id));
            assert_eq!(img.meta.thumb_original_url, None);
            seen.push(img.meta.id);
        }
    }
    assert_eq!(seen, vec!["3", "5", "4", "1", "2", "6"]);
}

async fn update_urls_stores_refreshed_urls(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=2), None, 0).await.unwrap();
    let one = s.image_by_id(job, "1").await.unwrap().unwrap();
    let two = s.image_by_id(job, "2").await.unwrap().unwrap();
    let updated = s
        .update_urls(&[
            (one.row_id, Some("https://cdn.example/new".into())),
            (two.row_id, None),
            (9_999, Some("https://nowhere".into())),
        ])
        .await
        .unwrap();
    assert_eq!(updated, 2);
    let claimed = s.claim_as("w", 2, LEASE, 0).await.unwrap();
    assert_eq!(claimed[0].url.as_deref(), Some("https://cdn.example/new"));
    assert_eq!(claimed[1].url, None);
}

async fn counters_always_equal_a_group_by_count(f: Fixture) {
    let s = &f.store;
    let pool = f.raw().await;
    let jobs = [active_job(s, "alice").await, active_job(s, "bob").await];
    let mut rng = StdRng::seed_from_u64(7);
    let mut held: Vec<(ClaimedImage, String)> = Vec::new();
    let mut now = 0i64;

    for step in 0..600 {
        now += rng.random_range(0..3_000);
        match rng.random_range(0..10) {
            0 | 1 => {
                let job = jobs[rng.random_range(0..2)];
                let start = rng.random_range(0..300u64);
                let page = metas(start..start + rng.random_range(0..60));
                s.insert_page(job, &page, Some("https://h/?after=x"), now)
                    .await
                    .unwrap();
            }
            2 | 3 => {
                let owner = format!("w{}", rng.random_range(0..4));
                let lease = Duration::from_millis(rng.random_range(1_000..20_000));
                for c in s
                    .claim_as(&owner, rng.random_range(1..8), lease, now)
                    .await
                    .unwrap()
                {
                    held.push((c, owner.clone()));
                }
            }
            4..=7 if !held.is_empty() => {
                let (c, owner) = held.swap_remove(rng.random_range(0..held.len()));
                match rng.random_range(0..5) {
                    0 => {
                        let bytes = rng.random_range(1..1_000_000);
                        s.complete_as(c.row_id(), &owner, c.lease.epoch, bytes, "p", now)
                            .await
                            .unwrap();
                    }
                    1 => {
                        let retry = now + rng.random_range(0..5_000);
                        s.fail_as(c.row_id(), &owner, c.lease.epoch, "e", 3, retry, now)
                            .await
                            .unwrap();
                    }
                    2 => {
                        let reason =
                            [FailReason::Deleted, FailReason::Error][rng.random_range(0..2)];
                        s.fail_for_good(
                            &lease(c.row_id(), &owner, c.lease.epoch),
                            reason,
                            "g",
                            now,
                        )
                        .await
                        .unwrap();
                    }
                    3 => {
                        let policy = DeferPolicy {
                            base: Duration::from_millis(100),
                            cap: Duration::from_secs(5),
                            jitter: 0.75,
                        };
                        s.defer(&lease(c.row_id(), &owner, c.lease.epoch), "d", policy, now)
                            .await
                            .unwrap();
                    }
                    _ => {
                        s.release_as(c.row_id(), &owner, c.lease.epoch, now, Some("r"))
                            .await
                            .unwrap();
                    }
                }
            }
            8 => {
                let job = jobs[rng.random_range(0..2)];
                if rng.random_range(0..2) == 0 {
                    s.retry_failed(job, rng.random_range(0..2) == 0, now)
                        .await
                        .unwrap();
                } else {
                    let pending = pool.row_ids(job, "pending", 3).await;
                    s.mark_pending_deleted(&pending, "gone", now).await.unwrap();
                }
            }
            9 if rng.random_range(0..5) == 0 => {
                s.reset_in_flight(now).await.unwrap();
                held.clear();
            }
            _ => {
                let job = jobs[rng.random_range(0..2)];
                let state = [JobState::Downloading, JobState::Paused][rng.random_range(0..2)];
                s.set_job_state(job, state, None, now).await.unwrap();
            }
        }
        if step % 40 == 0 {
            // PostgreSQL folds its counter deltas now and then; reads must
            // not change across a fold.
            s.fold_counts().await.unwrap();
        }
        if step % 25 == 0 || step == 599 {
            for &job in &jobs {
                let stored = s.find_job(job).await.unwrap().unwrap();
                let (expected, bytes) = pool.group_by_counts(job).await;
                assert_eq!(stored.counts, expected, "step {step}, job {job}");
                assert_eq!(stored.bytes_done, bytes, "step {step}, job {job}");
            }
        }
    }
    let total = counts(s, jobs[0]).await.done + counts(s, jobs[1]).await.done;
    assert!(total > 0, "the random mix should complete some images");
}

async fn concurrent_claimers_never_share_a_row(f: Fixture) {
    let store = Arc::new(f.store);
    let job = active_job(&store, "alice").await;
    store
        .insert_page(job, &metas(1..=500), None, 0)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(drain_as(store, format!("w{worker}"), 7)));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 500);
    assert_eq!(unique.len(), 500);
    assert_eq!(counts(&store, job).await.done, 500);
}

#[tokio::test]
async fn the_token_never_reaches_the_database_files() {
    const TOKEN: &str = "MLY|4242424242|deadbeefcafef00dtoken";
    let f = fixture().await;
    let s = &f.store;
    let job = active_job(s, "alice").await;
    let encoded = TOKEN.replace('|', "%7C");
    let next = format!(
        "https://graph.mapillary.com/images?creator_username=alice&fields=id&limit=2000&access_token={encoded}&after=QVFIUz"
    );
    s.insert_page(job, &metas(1..=50), Some(&next), 0)
        .await
        .unwrap();
    let raw_next = format!("https://graph.mapillary.com/images?access_token={TOKEN}&after=QVFIU2");
    s.insert_page(job, &metas(51..=60), Some(&raw_next), 0)
        .await
        .unwrap();
    let cursor = s.job_cursor(job).await.unwrap().unwrap();
    assert_eq!(cursor, "https://graph.mapillary.com/images?after=QVFIU2");
    for c in s.claim_as("w", 20, LEASE, 0).await.unwrap() {
        s.fail_as(c.row_id(), "w", c.lease.epoch, "HTTP 500", 1, 0, 0)
            .await
            .unwrap();
    }
    s.set_job_state(job, JobState::Paused, Some("token rejected (code 190)"), 1)
        .await
        .unwrap();
    s.close().await;

    let dir = f.path.parent().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        checked += bytes.len();
        for needle in [TOKEN.as_bytes(), encoded.as_bytes(), b"deadbeefcafef00d"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a database file holds the token"
            );
        }
    }
    assert!(checked > 0);
}

#[tokio::test]
async fn read_only_store_reads_beside_a_live_writer_and_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapillary.db");
    match Store::open_read_only(&path).await {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("no database"), "{msg}"),
        other => panic!("expected a clear error, got {:?}", other.err()),
    }
    assert!(!path.exists(), "a read-only open must not create the file");

    let writer = Store::open(&path).await.unwrap();
    let job = active_job(&writer, "alice").await;
    writer
        .insert_page(job, &metas(1..=3), None, 0)
        .await
        .unwrap();

    let reader = Store::open_read_only(&path).await.unwrap();
    reader.ping().await.unwrap();
    assert_eq!(
        reader.find_job(job).await.unwrap().unwrap().counts.pending,
        3
    );
    // It sees what the live writer commits next.
    writer.claim_as("w", 1, LEASE, 0).await.unwrap();
    assert_eq!(reader.list_jobs().await.unwrap()[0].counts.in_progress, 1);
    assert!(matches!(
        reader.create_job("bob", Quality::Original, None, 0).await,
        Err(StoreError::ReadOnly)
    ));
    assert!(matches!(
        reader.claim_as("w", 1, LEASE, 0).await,
        Err(StoreError::ReadOnly)
    ));
    reader.close().await;
    writer.close().await;

    // After the daemon has stopped, status still opens the database.
    let reader = Store::open_read_only(&path).await.unwrap();
    assert_eq!(reader.list_jobs().await.unwrap().len(), 1);
    reader.close().await;

    // A schema from a newer binary is refused with a clear message.
    let pool = raw(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    match Store::open_read_only(&path).await {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a schema error, got {:?}", other.err()),
    }

    // A file that is not our database is refused too.
    let stranger = dir.path().join("other.db");
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&stranger)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(matches!(
        Store::open_read_only(&stranger).await,
        Err(StoreError::Schema(_))
    ));
}

async fn claims_take_turns_between_active_jobs(f: Fixture) {
    let first = active_job(&f.store, "big").await;
    let second = active_job(&f.store, "small").await;
    f.store
        .insert_page(first, &metas(1..=100), None, 1_000)
        .await
        .unwrap();
    f.store
        .insert_page(second, &metas(201..=210), None, 1_000)
        .await
        .unwrap();
    // Passing the job served last moves on to the next one, wrapping around.
    let mut served = Vec::new();
    let mut last = 0;
    for _ in 0..4 {
        let claimed = f
            .store
            .claim(&"w".into(), 2, LEASE, 2_000, last)
            .await
            .unwrap();
        last = claimed.last().unwrap().job_id;
        served.push(last);
    }
    assert_eq!(served, vec![first, second, first, second]);
    // Plain claim keeps its old meaning: the first active job with due rows.
    let claimed = f.store.claim_as("w", 1, LEASE, 2_000).await.unwrap();
    assert_eq!(claimed[0].job_id, first);
}

/// A stalled job can drain and finish before the next no-progress pass sees
/// its progress (a race CI once hit): finishing takes the stall message along
/// with the mark, and leaves any other error alone.
async fn finishing_a_stalled_job_clears_its_stall_message(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "stuck").await;
    s.insert_page(job, &metas(1..=1), None, 10_000)
        .await
        .unwrap();
    assert!(
        s.mark_stalled(job, 10_001, "no progress: 503", 20_000)
            .await
            .unwrap()
    );
    let c = s.claim_as("w", 1, LEASE, 21_000).await.unwrap().remove(0);
    assert!(
        s.complete(&c.lease, &ArchivedFile::loose("p", 9, None), 21_000)
            .await
            .unwrap()
    );
    let done = s.finish_job_if_drained(job, 21_001).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Done);
    assert_eq!((done.stalled_since, done.last_error), (None, None));
    assert!(s.clear_recovered_stalls(22_000).await.unwrap().is_empty());

    // An error that is not a stall message stays.
    let other = active_job(s, "listing").await;
    s.insert_page(other, &metas(2..=2), None, 30_000)
        .await
        .unwrap();
    s.set_job_error(other, Some("listing: HTTP 500 once"), 30_001)
        .await
        .unwrap();
    let c = s.claim_as("w", 1, LEASE, 31_000).await.unwrap().remove(0);
    assert!(
        s.complete(&c.lease, &ArchivedFile::loose("q", 9, None), 31_000)
            .await
            .unwrap()
    );
    let done = s
        .finish_job_if_drained(other, 31_001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.last_error.as_deref(), Some("listing: HTTP 500 once"));
}

async fn a_job_is_finished_only_while_nothing_is_pending_or_in_flight(f: Fixture) {
    let job = active_job(&f.store, "fin").await;
    // Nothing pending and nothing in flight, but the listing is not over: not done.
    f.store
        .insert_page(job, &metas([]), Some("https://h/?after=a"), 500)
        .await
        .unwrap();
    assert_eq!(counts(&f.store, job).await.discovered, 0);
    assert!(
        f.store
            .finish_job_if_drained(job, 600)
            .await
            .unwrap()
            .is_none(),
        "enumeration incomplete"
    );
    f.store
        .insert_page(job, &metas(1..=2), None, 1_000)
        .await
        .unwrap();
    assert!(
        f.store
            .finish_job_if_drained(job, 2_000)
            .await
            .unwrap()
            .is_none(),
        "pending rows"
    );
    let claimed = f.store.claim_as("w", 2, LEASE, 2_000).await.unwrap();
    assert!(
        f.store
            .finish_job_if_drained(job, 2_000)
            .await
            .unwrap()
            .is_none(),
        "in flight"
    );
    for c in &claimed {
        assert!(
            f.store
                .complete_as(c.row_id(), "w", c.lease.epoch, 10, "/x.jpg", 3_000)
                .await
                .unwrap()
        );
    }
    let done = f
        .store
        .finish_job_if_drained(job, 4_000)
        .await
        .unwrap()
        .expect("drained");
    assert_eq!(done.state, JobState::Done);
    assert!(
        f.store
            .finish_job_if_drained(job, 5_000)
            .await
            .unwrap()
            .is_none(),
        "only once"
    );
}

async fn deleted_images_fail_at_no_attempt_and_retry_leaves_them_unless_asked(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=4), None, 1_000)
        .await
        .unwrap();
    let claimed = s.claim_as("w", 2, LEASE, 2_000).await.unwrap();
    let (a, b) = (&claimed[0], &claimed[1]);
    assert!(
        s.fail_for_good(&a.lease, FailReason::Deleted, "deleted on Mapillary", 3_000)
            .await
            .unwrap()
    );
    assert!(
        s.fail_for_good(&b.lease, FailReason::Error, "invalid id", 3_000)
            .await
            .unwrap()
    );
    // A lease that is not held changes nothing.
    assert!(
        !s.fail_for_good(&a.lease, FailReason::Error, "again", 3_001)
            .await
            .unwrap()
    );
    let pending = f.raw().await.row_ids(job, "pending", 100).await;
    assert_eq!(pending.len(), 2);
    // Only pending rows are marked; a done or claimed row is left alone.
    let with_done = [pending[0], a.row_id()];
    assert_eq!(
        s.mark_pending_deleted(&with_done, "gone", 4_000)
            .await
            .unwrap(),
        1
    );
    let c = counts(s, job).await;
    assert_eq!((c.failed, c.deleted, c.pending), (3, 2, 1), "{c:?}");
    let gone = s.image_by_id(job, &a.image_id).await.unwrap().unwrap();
    assert_eq!(gone.fail_reason, Some(FailReason::Deleted));
    assert_eq!(gone.attempts, 0, "the claim's attempt was given back");
    let bad = s.image_by_id(job, &b.image_id).await.unwrap().unwrap();
    assert_eq!(bad.fail_reason, Some(FailReason::Error));
    assert_eq!(bad.attempts, 1);
    // The job moved forward: each fate is progress.
    let stored = s.find_job(job).await.unwrap().unwrap();
    assert_eq!(
        stored.progress_at.as_deref(),
        Some("1970-01-01T00:00:04.000Z")
    );

    assert_eq!(s.retry_failed(job, false, 5_000).await.unwrap(), 1);
    let c = counts(s, job).await;
    assert_eq!((c.failed, c.deleted), (2, 2), "{c:?}");
    assert_eq!(s.retry_failed(job, true, 6_000).await.unwrap(), 2);
    let c = counts(s, job).await;
    assert_eq!((c.failed, c.deleted, c.pending), (0, 0, 4), "{c:?}");
    let back = s.image_by_id(job, &a.image_id).await.unwrap().unwrap();
    assert_eq!((back.fail_reason, back.last_error), (None, None));
}

async fn deferrals_double_each_delay_up_to_the_cap_and_reset_on_completion(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas([1]), None, 0).await.unwrap();
    let policy = DeferPolicy {
        base: Duration::from_millis(1_000),
        cap: Duration::from_millis(5_000),
        jitter: 1.0,
    };
    let mut now = 10_000;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let c = s.claim_as("w", 1, LEASE, now).await.unwrap().remove(0);
        let due = s
            .defer(&c.lease, "refresh failed: 503", policy, now)
            .await
            .unwrap()
            .expect("lease held");
        delays.push(due - now);
        assert!(s.claim_as("w", 1, LEASE, due - 1).await.unwrap().is_empty());
        now = due;
    }
    assert_eq!(delays, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(
        (rec.attempts, rec.deferrals),
        (0, 5),
        "deferrals cost no attempt"
    );
    assert_eq!(rec.last_error.as_deref(), Some("refresh failed: 503"));
    let c = s.claim_as("w", 1, LEASE, now).await.unwrap().remove(0);
    // Jitter shortens a delay, never lengthens it.
    let half = DeferPolicy {
        jitter: 0.5,
        ..policy
    };
    let due = s.defer(&c.lease, "x", half, now).await.unwrap().unwrap();
    assert_eq!(due - now, 2_500);
    let c = s.claim_as("w", 1, LEASE, due).await.unwrap().remove(0);
    assert!(
        s.complete(&c.lease, &ArchivedFile::loose("p", 5, None), due)
            .await
            .unwrap()
    );
    let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
    assert_eq!(rec.deferrals, 0);
    // A lost lease defers nothing.
    assert_eq!(s.defer(&c.lease, "x", policy, due).await.unwrap(), None);
}

async fn pause_reasons_are_stored_and_cleared_by_a_resume(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    let paused = s
        .pause_job(
            job,
            &[JobState::Downloading],
            PauseReason::DiskFull,
            Some("disk full: no space"),
            2_000,
        )
        .await
        .unwrap()
        .expect("was downloading");
    assert_eq!(paused.pause_reason, Some(PauseReason::DiskFull));
    assert_eq!(paused.last_error.as_deref(), Some("disk full: no space"));
    assert_eq!(
        s.jobs_paused_for(PauseReason::DiskFull).await.unwrap(),
        vec![job]
    );
    assert!(
        s.jobs_paused_for(PauseReason::TokenRejected)
            .await
            .unwrap()
            .is_empty()
    );
    // Not from a state outside `from`.
    assert!(
        s.pause_job(
            job,
            &[JobState::Downloading],
            PauseReason::User,
            None,
            3_000
        )
        .await
        .unwrap()
        .is_none()
    );
    let resumed = s
        .reactivate_job(job, &[JobState::Paused], 4_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed.pause_reason, None);
    assert_eq!(resumed.last_error, None);
    assert_eq!(
        resumed.progress_at.as_deref(),
        Some("1970-01-01T00:00:04.000Z"),
        "a resume restarts the no-progress clock"
    );
}

/// Jobs paused by an older version carry their reason only in a message;
/// the migration turns it into `pause_reason`, the last time anything reads
/// a message.
#[tokio::test]
async fn the_migration_recovers_pause_reasons_from_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema as it was before 0003: only 0001 and 0002 applied.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let migrator = sqlx::migrate!("migrations/sqlite");
        for migration in migrator.iter().filter(|m| m.version < 3) {
            sqlx::raw_sql(migration.sql.clone())
                .execute(&pool)
                .await
                .unwrap();
        }
        let insert = "INSERT INTO jobs (username, quality, bbox_key, state, last_error, \
                      created_at, updated_at) VALUES (?, 'original', '', ?, ?, 1, 1)";
        for (user, state, error) in [
            (
                "disk",
                "paused",
                Some("disk full: cannot write /a/b.jpg (No space left on device)"),
            ),
            (
                "token",
                "paused",
                Some(
                    "listing images failed: the Mapillary token was rejected. Set a valid MAPILLARY_TOKEN, restart, then POST /jobs/1/resume",
                ),
            ),
            ("user", "paused", None),
            (
                "busy",
                "downloading",
                Some("disk full: old message on an active job"),
            ),
        ] {
            sqlx::query(insert)
                .bind(user)
                .bind(state)
                .bind(error)
                .execute(&pool)
                .await
                .unwrap();
        }
        // Record 0001 and 0002 as applied, as the old binary would have.
        sqlx::query(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for migration in migrator.iter().filter(|m| m.version < 3) {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (?, ?, 1, ?, 0)",
            )
            .bind(migration.version)
            .bind(migration.description.to_string())
            .bind(migration.checksum.to_vec())
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    let reasons: Vec<(String, Option<PauseReason>)> = store
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.username().unwrap_or_default().to_string(), j.pause_reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("disk".to_string(), Some(PauseReason::DiskFull)),
            ("token".to_string(), Some(PauseReason::TokenRejected)),
            ("user".to_string(), Some(PauseReason::User)),
            ("busy".to_string(), None),
        ]
    );
}

async fn jobs_without_progress_are_marked_stalled_and_unmarked_by_progress(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=3), None, 10_000)
        .await
        .unwrap();
    // Progress at 10 s (the page); nothing since.
    assert!(s.stall_candidates(10_000).await.unwrap().is_empty());
    let candidates = s.stall_candidates(10_001).await.unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!((candidates[0].job_id, candidates[0].waiting), (job, 3));
    let c = s.claim_as("w", 1, LEASE, 11_000).await.unwrap().remove(0);
    s.release_as(
        c.row_id(),
        "w",
        c.lease.epoch,
        11_000,
        Some("refreshing its URL failed: 503"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.latest_image_error(job).await.unwrap().as_deref(),
        Some("refreshing its URL failed: 503")
    );
    assert!(
        s.mark_stalled(job, 10_001, "no progress: 503", 20_000)
            .await
            .unwrap()
    );
    // Marked once only.
    assert!(!s.mark_stalled(job, 10_001, "again", 20_001).await.unwrap());
    assert!(s.stall_candidates(30_000).await.unwrap().is_empty());
    let stalled = s.find_job(job).await.unwrap().unwrap();
    assert_eq!(
        stalled.stalled_since.as_deref(),
        Some("1970-01-01T00:00:20.000Z")
    );
    assert_eq!(stalled.last_error.as_deref(), Some("no progress: 503"));
    assert!(s.clear_recovered_stalls(21_000).await.unwrap().is_empty());
    // An image finishing is progress: the mark and its message go.
    let c = s.claim_as("w", 1, LEASE, 22_000).await.unwrap().remove(0);
    assert!(
        s.complete(&c.lease, &ArchivedFile::loose("p", 9, None), 22_000)
            .await
            .unwrap()
    );
    assert_eq!(s.clear_recovered_stalls(23_000).await.unwrap(), vec![job]);
    let recovered = s.find_job(job).await.unwrap().unwrap();
    assert_eq!(
        (recovered.stalled_since, recovered.last_error),
        (None, None)
    );
    // A paused job is not a candidate, however old its progress.
    s.set_job_state(job, JobState::Paused, None, 24_000)
        .await
        .unwrap();
    assert!(s.stall_candidates(i64::MAX).await.unwrap().is_empty());
}

async fn a_job_task_has_one_holder_until_it_expires_and_fences_page_writes(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    let (a, b): (Arc<str>, Arc<str>) = ("daemon-a".into(), "daemon-b".into());
    let held = s
        .take_job_task(job, &a, LEASE, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.take_job_task(job, &b, LEASE, 1_000 + LEASE_MS - 1)
            .await
            .unwrap()
            .is_none(),
        "a live lease has one holder"
    );
    assert!(s.renew_job_task(&held, LEASE, 30_000).await.unwrap());
    // a stalls past its renewed lease: b takes the job over.
    let taken = s
        .take_job_task(job, &b, LEASE, 30_000 + LEASE_MS + 1)
        .await
        .unwrap()
        .unwrap();
    assert!(taken.epoch > held.epoch);
    assert!(!s.renew_job_task(&held, LEASE, 100_000).await.unwrap());
    // a wakes up and writes a page: refused, nothing changes.
    let part = s.current_part(job).await.unwrap().unwrap();
    let err = s
        .store_page(PageWrite {
            job_id: job,
            part: part.seq,
            images: &metas(1..=3),
            missing: &[],
            step: PartStep::Next("https://h/?after=stale"),
            task: Some(&held),
            now_ms: 100_000,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LostJobTask(id) if id == job),
        "{err}"
    );
    assert_eq!(counts(s, job).await.discovered, 0);
    assert_eq!(s.job_cursor(job).await.unwrap(), None);
    // Nor can it finish the job.
    let err = s
        .finish_job_clearing(job, 100_000, false, Some(&held))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LostJobTask(id) if id == job),
        "{err}"
    );
    // The holder's page goes in.
    let stored = s
        .store_page(PageWrite {
            job_id: job,
            part: part.seq,
            images: &metas(1..=3),
            missing: &[],
            step: PartStep::Next("https://h/?after=c1"),
            task: Some(&taken),
            now_ms: 100_001,
        })
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // Released: the next taker need not wait for the expiry.
    s.release_job_task(&taken).await.unwrap();
    s.release_job_task(&held).await.unwrap();
    assert!(
        s.take_job_task(job, &a, LEASE, 100_002)
            .await
            .unwrap()
            .is_some()
    );
}

async fn daemons_beat_and_the_silent_ones_drop_out_of_the_live_list(f: Fixture) {
    let s = &f.store;
    let daemon = |id: &str, host: &str| DaemonInfo {
        id: id.into(),
        host: host.into(),
        workers: 8,
    };
    s.heartbeat(&daemon("d1", "alpha"), 10_000).await.unwrap();
    s.heartbeat(&daemon("d2", "beta"), 12_000).await.unwrap();
    s.heartbeat(&daemon("d1", "alpha"), 40_000).await.unwrap();
    let live = s
        .live_daemons(Duration::from_secs(30), 45_000)
        .await
        .unwrap();
    let seen: Vec<(&str, &str, u32, i64, Duration)> = live
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.host.as_str(),
                d.workers,
                d.started_at,
                d.heartbeat_age,
            )
        })
        .collect();
    // d2's last beat is 33 s old: not live.
    assert_eq!(seen, [("d1", "alpha", 8, 10_000, Duration::from_secs(5))]);
    s.forget_daemon("d1").await.unwrap();
    assert!(
        s.live_daemons(Duration::from_secs(30), 45_000)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn throughput_by_minute_counts_images_in_the_minute_they_finish(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=5), None, 0).await.unwrap();
    let claimed = s.claim_as("w", 5, LEASE, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 5);
    for (i, c) in claimed.iter().enumerate() {
        let at = if i < 3 { 125_000 } else { 190_000 };
        let path = format!("/x/{i}.jpg");
        assert!(
            s.complete_as(c.row_id(), "w", c.lease.epoch, 100, &path, at)
                .await
                .unwrap()
        );
        if i == 1 {
            // PostgreSQL folds its per-minute deltas now and then: reads
            // are the same on either side of a fold.
            s.fold_counts().await.unwrap();
        }
    }
    let minutes: Vec<(i64, u64, u64)> = s
        .finished_by_minute(0)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.start_ms, m.images, m.bytes))
        .collect();
    assert_eq!(minutes, [(120_000, 3, 300), (180_000, 2, 200)]);
    assert_eq!(s.finished_by_minute(180_000).await.unwrap().len(), 1);
    s.fold_counts().await.unwrap();
    assert_eq!(s.finished_by_minute(0).await.unwrap().len(), 2);
}

async fn a_collection_lease_has_one_holder_and_fences_every_packing_write(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=4), None, 0).await.unwrap();
    let claimed = s.claim_as("w", 4, LEASE, 1_000).await.unwrap();
    let collection = claimed[0].collection.clone();
    let folder = format!("/a/{collection}/2024-01-02");
    for (i, c) in claimed.iter().enumerate() {
        let path = format!("{folder}/s/{i}.jpg");
        assert!(
            s.complete_as(c.row_id(), "w", c.lease.epoch, 100, &path, 2_000)
                .await
                .unwrap()
        );
    }
    let (a, b): (Arc<str>, Arc<str>) = ("daemon-a".into(), "daemon-b".into());
    let held = s
        .take_collection_task(&collection, &a, LEASE, 10_000)
        .await
        .unwrap()
        .unwrap();
    // One holder: another daemon, or another finishing in the same one.
    for owner in [&b, &a] {
        assert!(
            s.take_collection_task(&collection, owner, LEASE, 10_000 + LEASE_MS - 1)
                .await
                .unwrap()
                .is_none(),
            "a live lease has one holder"
        );
    }
    assert!(
        s.take_collection_task("mapillary-bob-original", &b, LEASE, 10_001)
            .await
            .unwrap()
            .is_some(),
        "another collection packs meanwhile"
    );
    let packing = s
        .plan_packing(&held, "2024-01-02", &folder, "2024-01-02.tar", 11_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(packing.members, 4);
    let tar = format!("/a/{collection}/2024-01-02.tar");
    s.record_upload(&held, "upload-1", &tar, 11_500)
        .await
        .unwrap();
    assert!(s.renew_collection_task(&held, LEASE, 30_000).await.unwrap());
    // a stalls past its renewed lease: b takes the collection over.
    let taken = s
        .take_collection_task(&collection, &b, LEASE, 30_000 + LEASE_MS + 1)
        .await
        .unwrap()
        .unwrap();
    assert!(taken.epoch > held.epoch);
    assert!(
        !s.renew_collection_task(&held, LEASE, 100_000)
            .await
            .unwrap()
    );
    // a wakes up: every packing write it tries is refused, nothing moves.
    let lost = |e: StoreError| matches!(&e, StoreError::LostCollectionTask(c) if *c == collection);
    let written = TarWritten {
        members: 4,
        bytes: 10_240,
        sha256: "ab".repeat(32),
        ..Default::default()
    };
    assert!(lost(s.check_collection_task(&held).await.unwrap_err()));
    assert!(lost(
        s.mark_packing_written(&held, &packing, &written, 100_000)
            .await
            .unwrap_err()
    ));
    assert!(lost(
        s.abandon_empty_packing(&held, &packing, &TarWritten::default(), 100_000)
            .await
            .unwrap_err()
    ));
    assert!(lost(
        s.mark_packing_cleaned(&held, &packing).await.unwrap_err()
    ));
    assert!(lost(
        s.plan_packing(&held, "2024-01-02", &folder, "2024-01-02.1.tar", 100_000)
            .await
            .unwrap_err()
    ));
    assert!(lost(
        s.record_upload(&held, "upload-2", &tar, 100_000)
            .await
            .unwrap_err()
    ));
    let now = s.packing(packing.id).await.unwrap().unwrap();
    assert_eq!((now.state, now.members), (PackingState::Planned, 4));
    assert_eq!(s.packings(&collection).await.unwrap().len(), 1);
    // b finds the upload a began (to abort it), and moves the packing on.
    let left: Vec<String> = s
        .recorded_uploads(&collection)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(left, ["upload-1"]);
    s.forget_upload("upload-1").await.unwrap();
    assert!(s.recorded_uploads(&collection).await.unwrap().is_empty());
    s.mark_packing_written(&taken, &packing, &written, 100_001)
        .await
        .unwrap();
    s.mark_packing_cleaned(&taken, &packing).await.unwrap();
    assert_eq!(
        s.packing(packing.id).await.unwrap().unwrap().state,
        PackingState::Cleaned
    );
    // Released: the next taker need not wait for the expiry; releasing a
    // lost lease leaves the holder's alone.
    s.release_collection_task(&held).await.unwrap();
    assert!(
        s.take_collection_task(&collection, &a, LEASE, 100_002)
            .await
            .unwrap()
            .is_none()
    );
    s.release_collection_task(&taken).await.unwrap();
    assert!(
        s.take_collection_task(&collection, &a, LEASE, 100_002)
            .await
            .unwrap()
            .is_some()
    );
}

/// Claims and completes every pending image, each at `/a/<image id>.jpg`
/// (no checksum), whichever job it belongs to.
async fn complete_everything(s: &Store, now: i64) {
    loop {
        let claimed = s.claim_as("w", 10, LEASE, now).await.unwrap();
        if claimed.is_empty() {
            return;
        }
        for c in &claimed {
            let path = format!("/a/{}.jpg", c.image_id);
            assert!(
                s.complete_as(c.row_id(), "w", c.lease.epoch, 10, &path, now)
                    .await
                    .unwrap()
            );
        }
    }
}

/// `verify` and `--repair`'s store paths: the done total, the rows sharing
/// one copy, a re-queue of every sharer that reopens their finished jobs,
/// and a checksum recorded once and never overwritten.
async fn verify_counts_sharers_requeues_and_records_checksums(f: Fixture) {
    let s = &f.store;
    let a = active_job(s, "alice").await;
    // Same collection as `a` (same user and quality), another selection.
    let bbox = Bbox::new(0.0, 0.0, 1.0, 1.0).unwrap();
    let b = s
        .create_job("alice", Quality::Original, Some(bbox), 0)
        .await
        .unwrap()
        .id;
    s.set_job_state(b, JobState::Downloading, None, 0)
        .await
        .unwrap();
    s.insert_page(a, &metas([1, 2]), None, 0).await.unwrap();
    s.insert_page(b, &metas([1]), None, 0).await.unwrap();
    complete_everything(s, 5).await;
    assert_eq!(s.done_rows(None).await.unwrap(), 3);
    assert_eq!(s.done_rows(Some(a)).await.unwrap(), 2);
    assert_eq!(s.done_rows(Some(b)).await.unwrap(), 1);

    let raw = f.raw().await;
    let (one_a, one_b, two_a) = (
        raw.row_of(a, "1").await,
        raw.row_of(b, "1").await,
        raw.row_of(a, "2").await,
    );
    let mut sharers = s.copy_sharers(one_a).await.unwrap();
    sharers.sort();
    assert_eq!(sharers, vec![(one_a, false), (one_b, false)]);
    assert_eq!(s.copy_sharers(two_a).await.unwrap(), vec![(two_a, false)]);

    let sha = "ab".repeat(32);
    s.record_checksum(two_a, &sha, 10).await.unwrap();
    s.record_checksum(two_a, &"cd".repeat(32), 11)
        .await
        .unwrap();
    let two = s.image_by_id(a, "2").await.unwrap().unwrap();
    assert_eq!(
        (two.sha256.as_deref(), two.bytes),
        (Some(sha.as_str()), Some(10))
    );

    for job in [a, b] {
        assert!(s.finish_job_if_drained(job, 6).await.unwrap().is_some());
    }
    assert_eq!(
        s.requeue_images(&[one_a, one_b], "corrupt", 20)
            .await
            .unwrap(),
        2
    );
    for job in [a, b] {
        let rec = s.image_by_id(job, "1").await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempts, rec.run_at, rec.path, rec.sha256),
            (ImageState::Pending, 0, 20, None, None)
        );
        assert_eq!(rec.last_error.as_deref(), Some("corrupt"));
        let job = s.find_job(job).await.unwrap().unwrap();
        assert_eq!(
            job.state,
            JobState::Downloading,
            "a re-queue reopens its job"
        );
    }
    assert_eq!(s.done_rows(None).await.unwrap(), 1);
    // Rows no longer done are left alone.
    assert_eq!(s.requeue_images(&[one_a], "again", 30).await.unwrap(), 0);
    let c = counts(s, a).await;
    assert_eq!((c.pending, c.done, c.failed), (1, 1, 0));
}

/// A done job with a re-sync interval restarts its enumeration once
/// `next_sync_at` comes, and only once; a job without one never does.
async fn due_resyncs_restart_done_jobs_once_their_time_comes(f: Fixture) {
    let s = &f.store;
    let mut spec = JobSpec::user("alice", Quality::Original);
    spec.resync = Resync::Set(Some(Duration::from_secs(60)));
    let every = s.submit_job(&spec, 0).await.unwrap().job().id;
    let never = active_job(s, "bob").await;
    s.set_job_state(every, JobState::Downloading, None, 0)
        .await
        .unwrap();
    for job in [every, never] {
        s.insert_page(job, &metas([1]), None, 1_000).await.unwrap();
    }
    complete_everything(s, 1_500).await;
    for job in [every, never] {
        assert!(s.finish_job_if_drained(job, 2_000).await.unwrap().is_some());
    }
    let done = s.find_job(every).await.unwrap().unwrap();
    assert!(done.next_sync_at.is_some());

    assert!(s.start_due_resyncs(61_999).await.unwrap().is_empty());
    assert_eq!(s.start_due_resyncs(62_000).await.unwrap(), vec![every]);
    assert!(s.start_due_resyncs(99_000).await.unwrap().is_empty());
    let job = s.find_job(every).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Enumerating);
    assert!(!job.enumeration_complete);
    assert_eq!(job.next_sync_at, None);
    assert!(s.current_part(every).await.unwrap().is_some());
    assert_eq!(
        s.find_job(never).await.unwrap().unwrap().state,
        JobState::Done
    );
    // Only new images are added.
    assert_eq!(
        s.insert_page(every, &metas([1, 2]), None, 63_000)
            .await
            .unwrap(),
        1
    );
}

/// A graceful stop hands back only its own leases: those rows are pending,
/// due now, with their attempt returned; another owner's stay in flight and
/// still complete; nothing fails.
async fn hand_back_leases_of_returns_only_that_owners_rows(f: Fixture) {
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=4), None, 0).await.unwrap();
    let mine = s.claim_as("a", 2, LEASE, 0).await.unwrap();
    let theirs = s.claim_as("b", 2, LEASE, 0).await.unwrap();
    assert_eq!((mine.len(), theirs.len()), (2, 2));

    assert_eq!(s.hand_back_leases_of("a", 500).await.unwrap(), 2);
    for c in &mine {
        let rec = s.image_by_id(job, &c.image_id).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempts, rec.run_at, rec.lease_owner),
            (ImageState::Pending, 0, 500, None)
        );
    }
    for c in &theirs {
        let rec = s.image_by_id(job, &c.image_id).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempts, rec.lease_owner.as_deref()),
            (ImageState::InProgress, 1, Some("b"))
        );
    }
    let c = counts(s, job).await;
    assert_eq!((c.pending, c.in_progress, c.failed), (2, 2, 0));
    assert!(
        !s.complete_as(mine[0].row_id(), "a", mine[0].lease.epoch, 9, "p", 600)
            .await
            .unwrap()
    );
    assert!(
        s.complete_as(theirs[0].row_id(), "b", theirs[0].lease.epoch, 9, "q", 600)
            .await
            .unwrap()
    );
    assert!(s.failed_images(job, 10).await.unwrap().is_empty());
    assert_eq!(s.hand_back_leases_of("a", 700).await.unwrap(), 0);
}

/// Runs each listed test on a SQLite file and on a PostgreSQL database: one
/// suite, so the two implementations of the store cannot drift apart.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::fixture().await).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::pg_fixture().await).await
            })*
        }
    };
}

on_both_backends!(
    a_collection_lease_has_one_holder_and_fences_every_packing_write,
    throughput_by_minute_counts_images_in_the_minute_they_finish,
    daemons_beat_and_the_silent_ones_drop_out_of_the_live_list,
    a_job_task_has_one_holder_until_it_expires_and_fences_page_writes,
    jobs_are_created_found_by_key_and_listed,
    page_insert_is_idempotent_and_stores_the_cursor,
    a_failing_page_insert_leaves_rows_and_cursor_unchanged,
    claim_respects_limit_order_run_at_and_job_state,
    paused_and_cancelled_jobs_are_not_claimed,
    an_expired_lease_is_reclaimed_as_a_new_attempt,
    complete_is_fenced_by_owner_and_epoch,
    a_stale_holder_cannot_complete_a_row_retried_and_claimed_again_on_its_attempt_number,
    fail_backs_off_then_fails_for_good_and_retry_requeues,
    release_costs_no_attempt,
    reset_in_flight_returns_rows_and_their_attempts,
    two_jobs_with_the_same_image_are_independent,
    rows_sharing_a_loose_file_take_the_last_writers_checksum,
    finished_images_page_by_capture_time_with_missing_times_last,
    update_urls_stores_refreshed_urls,
    counters_always_equal_a_group_by_count,
    concurrent_claimers_never_share_a_row,
    claims_take_turns_between_active_jobs,
    finishing_a_stalled_job_clears_its_stall_message,
    a_job_is_finished_only_while_nothing_is_pending_or_in_flight,
    deleted_images_fail_at_no_attempt_and_retry_leaves_them_unless_asked,
    deferrals_double_each_delay_up_to_the_cap_and_reset_on_completion,
    pause_reasons_are_stored_and_cleared_by_a_resume,
    jobs_without_progress_are_marked_stalled_and_unmarked_by_progress,
    verify_counts_sharers_requeues_and_records_checksums,
    due_resyncs_restart_done_jobs_once_their_time_comes,
    hand_back_leases_of_returns_only_that_owners_rows,
);

#[tokio::test]
async fn postgres_leases_and_times_come_from_the_database_clock() {
    let url = PgCluster::shared().fresh_database();
    let store = Store::open_postgres(&url, PgClock::Database).await.unwrap();
    let job = active_job(&store, "alice").await;
    store
        .insert_page(job, &metas(1..=3), None, 0)
        .await
        .unwrap();
    // A daemon whose clock says 1970 (or any skew): the lease still runs
    // from the database's now.
    let claimed = store.claim_as("w", 1, LEASE, 0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let db_now: i64 = {
        let pool = PgPoolOptions::new().connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT mld_now_ms()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let row = store
        .image_by_id(job, &claimed[0].image_id)
        .await
        .unwrap()
        .unwrap();
    let until = row.lease_until.unwrap();
    assert!(
        (until - (db_now + LEASE_MS)).abs() < 10_000,
        "lease until {until}, database now {db_now}"
    );
    assert!(
        (row.updated_at - db_now).abs() < 10_000,
        "{}",
        row.updated_at
    );
    // Another daemon, its clock far ahead, cannot take the row over early.
    let other = store.claim_as("w2", 10, LEASE, i64::MAX / 4).await.unwrap();
    assert!(
        other.iter().all(|c| c.image_id != claimed[0].image_id),
        "a skewed clock took over a live lease"
    );
    // A daemon far ahead hands its image back: due at the database's now,
    // not in that daemon's future.
    let back = &other[0];
    assert!(
        store
            .release(&back.lease, Duration::ZERO, None, i64::MAX / 4)
            .await
            .unwrap()
    );
    let again = store.claim_as("w3", 10, LEASE, 0).await.unwrap();
    assert!(
        again.iter().any(|c| c.image_id == back.image_id),
        "a released image waits for a skewed clock's now"
    );
}

#[tokio::test]
async fn postgres_daemons_sharing_one_database_never_share_a_row() {
    let url = PgCluster::shared().fresh_database();
    let first = Arc::new(Store::open_postgres(&url, PgClock::Database).await.unwrap());
    let job = active_job(&first, "alice").await;
    first
        .insert_page(job, &metas(1..=600), None, 0)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for daemon in 0..3 {
        // Each "daemon" has a store (a pool) of its own.
        let store = Arc::new(Store::open_postgres(&url, PgClock::Database).await.unwrap());
        for worker in 0..4 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(drain_as(
                store,
                format!("d{daemon}-w{worker}"),
                5,
            )));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 600);
    assert_eq!(unique.len(), 600);
    let counts = counts(&first, job).await;
    assert_eq!(
        (counts.done, counts.pending, counts.in_progress),
        (600, 0, 0)
    );
    first.fold_counts().await.unwrap();
    assert_eq!(
        first.find_job(job).await.unwrap().unwrap().counts,
        counts,
        "a fold changes no count"
    );
}

#[tokio::test]
async fn postgres_api_budget_spaces_the_clusters_calls_and_shares_a_hold() {
    let url = PgCluster::shared().fresh_database();
    let first = Store::open_postgres(&url, PgClock::Database).await.unwrap();
    let second = Store::open_postgres(&url, PgClock::Database).await.unwrap();
    assert!(first.shares_api_budget());
    let interval = Duration::from_secs(10);
    // A burst of 2 (one interval of tolerance): two calls now, whichever
    // daemon makes them, then the third waits about one interval.
    assert_eq!(
        first.take_api_slot(interval, interval).await.unwrap(),
        ApiSlot::Now
    );
    assert_eq!(
        second.take_api_slot(interval, interval).await.unwrap(),
        ApiSlot::Now
    );
    match first.take_api_slot(interval, interval).await.unwrap() {
        ApiSlot::After(wait) => assert!(
            wait > Duration::from_secs(9) && wait <= interval,
            "{wait:?}"
        ),
        other => panic!("the third call of a burst of 2 must wait: {other:?}"),
    }
    // A rate limit one daemon met holds the other's calls too.
    second
        .hold_api_calls(Duration::from_secs(120))
        .await
        .unwrap();
    match first.take_api_slot(interval, interval).await.unwrap() {
        ApiSlot::Held(hold) => assert!(hold > Duration::from_secs(110), "{hold:?}"),
        other => panic!("a held budget must hold every daemon: {other:?}"),
    }
    // SQLite keeps no shared budget: its one daemon's limiter is the budget.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("m.db")).await.unwrap();
    assert!(!sqlite.shares_api_budget());
}

#[tokio::test]
async fn postgres_readers_never_migrate_and_refuse_a_schema_that_is_not_theirs() {
    let url = PgCluster::shared().fresh_database();
    let message = |r: StoreResult<Store>| match r {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };
    let err = message(Store::open_postgres_existing(&url).await);
    assert!(err.contains("no queue yet"), "{err}");
    let raw = PgPoolOptions::new().connect(&url).await.unwrap();
    let created: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert!(!created, "a reader created the schema");
    Store::open_postgres(&url, PgClock::Database)
        .await
        .unwrap()
        .close()
        .await;
    let reader = Store::open_postgres_existing(&url).await.unwrap();
    assert!(reader.list_jobs().await.unwrap().is_empty());
    reader.close().await;
    // A daemon of a later version migrated it further.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&raw)
    .await
    .unwrap();
    let err = message(Store::open_postgres_existing(&url).await);
    assert!(err.contains("newer than this binary"), "{err}");
    // Or an older one set it up, and no daemon of this version ran yet.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version IN (99999, 4)")
        .execute(&raw)
        .await
        .unwrap();
    let err = message(Store::open_postgres_existing(&url).await);
    assert!(err.contains("older than this binary"), "{err}");
}

// Heartbeat rescue (PostgreSQL).
use mapillary_downloader::store::Rescued;

/// A daemon of the cluster as it announces itself.
fn daemon_named(id: &str) -> DaemonInfo {
    DaemonInfo {
        id: id.into(),
        host: "h".into(),
        workers: 8,
    }
}

const DEAD_AFTER: Duration = Duration::from_secs(20);

/// SPEC "Nothing lost, nothing stuck": a daemon whose heartbeat is older
/// than `cluster.dead_after_secs` is dead; a live one hands its image
/// leases back (the attempt counted as on a lease expiry, the rows at the
/// head of the queue), frees its job and collection tasks and removes its
/// row. A daemon still beating is left alone, and the dead one, should it
/// wake, has every write refused. PostgreSQL only: on SQLite one daemon
/// runs, and its start-up reset is the rescue.
#[tokio::test]
async fn postgres_a_silent_daemons_work_is_rescued_and_its_late_writes_refused() {
    let f = pg_fixture().await;
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=10), None, 0).await.unwrap();
    // "dead" beat last at 1 s; "quiet" at 6 s (19 s silent at 25 s: not
    // dead yet); "live" beats on.
    s.heartbeat(&daemon_named("dead"), 1_000).await.unwrap();
    s.heartbeat(&daemon_named("quiet"), 6_000).await.unwrap();
    s.heartbeat(&daemon_named("live"), 6_000).await.unwrap();
    let dead_rows = s.claim_as("dead", 3, LEASE, 2_000).await.unwrap();
    let quiet_rows = s.claim_as("quiet", 2, LEASE, 2_000).await.unwrap();
    assert_eq!((dead_rows.len(), quiet_rows.len()), (3, 2));
    let collection = dead_rows[0].collection.clone();
    let (dead, quiet, live): (Arc<str>, Arc<str>, Arc<str>) =
        ("dead".into(), "quiet".into(), "live".into());
    let dead_task = s
        .take_job_task(job, &dead, LEASE, 2_000)
        .await
        .unwrap()
        .unwrap();
    let dead_packing = s
        .take_collection_task(&collection, &dead, LEASE, 2_000)
        .await
        .unwrap()
        .unwrap();
    let quiet_packing = s
        .take_collection_task("mapillary-bob-original", &quiet, LEASE, 2_000)
        .await
        .unwrap()
        .unwrap();
    s.heartbeat(&daemon_named("live"), 24_000).await.unwrap();

    let rescued = s
        .rescue_dead_daemons("live", DEAD_AFTER, 25_000)
        .await
        .unwrap();
    assert_eq!(
        rescued,
        [Rescued {
            daemon: "dead".into(),
            silent_for: Duration::from_secs(24),
            images: 3,
            job_tasks: 1,
            collection_tasks: 1,
        }]
    );
    // Its rows are pending, unowned, their attempt still counted.
    for claimed in &dead_rows {
        let row = s
            .image_by_id(job, &claimed.image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, ImageState::Pending, "{}", claimed.image_id);
        assert_eq!((row.attempts, row.lease_owner), (1, None));
    }
    // The quiet daemon's work is untouched.
    for claimed in &quiet_rows {
        let row = s
            .image_by_id(job, &claimed.image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, ImageState::InProgress);
        assert_eq!(row.lease_owner.as_deref(), Some("quiet"));
    }
    assert!(
        s.take_collection_task("mapillary-bob-original", &live, LEASE, 25_000)
            .await
            .unwrap()
            .is_none(),
        "a live daemon's packing was freed"
    );
    // The row is gone; the others are listed still.
    let listed: Vec<String> = s
        .live_daemons(Duration::from_secs(3600), 25_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ["live", "quiet"]);
    // Its tasks are free at once (their leases run until 62 s).
    let taken_task = s
        .take_job_task(job, &live, LEASE, 25_000)
        .await
        .unwrap()
        .expect("the dead daemon's job task is free");
    assert!(taken_task.epoch > dead_task.epoch);
    let taken_packing = s
        .take_collection_task(&collection, &live, LEASE, 25_000)
        .await
        .unwrap()
        .expect("the dead daemon's packing is free");
    assert!(taken_packing.epoch > dead_packing.epoch);
    // The next claim takes its images first, ahead of the pending rows due
    // since: as the claim takes an expired lease first. Each is a second
    // attempt, as a lease expiry would have made it.
    let again = s.claim_as("live", 3, LEASE, 25_000).await.unwrap();
    let mut want: Vec<&str> = dead_rows.iter().map(|c| c.image_id.as_str()).collect();
    let mut got: Vec<&str> = again.iter().map(|c| c.image_id.as_str()).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    assert!(again.iter().all(|c| c.lease.attempt == 2), "{again:?}");
    // Compare: the quiet daemon's leases left to expire, then reclaimed.
    let expired = s.claim_as("live", 2, LEASE, 62_001).await.unwrap();
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|c| c.lease.attempt == 2), "{expired:?}");

    // The dead daemon was only paused: it wakes and every write it tries
    // is refused; nothing it writes lands.
    let old = &dead_rows[0];
    assert!(
        !s.complete_as(
            old.row_id(),
            "dead",
            old.lease.epoch,
            100,
            "/x/late.jpg",
            26_000
        )
        .await
        .unwrap()
    );
    let policy = RetryPolicy {
        max_attempts: 6,
        retry_at_ms: 27_000,
    };
    let failed = s.fail(&dead_rows[1].lease, "late", policy, 26_000).await;
    assert!(matches!(failed.unwrap(), FailOutcome::LeaseLost));
    assert!(
        !s.release(&dead_rows[2].lease, Duration::ZERO, None, 26_000)
            .await
            .unwrap()
    );
    assert!(!s.renew_job_task(&dead_task, LEASE, 26_000).await.unwrap());
    let err = s
        .finish_job_clearing(job, 26_000, false, Some(&dead_task))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LostJobTask(_)), "{err}");
    assert!(matches!(
        s.check_collection_task(&dead_packing).await.unwrap_err(),
        StoreError::LostCollectionTask(_)
    ));
    assert!(
        !s.renew_collection_task(&dead_packing, LEASE, 26_000)
            .await
            .unwrap()
    );
    for claimed in &again {
        let row = s
            .image_by_id(job, &claimed.image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, ImageState::InProgress);
        assert_eq!(row.lease_owner.as_deref(), Some("live"));
        assert_eq!(row.path, None);
    }
    assert_eq!(counts(s, job).await.discovered, 10);
    // It beats again: back in the list, and not rescued while it beats.
    s.heartbeat(&daemon_named("dead"), 26_000).await.unwrap();
    assert!(
        s.rescue_dead_daemons("live", DEAD_AFTER, 25_500)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.live_daemons(Duration::from_secs(3600), 26_000)
            .await
            .unwrap()
            .len(),
        3
    );
    s.release_collection_task(&quiet_packing).await.unwrap();
}

/// The rescue's fence: a daemon found silent that beats before its rescue
/// runs is not rescued, and of two rescuers only one rescues a daemon
/// (told apart by the report, and by the rows: each handed back once).
#[tokio::test]
async fn postgres_a_dead_daemon_is_rescued_once_and_a_late_beat_saves_it() {
    let f = pg_fixture().await;
    let url = f.url.clone().unwrap();
    let s = &f.store;
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=40), None, 0).await.unwrap();
    // Found silent at 25 s; beats at 24.5 s before the rescue reaches it.
    s.heartbeat(&daemon_named("late"), 1_000).await.unwrap();
    s.claim_as("late", 2, LEASE, 1_000).await.unwrap();
    s.heartbeat(&daemon_named("late"), 24_500).await.unwrap();
    assert_eq!(
        s.rescue_daemon("late", DEAD_AFTER, 25_000).await.unwrap(),
        None
    );
    assert_eq!(counts(s, job).await.in_progress, 2);
    // The same daemon, rescued once: a second rescue finds nothing to do.
    assert!(
        s.rescue_daemon("late", DEAD_AFTER, 45_000)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.rescue_daemon("late", DEAD_AFTER, 45_000).await.unwrap(),
        None
    );
    // Twelve dead daemons with two leases each, two rescuers at once, each
    // on a pool of its own.
    for i in 0..12 {
        let id = format!("gone-{i}");
        s.heartbeat(&daemon_named(&id), 50_000).await.unwrap();
        assert_eq!(s.claim_as(&id, 2, LEASE, 50_000).await.unwrap().len(), 2);
    }
    let other = Store::open_postgres(&url, PgClock::Caller).await.unwrap();
    let (first, second) = tokio::join!(
        s.rescue_dead_daemons("r1", DEAD_AFTER, 80_000),
        other.rescue_dead_daemons("r2", DEAD_AFTER, 80_000),
    );
    let all: Vec<Rescued> = first.unwrap().into_iter().chain(second.unwrap()).collect();
    let mut names: Vec<&str> = all.iter().map(|r| r.daemon.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<String> = (0..12).map(|i| format!("gone-{i}")).collect();
    want.sort_unstable();
    assert_eq!(names, want, "each dead daemon rescued exactly once");
    assert!(all.iter().all(|r| r.images == 2), "{all:?}");
    let c = counts(s, job).await;
    assert_eq!((c.in_progress, c.pending), (0, 40));
    other.close().await;
}

/// Pages of `job`'s images that `filter` selects, `limit` at a time, by
/// following each page's last id: every image id in order.
async fn page_through(
    s: &Store,
    job: i64,
    filter: &mapillary_downloader::store::ImageFilter,
    limit: u32,
) -> Vec<mapillary_downloader::store::ListedImage> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .job_images(job, filter, after.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        assert!(
            !page.more || page.items.len() == limit as usize,
            "more is set only on a full page"
        );
        after = page.items.last().map(|i| i.image_id.clone());
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// A job of 10,000 images, 9,000 deleted on Mapillary, 300 failed with an
/// error, 50 done, the rest pending: each listing pages through exactly
/// (no repeats, none missing, in image id order), whatever the page size.
async fn failed_images_of_a_10000_image_job_page_through_exactly(f: Fixture) {
    use mapillary_downloader::store::ImageFilter;
    let s = &f.store;
    let job = active_job(s, "alice").await;
    let other = active_job(s, "bob").await;
    s.insert_page(job, &metas(1..=10_000), None, 1_000)
        .await
        .unwrap();
    s.insert_page(other, &metas(1..=20), None, 1_000)
        .await
        .unwrap();
    s.set_job_state(other, JobState::Paused, None, 1_000)
        .await
        .unwrap();
    let raw = f.raw().await;
    let pending = raw.row_ids(job, "pending", 9_000).await;
    assert_eq!(
        s.mark_pending_deleted(&pending, "deleted on Mapillary", 2_000)
            .await
            .unwrap(),
        9_000
    );
    let claimed = s.claim_as("w", 350, LEASE, 3_000).await.unwrap();
    assert_eq!(claimed.len(), 350);
    for c in &claimed[..300] {
        let error = format!("HTTP 500 for {} (access_token=MLY|9|leak)", c.image_id);
        s.fail_as(c.row_id(), "w", c.lease.epoch, &error, 1, 4_000, 4_000)
            .await
            .unwrap();
    }
    for c in &claimed[300..] {
        let path = format!("/a/archive/mapillary-alice-original/x/{}.jpg", c.image_id);
        assert!(
            s.complete_as(c.row_id(), "w", c.lease.epoch, 10, &path, 5_000)
                .await
                .unwrap()
        );
    }
    let errors: HashSet<String> = claimed[..300].iter().map(|c| c.image_id.clone()).collect();
    let done: HashSet<String> = claimed[300..].iter().map(|c| c.image_id.clone()).collect();
    let want = |pick: &dyn Fn(u64) -> bool| -> Vec<String> {
        let mut ids: Vec<String> = (1..=10_000u64)
            .filter(|&i| pick(i))
            .map(|i| i.to_string())
            .collect();
        ids.sort();
        ids
    };
    let ids = |images: &[mapillary_downloader::store::ListedImage]| -> Vec<String> {
        images.iter().map(|i| i.image_id.clone()).collect()
    };
    let failed_filter = ImageFilter {
        state: Some(ImageState::Failed),
        reason: None,
    };
    let all_failed = want(&|i| i <= 9_000 || errors.contains(&i.to_string()));
    assert_eq!(all_failed.len(), 9_300);
    for limit in [1_000, 97, 9_300] {
        let failed = page_through(s, job, &failed_filter, limit).await;
        assert_eq!(ids(&failed), all_failed, "failed images, pages of {limit}");
        assert!(
            failed
                .iter()
                .all(|i| i.job_id == job && i.state == ImageState::Failed)
        );
    }
    let by_reason = |reason| ImageFilter {
        state: None,
        reason: Some(reason),
    };
    let deleted = page_through(s, job, &by_reason(FailReason::Deleted), 333).await;
    assert_eq!(ids(&deleted), want(&|i| i <= 9_000));
    assert!(
        deleted
            .iter()
            .all(|i| i.fail_reason == Some(FailReason::Deleted)
                && i.last_error.as_deref() == Some("deleted on Mapillary")
                && i.attempts == 0)
    );
    let failing = page_through(s, job, &by_reason(FailReason::Error), 7).await;
    assert_eq!(ids(&failing), want(&|i| errors.contains(&i.to_string())));
    for image in &failing {
        let error = image.last_error.as_deref().unwrap();
        assert!(error.starts_with("HTTP 500 for"), "{error}");
        assert!(
            !error.contains("MLY|") && !error.contains("leak"),
            "a token in {error}"
        );
        assert_eq!(
            (image.attempts, image.sequence.as_deref()),
            (1, Some("seqA"))
        );
        assert!(
            image
                .captured_at
                .as_deref()
                .unwrap()
                .starts_with("2020-09-13T")
        );
        assert_eq!(image.path, None);
    }
    let finished = ImageFilter {
        state: Some(ImageState::Done),
        reason: None,
    };
    let listed = page_through(s, job, &finished, 20).await;
    assert_eq!(ids(&listed), want(&|i| done.contains(&i.to_string())));
    // No archive root recorded yet: cut at the archive folder.
    for image in &listed {
        assert_eq!(
            image.path.as_deref(),
            Some(format!("mapillary-alice-original/x/{}.jpg", image.image_id).as_str())
        );
    }
    let pending_filter = ImageFilter {
        state: Some(ImageState::Pending),
        reason: None,
    };
    let waiting = page_through(s, job, &pending_filter, 100).await;
    assert_eq!(waiting.len(), 10_000 - 9_300 - 50);
    let everything = page_through(s, job, &ImageFilter::default(), 1_000).await;
    assert_eq!(ids(&everything), want(&|_| true), "every image once");
    // In flight: the few leased rows, read through `images_leased`.
    let leased = s.claim_as("w", 7, LEASE, 6_000).await.unwrap();
    let mut in_flight: Vec<String> = leased.iter().map(|c| c.image_id.clone()).collect();
    in_flight.sort();
    let in_progress = ImageFilter {
        state: Some(ImageState::InProgress),
        reason: None,
    };
    assert_eq!(ids(&page_through(s, job, &in_progress, 3).await), in_flight);
    // A page of failed images is a seek on their own partial index (pinned
    // on SQLite with INDEXED BY, where a wrong name is an error; chosen by
    // PostgreSQL's planner). The dense states have no index of their own:
    // which of the existing ones PostgreSQL walks depends on its statistics.
    if let Raw::Postgres(pool) = &raw {
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT i.image_id FROM images i LEFT JOIN packings p ON p.id = i.packing_id \
             WHERE i.job_id = $1 AND i.state = 'failed' AND i.image_id > $2 \
             ORDER BY i.image_id LIMIT 101",
        )
        .bind(job)
        .bind("5")
        .fetch_all(pool)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("images_listed_failed"), "{plan}");
    }
    // Another job's rows never show; a job without images lists nothing.
    let theirs = page_through(s, other, &ImageFilter::default(), 1_000).await;
    assert_eq!(theirs.len(), 20);
    assert!(page_through(s, 999, &failed_filter, 10).await.is_empty());
    // A reason with another state is refused.
    let wrong = ImageFilter {
        state: Some(ImageState::Done),
        reason: Some(FailReason::Error),
    };
    assert!(matches!(
        s.job_images(job, &wrong, None, 10).await,
        Err(StoreError::Invalid(_))
    ));
}

/// Jobs page by id; `recent_jobs` picks the most recently changed or
/// advanced ones; totals sum over every job.
async fn jobs_page_by_id_and_recent_ones_are_the_last_changed(f: Fixture) {
    let s = &f.store;
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(active_job(s, &format!("user{n}")).await);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.jobs_page(after, 10).await.unwrap();
        after = page.items.last().map(|j| j.id);
        seen.extend(page.items.iter().map(|j| j.id));
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, ids);
    let last = s.jobs_page(Some(ids[19]), 5).await.unwrap();
    assert!(!last.more, "exactly the last five");
    assert_eq!(last.items.len(), 5);
    // Job 3 changes last, job 7 advances last: both are among the 2 most recent.
    s.set_job_error(ids[3], Some("x"), 50_000).await.unwrap();
    s.insert_page(ids[7], &metas(1..=4), None, 60_000)
        .await
        .unwrap();
    let claimed = s.claim_as("w", 1, LEASE, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    s.complete_as(
        c.row_id(),
        "w",
        c.lease.epoch,
        99,
        "/a/archive/m/1.jpg",
        70_000,
    )
    .await
    .unwrap();
    let recent: Vec<i64> = s
        .recent_jobs(2)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let mut want = vec![ids[3], ids[7]];
    want.sort();
    assert_eq!(recent, want, "in id order");
    let totals = s.job_totals().await.unwrap();
    assert_eq!(totals.jobs, 25);
    assert_eq!(
        (
            totals.pending,
            totals.done,
            totals.bytes_done,
            totals.remaining
        ),
        (3, 1, 99, 3)
    );
}

/// A done image's path is relative to the archive root while loose (and
/// while its tar is only planned), and names the tar and its member once
/// the tar is written.
async fn listed_paths_are_archive_relative_and_name_the_tar_once_packed(f: Fixture) {
    use mapillary_downloader::store::{ImageFilter, ListedImage};
    let s = &f.store;
    s.rebase_archive(Path::new("/a/archive")).await.unwrap();
    let job = active_job(s, "alice").await;
    s.insert_page(job, &metas(1..=3), None, 0).await.unwrap();
    let claimed = s.claim_as("w", 3, LEASE, 1_000).await.unwrap();
    let collection = claimed[0].collection.clone();
    let folder = format!("/a/archive/{collection}/2024-01-02");
    for c in &claimed {
        let path = format!("{folder}/s/{}.jpg", c.image_id);
        assert!(
            s.complete_as(c.row_id(), "w", c.lease.epoch, 100, &path, 2_000)
                .await
                .unwrap()
        );
    }
    let done = ImageFilter {
        state: Some(ImageState::Done),
        reason: None,
    };
    let paths = |page: Vec<ListedImage>| -> Vec<String> {
        page.into_iter().map(|i| i.path.unwrap()).collect()
    };
    let loose = vec![
        format!("{collection}/2024-01-02/s/1.jpg"),
        format!("{collection}/2024-01-02/s/2.jpg"),
        format!("{collection}/2024-01-02/s/3.jpg"),
    ];
    let listed = s.job_images(job, &done, None, 10).await.unwrap().items;
    assert_eq!(paths(listed), loose);
    let task = s
        .take_collection_task(&collection, &"d".into(), LEASE, 10_000)
        .await
        .unwrap()
        .unwrap();
    let packing = s
        .plan_packing(&task, "2024-01-02", &folder, "2024-01-02.tar", 11_000)
        .await
        .unwrap()
        .unwrap();
    let listed = s.job_images(job, &done, None, 10).await.unwrap().items;
    assert_eq!(paths(listed), loose, "a planned tar is not the file yet");
    let written = TarWritten {
        members: 3,
        bytes: 10_240,
        sha256: "ab".repeat(32),
        ..Default::default()
    };
    s.mark_packing_written(&task, &packing, &written, 12_000)
        .await
        .unwrap();
    let listed = s.job_images(job, &done, None, 10).await.unwrap().items;
    assert_eq!(
        paths(listed),
        [1, 2, 3]
            .map(|i| format!("{collection}/2024-01-02.tar#2024-01-02/s/{i}.jpg"))
            .to_vec()
    );
}

mod listing {
    use super::*;

    on_both_backends!(
        failed_images_of_a_10000_image_job_page_through_exactly,
        jobs_page_by_id_and_recent_ones_are_the_last_changed,
        listed_paths_are_archive_relative_and_name_the_tar_once_packed,
    );
}

/// The upload to the Internet Archive: tracks, items, files (issue 25).
mod uploads {
    use super::*;
    use mapillary_downloader::store::{
        NewUploadFile, Placed, UploadFileKind, UploadFileState, UploadState,
    };

    fn tar<'a>(name: &'a str, bytes: u64, md5: &'a str) -> NewUploadFile<'a> {
        NewUploadFile {
            kind: UploadFileKind::Tar,
            name,
            local_path: name,
            bytes,
            md5,
        }
    }

    /// A tar is placed once and never moves; the item counts what it holds;
    /// an item file with new content is pending again; progress sums the
    /// files of the job's collections.
    async fn placements_are_recorded_once_and_progress_sums_them(f: Fixture) {
        let s = &f.store;
        let job = active_job(s, "alice").await;
        s.insert_page(job, &metas(1..=1), None, 0).await.unwrap();
        assert!(s.upload_track(job).await.unwrap().is_none());
        assert!(s.enable_upload(job, 5).await.unwrap());
        assert!(!s.enable_upload(job, 6).await.unwrap(), "idempotent");
        let track = s.upload_track(job).await.unwrap().unwrap();
        assert_eq!(track.state, UploadState::Waiting);

        let collection = "mapillary-alice-original";
        let one = s.add_upload_item(collection, 1, collection).await.unwrap();
        let again = s.add_upload_item(collection, 1, collection).await.unwrap();
        assert_eq!(one.id, again.id);
        let two = s
            .add_upload_item(collection, 2, "mapillary-alice-original-2")
            .await
            .unwrap();
        assert!(
            s.add_upload_item("other", 1, collection).await.is_err(),
            "an identifier belongs to one collection"
        );

        let placed = s
            .place_upload_file(&one, &tar("2024-01-01.tar", 100, "aa"))
            .await;
        assert_eq!(placed.unwrap(), Placed::New);
        // The same tar offered to another item stays where it was placed.
        let moved = s
            .place_upload_file(&two, &tar("2024-01-01.tar", 100, "aa"))
            .await;
        assert_eq!(moved.unwrap(), Placed::Unchanged);
        s.place_upload_file(&two, &tar("2024-01-02.tar", 50, "bb"))
            .await
            .unwrap();
        let meta = |md5, bytes| NewUploadFile {
            kind: UploadFileKind::Item,
            name: "metadata.jsonl.gz",
            local_path: "/spool/m.gz",
            bytes,
            md5,
        };
        assert_eq!(
            s.place_upload_file(&one, &meta("m1", 10)).await.unwrap(),
            Placed::New
        );
        assert_eq!(
            s.place_upload_file(&one, &meta("m1", 10)).await.unwrap(),
            Placed::Unchanged
        );
        let items = s.upload_items(collection).await.unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.part, i.bytes, i.files))
                .collect::<Vec<_>>(),
            vec![(1, 110, 2), (2, 50, 1)]
        );

        let files = s.upload_files(collection).await.unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.state == UploadFileState::Pending));
        let first = &files[0];
        assert_eq!(
            (first.name.as_str(), first.item_id),
            ("2024-01-01.tar", one.id)
        );
        s.begin_file_send(first.id).await.unwrap();
        let sent = UploadFileState::Sent;
        assert!(
            s.set_file_state(first.id, UploadFileState::Pending, sent, 7)
                .await
                .unwrap()
        );
        assert!(
            !s.set_file_state(first.id, UploadFileState::Pending, sent, 7)
                .await
                .unwrap()
        );
        let meta_row = files
            .iter()
            .find(|f| f.name == "metadata.jsonl.gz")
            .unwrap();
        s.set_file_state(meta_row.id, UploadFileState::Pending, sent, 7)
            .await
            .unwrap();
        s.set_file_state(meta_row.id, sent, UploadFileState::Confirmed, 8)
            .await
            .unwrap();

        let progress = s.upload_progress(Some(job)).await.unwrap();
        assert_eq!(progress.len(), 1);
        let p = &progress[0];
        assert_eq!(
            (
                p.items,
                p.files_total,
                p.files_confirmed,
                p.bytes_sent,
                p.bytes_total
            ),
            (2, 3, 1, 110, 160)
        );

        // New content for an item file: pending again, the item's bytes follow.
        let changed = s.place_upload_file(&one, &meta("m2", 15)).await.unwrap();
        assert_eq!(changed, Placed::Changed);
        let files = s.upload_files(collection).await.unwrap();
        let meta_row = files
            .iter()
            .find(|f| f.name == "metadata.jsonl.gz")
            .unwrap();
        assert_eq!(
            (meta_row.state, meta_row.md5.as_str()),
            (UploadFileState::Pending, "m2")
        );
        let first = files.iter().find(|f| f.name == "2024-01-01.tar").unwrap();
        assert_eq!((first.state, first.attempts), (UploadFileState::Sent, 1));
        assert_eq!(s.upload_items(collection).await.unwrap()[0].bytes, 115);
    }

    /// The track moves only from the state the caller saw, with its message.
    async fn the_upload_track_moves_conditionally_with_its_error(f: Fixture) {
        let s = &f.store;
        let job = active_job(s, "bob").await;
        let other = active_job(s, "carol").await;
        s.enable_upload(job, 1).await.unwrap();
        let (w, u, p) = (
            UploadState::Waiting,
            UploadState::Uploading,
            UploadState::Paused,
        );
        assert!(s.set_upload_state(job, w, u, None, 2).await.unwrap());
        assert!(!s.set_upload_state(job, w, u, None, 3).await.unwrap());
        assert!(
            !s.set_upload_state(other, w, u, None, 3).await.unwrap(),
            "no track"
        );
        let why = "archive.org refused the keys: set IA_ACCESS_KEY";
        assert!(s.set_upload_state(job, u, p, Some(why), 4).await.unwrap());
        let tracks = s.upload_tracks().await.unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(
            (tracks[0].state, tracks[0].last_error.as_deref()),
            (p, Some(why))
        );
        let mut jobs = vec![
            s.find_job(job).await.unwrap().unwrap(),
            s.find_job(other).await.unwrap().unwrap(),
        ];
        s.with_uploads(&mut jobs).await.unwrap();
        assert_eq!(jobs[0].upload.as_ref().unwrap().state, UploadState::Paused);
        assert!(jobs[1].upload.is_none());
        let json = serde_json::to_value(&jobs[0]).unwrap();
        assert_eq!(json["upload"]["last_error"], why);
        assert_eq!(
            serde_json::to_value(&jobs[1]).unwrap()["upload"],
            serde_json::Value::Null
        );
    }

    on_both_backends!(
        placements_are_recorded_once_and_progress_sums_them,
        the_upload_track_moves_conditionally_with_its_error,
    );
}
