//! Parts named by id: a sequence (its image ids, from `GET /image_ids`,
//! become batches) and a batch of up to 50 image ids (metadata and URLs from
//! one `GET /?ids=`, deleted ids isolated as for URL refreshes).

use super::Stored;
use crate::clock::now_ms;
use crate::engine::EngineContext;
use crate::engine::refresh::renew;
use crate::model::{ImageMeta, ListedImage};
use crate::selection::{PartSpec, Source};
use crate::store::{FailReason, Job, JobTask, MissingImage, PageWrite, PartStep};
use std::collections::HashMap;
use tracing::debug;

/// Lists a sequence's image ids and replaces the part with their batches.
pub(super) async fn sequence_step(
    ctx: &EngineContext,
    job: &Job,
    part: i64,
    sequence: &str,
    task: Option<&JobTask>,
) -> anyhow::Result<Stored> {
    let ids = match ctx.client.fetch_sequence_ids(sequence).await {
        Ok(ids) => ids,
        Err(error) => return Ok(Stored::Failure(error)),
    };
    debug!(
        job = job.id,
        sequence,
        images = ids.len(),
        "listed a sequence"
    );
    let batches = PartSpec::image_batches(&ids);
    let step = if batches.is_empty() {
        PartStep::Done
    } else {
        PartStep::Replace(&batches)
    };
    let none: &[ListedImage] = &[];
    ctx.store
        .store_page(PageWrite {
            job_id: job.id,
            part,
            images: none,
            missing: &[],
            step,
            task,
            now_ms: now_ms(),
        })
        .await?;
    Ok(Stored::Images(0))
}

/// The images of `fresh` the job's filters keep, in the batch's order, so
/// claims follow the sequence or the user's list.
fn kept_in_order(
    job: &Job,
    ids: &[String],
    fresh: &HashMap<String, ImageMeta>,
) -> anyhow::Result<Vec<ListedImage>> {
    let mut images = Vec::with_capacity(fresh.len());
    for id in ids {
        if let Some(meta) = fresh.get(id)
            && job.selection.matches(meta)
        {
            images.push(ListedImage::new(meta.clone())?);
        }
    }
    Ok(images)
}

/// Each unreadable id with the note its row keeps: an error of the image,
/// not a deletion.
fn unreadable_notes(unreadable: &[(String, String)]) -> Vec<(&str, String)> {
    unreadable
        .iter()
        .map(|(id, why)| {
            let message = format!("the API's answer for this image could not be read: {why}");
            (id.as_str(), message)
        })
        .collect()
}

/// How an id the API does not know is recorded: deleted, for an image of a
/// sequence; unknown (deleted, or never there), for an id the user named.
fn why_missing(source: &Source) -> (FailReason, &'static str) {
    match source {
        Source::Images(_) => (
            FailReason::Error,
            "Mapillary has no image with this id (deleted, or never there)",
        ),
        _ => (
            FailReason::Deleted,
            "deleted on Mapillary: the API no longer knows this image",
        ),
    }
}

/// Fetches a batch of images by id and stores those the filters keep. Ids
/// the API no longer knows are recorded failed: deleted, for images of a
/// sequence; unknown (deleted, or never there), for ids the user named.
pub(super) async fn images_step(
    ctx: &EngineContext,
    job: &Job,
    part: i64,
    ids: &[String],
    task: Option<&JobTask>,
) -> anyhow::Result<Stored> {
    let client = &ctx.client;
    let renewal = renew(ids.to_vec(), |group| async move {
        let refs: Vec<&str> = group.iter().map(String::as_str).collect();
        client.fetch_images(&refs).await
    })
    .await;
    if let Some((_, error)) = renewal.unsettled {
        return Ok(Stored::Failure(error));
    }
    let images = kept_in_order(job, ids, &renewal.fresh)?;
    let (reason, message) = why_missing(&job.selection.source);
    let unreadable = unreadable_notes(&renewal.unreadable);
    let missing: Vec<MissingImage> = renewal
        .deleted
        .iter()
        .map(|id| MissingImage {
            image_id: id,
            reason,
            message,
        })
        .chain(unreadable.iter().map(|(id, message)| MissingImage {
            image_id: id,
            reason: FailReason::Error,
            message,
        }))
        .collect();
    let new_images = ctx
        .store
        .store_page(PageWrite {
            job_id: job.id,
            part,
            images: &images,
            missing: &missing,
            step: PartStep::Done,
            task,
            now_ms: now_ms(),
        })
        .await?;
    debug!(
        job = job.id,
        asked = ids.len(),
        kept = images.len(),
        missing = missing.len(),
        calls = renewal.calls,
        "stored a batch of images"
    );
    Ok(Stored::Images(new_images))
}
