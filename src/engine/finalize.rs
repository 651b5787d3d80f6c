//! Finishing a job: once enumeration is complete and no image is pending or
//! in flight, write the collection's `metadata.jsonl` atomically, sweep stray
//! `.part` files, and only then mark the job done. A crash in between simply
//! repeats the whole step on restart.

use super::{EngineContext, now_ms};
use crate::archive::{self, METADATA_FILE};
use crate::store::JobState;
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
    let drained = job.enumeration_complete && job.counts.pending == 0 && job.counts.in_progress == 0;
    if !drained || !matches!(job.state, JobState::Enumerating | JobState::Downloading) {
        return Ok(false);
    }
    let collection = archive::collection_dir(&ctx.archive_dir, &job.username, job.quality)?;
    write_metadata(ctx, &job.username, job.quality, &collection).await?;
    let sweep_dir = collection.clone();
    tokio::task::spawn_blocking(move || archive::remove_part_files(&sweep_dir)).await??;
    let finished = ctx
        .store
        .transition_job(job_id, &[JobState::Enumerating, JobState::Downloading], JobState::Done, now_ms())
        .await?;
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

/// Writes every archived image of the collection (all jobs sharing the
/// username and quality write into one folder), sorted by `captured_at`.
async fn write_metadata(
    ctx: &EngineContext,
    username: &str,
    quality: crate::model::Quality,
    collection: &std::path::Path,
) -> anyhow::Result<()> {
    let target = collection.join(METADATA_FILE);
    let store = ctx.store.clone();
    let username = username.to_owned();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        archive::write_atomically(&target, |out| {
            let mut after = None;
            let mut last_id: Option<String> = None;
            loop {
                let page = handle
                    .block_on(store.collection_metadata(&username, quality, after.clone(), METADATA_PAGE))
                    .map_err(std::io::Error::other)?;
                let Some(last) = page.last() else { break };
                after = Some((last.captured_at, last.image_id.clone()));
                for row in &page {
                    // The same image in two jobs of one collection is one line.
                    if last_id.as_deref() != Some(row.image_id.as_str()) {
                        out.write_all(row.meta_json.as_bytes())?;
                        out.write_all(b"\n")?;
                        last_id = Some(row.image_id.clone());
                    }
                }
                if page.len() < METADATA_PAGE as usize {
                    break;
                }
            }
            Ok(())
        })
    })
    .await??;
    Ok(())
}
