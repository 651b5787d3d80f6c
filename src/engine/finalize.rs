//! Finishing a job: once enumeration is complete and no image is pending or
//! in flight, write the collection's `metadata.jsonl` atomically, and only
//! then mark the job done, in one conditional UPDATE that re-checks the
//! counters. A crash in between simply repeats the whole step on restart.

use super::EngineContext;
use crate::archive::{self, METADATA_FILE};
use crate::clock::now_ms;
use crate::store::{ArchivedImage, JobState, Store, StoreError};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use tracing::info;

/// Rows read per query while writing `metadata.jsonl`: memory stays flat
/// whatever the account's size (invariant 11).
const METADATA_PAGE: u32 = 2000;

/// Marks `job_id` done if its queue has drained. Returns whether it did.
pub async fn finish_job(ctx: &EngineContext, job_id: i64) -> anyhow::Result<bool> {
    let Some(job) = ctx.store.find_job(job_id).await? else {
        return Ok(false);
    };
    let drained =
        job.enumeration_complete && job.counts.pending == 0 && job.counts.in_progress == 0;
    if !drained || !matches!(job.state, JobState::Enumerating | JobState::Downloading) {
        return Ok(false);
    }
    let collection = archive::collection_dir(&ctx.archive_dir, &job.username, job.quality)?;
    write_metadata(ctx, &job.username, job.quality, &collection).await?;
    // `.part` files are removed by every failed write and swept at startup;
    // sweeping here could hit another job's write in the shared folder.
    let finished = ctx.store.finish_job_if_drained(job_id, now_ms()).await?;
    if finished.is_some() {
        info!(
            job = job_id,
            done = job.counts.done,
            failed = job.counts.failed,
            bytes = job.bytes_done,
            "job finished"
        );
    }
    Ok(finished.is_some())
}

/// Writes every archived image of the collection, sorted by `captured_at`.
/// Jobs that share a username and quality (different bboxes) share one
/// folder, so their pages are merged, each image once.
async fn write_metadata(
    ctx: &EngineContext,
    username: &str,
    quality: crate::model::Quality,
    collection: &std::path::Path,
) -> anyhow::Result<()> {
    let job_ids: Vec<i64> = ctx
        .store
        .list_jobs()
        .await?
        .into_iter()
        .filter(|j| j.username == username && j.quality == quality)
        .map(|j| j.id)
        .collect();
    let target = collection.join(METADATA_FILE);
    let store = ctx.store.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        archive::write_atomically(&target, |out| {
            let mut merge = MergedPages::new(&job_ids);
            let mut current_key = None;
            let mut written_at_key = HashSet::new();
            while let Some(image) = handle
                .block_on(merge.next(&store))
                .map_err(std::io::Error::other)?
            {
                let key = capture_order(&image);
                if current_key != Some(key) {
                    current_key = Some(key);
                    written_at_key.clear();
                }
                // The same image in two jobs of one collection is one line.
                if written_at_key.insert(image.meta.id.clone()) {
                    serde_json::to_writer(&mut *out, &image.meta)?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        })
    })
    .await??;
    Ok(())
}

fn capture_order(image: &ArchivedImage) -> i64 {
    image.meta.captured_at.unwrap_or(i64::MAX)
}

/// A k-way merge of several jobs' archived images, each job read in pages
/// in capture order, so memory holds one page per job.
struct MergedPages {
    cursors: Vec<JobCursor>,
}

struct JobCursor {
    job_id: i64,
    buffer: VecDeque<ArchivedImage>,
    after: Option<i64>,
    exhausted: bool,
}

impl MergedPages {
    fn new(job_ids: &[i64]) -> MergedPages {
        MergedPages {
            cursors: job_ids
                .iter()
                .map(|&job_id| JobCursor {
                    job_id,
                    buffer: VecDeque::new(),
                    after: None,
                    exhausted: false,
                })
                .collect(),
        }
    }

    async fn next(&mut self, store: &Store) -> Result<Option<ArchivedImage>, StoreError> {
        for cursor in &mut self.cursors {
            if cursor.buffer.is_empty() && !cursor.exhausted {
                let page = store
                    .finished_images(cursor.job_id, cursor.after, METADATA_PAGE)
                    .await?;
                cursor.exhausted = page.len() < METADATA_PAGE as usize;
                cursor.after = page.last().map(|i| i.row_id).or(cursor.after);
                cursor.buffer.extend(page);
            }
        }
        let best = self
            .cursors
            .iter_mut()
            .filter(|c| !c.buffer.is_empty())
            .min_by_key(|c| c.buffer.front().map(capture_order));
        Ok(best.and_then(|c| c.buffer.pop_front()))
    }
}
