//! Leases on a collection's packing and finishing: one packer/finaliser per
//! collection at a time in the whole cluster (a collection's tars are
//! numbered and written from one plan, and its item files from one view of
//! its rows). Shaped like the job task lease (owner, until, epoch); every
//! packing write checks owner and epoch inside its own transaction, so a
//! process that lost the lease while stalled (on a disk, S3 or the database)
//! cannot plan, record or clean a packing after another took over.
//!
//! Also the ledger of the multipart uploads a packer has begun: what a dead
//! or stalled packer left is aborted by the next one, so no half-uploaded tar
//! lingers in the bucket, or completes late.

use super::job_tasks::millis;
use super::{Store, StoreError, StoreResult, on_postgres};
use std::sync::Arc;
use std::time::Duration;

/// The right to pack and finish one collection, as taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionTask {
    pub collection: Arc<str>,
    pub owner: Arc<str>,
    /// The collection's take count at this take; only grows.
    pub epoch: i64,
}

/// A multipart upload a packer began and did not see end.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedUpload {
    pub upload_id: String,
    /// The archive path (rooted at the archive URL) being uploaded.
    pub path: String,
}

impl Store {
    /// Takes `collection`'s lease for `owner` until `now_ms + ttl`: when
    /// nobody holds it, or its holder's lease expired. `None`: another
    /// holder (another daemon, or another job's finishing in this one).
    pub async fn take_collection_task(
        &self,
        collection: &str,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<CollectionTask>> {
        on_postgres!(self.take_collection_task(collection, owner, ttl, now_ms));
        // `excluded.until_ms - ttl` is `now_ms`.
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO collection_tasks (collection, owner, until_ms, epoch) \
             VALUES (?1, ?2, ?3 + ?4, 1) \
             ON CONFLICT (collection) DO UPDATE SET owner = excluded.owner, \
               until_ms = excluded.until_ms, epoch = collection_tasks.epoch + 1 \
             WHERE collection_tasks.owner IS NULL \
                OR collection_tasks.until_ms < excluded.until_ms - ?4 \
             RETURNING epoch",
        )
        .bind(collection)
        .bind(&**owner)
        .bind(now_ms)
        .bind(millis(ttl))
        .fetch_optional(self.writer()?)
        .await?;
        Ok(epoch.map(|epoch| CollectionTask {
            collection: collection.into(),
            owner: owner.clone(),
            epoch,
        }))
    }

    /// Extends a held lease to `now_ms + ttl`; `false` if it was lost.
    pub async fn renew_collection_task(
        &self,
        task: &CollectionTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        on_postgres!(self.renew_collection_task(task, ttl, now_ms));
        let changed = sqlx::query(
            "UPDATE collection_tasks SET until_ms = ?4 + ?5 \
             WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
        )
        .bind(&*task.collection)
        .bind(&*task.owner)
        .bind(task.epoch)
        .bind(now_ms)
        .bind(millis(ttl))
        .execute(self.writer()?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Gives a held lease up; a lost one is left alone.
    pub async fn release_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        on_postgres!(self.release_collection_task(task));
        sqlx::query(
            "UPDATE collection_tasks SET owner = NULL, until_ms = NULL \
             WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
        )
        .bind(&*task.collection)
        .bind(&*task.owner)
        .bind(task.epoch)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }

    /// `Ok` while `task` still holds its collection, else
    /// [`StoreError::LostCollectionTask`]: a last check before an effect
    /// the database cannot fence (a tar taking its name).
    pub async fn check_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        on_postgres!(self.check_collection_task(task));
        let mut conn = self.writer()?.acquire().await?;
        check_sqlite(&mut conn, task).await
    }

    /// Records a multipart upload `task`'s packer began at `path`, before
    /// any part goes up. Refused once the lease is lost: the caller aborts.
    pub async fn record_upload(
        &self,
        task: &CollectionTask,
        upload_id: &str,
        path: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        on_postgres!(self.record_upload(task, upload_id, path, now_ms));
        let mut tx = self.writer()?.begin().await?;
        check_sqlite(&mut tx, task).await?;
        sqlx::query(
            "INSERT INTO multipart_uploads (upload_id, collection, path, started_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(upload_id)
        .bind(&*task.collection)
        .bind(path)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The collection's uploads begun and not seen to end, oldest first.
    pub async fn recorded_uploads(&self, collection: &str) -> StoreResult<Vec<RecordedUpload>> {
        on_postgres!(self.recorded_uploads(collection));
        Ok(sqlx::query_as(
            "SELECT upload_id, path FROM multipart_uploads WHERE collection = ? \
             ORDER BY started_at, upload_id",
        )
        .bind(collection)
        .fetch_all(self.writer()?)
        .await?)
    }

    /// The upload completed or was aborted. Unfenced: forgetting an upload
    /// that is over is right whoever does it.
    pub async fn forget_upload(&self, upload_id: &str) -> StoreResult<()> {
        on_postgres!(self.forget_upload(upload_id));
        sqlx::query("DELETE FROM multipart_uploads WHERE upload_id = ?")
            .bind(upload_id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }
}

/// Checks, inside a packing write's transaction, that `task` still holds
/// its collection.
pub(super) async fn check_sqlite(
    conn: &mut sqlx::SqliteConnection,
    task: &CollectionTask,
) -> StoreResult<()> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM collection_tasks WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
    )
    .bind(&*task.collection)
    .bind(&*task.owner)
    .bind(task.epoch)
    .fetch_optional(&mut *conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LostCollectionTask(task.collection.to_string())),
    }
}
