//! [`Store`] methods written once on top of the interface: each is a
//! shorthand for an interface call, the same on both backends.

use super::{Completion, Job, JobState, Lease, Part, PartStep, Store, StoreError, StoreResult};
use crate::archive::ArchivedFile;
use crate::model::Storable;

impl Store {
    /// Every job, oldest first. O(jobs): counts are stored on the job row.
    pub async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        self.jobs_in_states(JobState::ALL).await
    }

    /// Marks job `id` done only if, at this instant, enumeration is complete
    /// and nothing is pending or in flight: a retry or re-sync that re-queued
    /// images meanwhile keeps the job open. A job with a re-sync interval
    /// gets its next due time. A stall message goes with the stall mark: the
    /// job can drain before the no-progress pass sees its progress. `None` if
    /// it did not apply.
    pub async fn finish_job_if_drained(&self, id: i64, now_ms: i64) -> StoreResult<Option<Job>> {
        self.finish_job_clearing(id, now_ms, false, None).await
    }
    /// The job's first part not done: where its enumeration stands. `None`
    /// once every part is done.
    pub async fn current_part(&self, job_id: i64) -> StoreResult<Option<Part>> {
        Ok(self.open_parts(job_id, 1).await?.pop())
    }
    /// Marks a claimed image done once its file is durable. `false` means the
    /// lease was lost (another holder or a reset); nothing changed.
    ///
    /// A file at a path that a finished packing of the same collection already
    /// holds (another job archived the image, and its date was packed while
    /// this worker adopted the loose file) joins that packing, so the row
    /// never points at a loose file packing has removed.
    pub async fn complete(
        &self,
        lease: &Lease,
        file: &ArchivedFile,
        now_ms: i64,
    ) -> StoreResult<bool> {
        Ok(self.complete_image(lease, file, now_ms).await? != Completion::LeaseLost)
    }
    /// [`Store::store_page`] for a plain listing page of the job's current
    /// part (its first part not done): `next_cursor` is the part's next page,
    /// `None` finishes it.
    pub async fn insert_page(
        &self,
        job_id: i64,
        images: &[impl Storable],
        next_cursor: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<u64> {
        let Some(part) = self.current_part(job_id).await? else {
            self.find_job(job_id)
                .await?
                .ok_or(StoreError::NoSuchJob(job_id))?;
            return Err(StoreError::Invalid(format!(
                "job {job_id} has no part left to store a page into"
            )));
        };
        let step = next_cursor.map_or(PartStep::Done, PartStep::Next);
        self.store_page(super::PageWrite {
            job_id,
            part: part.seq,
            images,
            missing: &[],
            step,
            task: None,
            now_ms,
        })
        .await
    }
}
