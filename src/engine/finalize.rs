//! Finishing a job: once enumeration is complete and no image is pending or
//! in flight, write the `metadata.jsonl` of every collection the job wrote to
//! (atomically), and only then mark the job done, in one conditional UPDATE
//! that re-checks the counters. A crash in between simply repeats the whole
//! step on restart.

use super::EngineContext;
use crate::archive::{self, METADATA_FILE};
use crate::clock::now_ms;
use crate::store::{JobState, Store};
use std::io::Write;
use tracing::info;

/// Rows read per query while writing `metadata.jsonl`: memory stays flat
/// whatever the collection's size (invariant 11).
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
    for collection in ctx.store.job_collections(job_id).await? {
        write_metadata(ctx, &collection).await?;
    }
    // `.part` files are removed by every failed write and swept at startup;
    // sweeping here could hit another job's write in the shared folder.
    let finished = ctx.store.finish_job_if_drained(job_id, now_ms()).await?;
    if finished.is_some() {
        info!(
            job = job_id,
            selection = %job.selection,
            done = job.counts.done,
            failed = job.counts.failed,
            bytes = job.bytes_done,
            "job finished"
        );
    }
    Ok(finished.is_some())
}

/// Writes every archived image of `collection`, sorted by `captured_at`,
/// whichever jobs archived it, each image once. A collection with nothing
/// archived yet gets no file.
async fn write_metadata(ctx: &EngineContext, collection: &str) -> anyhow::Result<()> {
    let folder = archive::collection_path(&ctx.archive_dir, collection)?;
    let first = ctx.store.collection_images(collection, None, 1).await?;
    if first.is_empty() {
        return Ok(());
    }
    let target = folder.join(METADATA_FILE);
    let store = ctx.store.clone();
    let collection = collection.to_string();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        archive::write_atomically(&target, |out| {
            write_lines(&store, &collection, &handle, out).map_err(std::io::Error::other)
        })
    })
    .await??;
    Ok(())
}

/// The lines of a collection's `metadata.jsonl`, page by page.
fn write_lines(
    store: &Store,
    collection: &str,
    handle: &tokio::runtime::Handle,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut after = None;
    let mut previous_id: Option<String> = None;
    loop {
        let page =
            handle.block_on(store.collection_images(collection, after.as_ref(), METADATA_PAGE))?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.position.clone());
        for image in page {
            // The same image archived by two jobs comes twice, side by side.
            if previous_id.as_deref() == Some(image.meta.id.as_str()) {
                continue;
            }
            serde_json::to_writer(&mut *out, &image.meta)?;
            out.write_all(b"\n")?;
            previous_id = Some(image.meta.id);
        }
    }
}
