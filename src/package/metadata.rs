//! A collection's `metadata.jsonl` (or, once packed, `metadata.jsonl.gz`):
//! one line per archived image, sorted by capture time, whichever jobs
//! archived it, each image once, with the `sha256` and `bytes` of its file.
//! Written atomically, page by page, so memory stays flat (invariant 11).

use crate::archive::Archive;
use crate::archive::ArchiveError;
use crate::model::ImageMeta;
use crate::store::{CollectionTask, Store};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the per-collection metadata file.
pub const METADATA_FILE: &str = "metadata.jsonl";
/// Its gzipped form, in packed collections.
pub const METADATA_GZ_FILE: &str = "metadata.jsonl.gz";

/// Rows read per query.
const PAGE: u32 = 2000;

/// One line: the stored metadata plus the file's checksum and size (absent
/// for files archived before checksums, until `verify` hashes them).
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    meta: &'a ImageMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

/// Writes the metadata file of `task`'s collection in `folder`: gzipped
/// when `packed` (and the plain one removed), plain otherwise. A collection
/// with nothing archived gets no file. The file replaces the one before only
/// while `task` still holds the collection (checked last thing before), so a
/// finisher that lost its lease does not put an older view over a newer one.
pub async fn write(
    store: &Arc<Store>,
    files: &Archive,
    folder: &Path,
    task: &CollectionTask,
    packed: bool,
) -> anyhow::Result<()> {
    let collection: &str = &task.collection;
    if store
        .collection_images(collection, None, 1)
        .await?
        .is_empty()
    {
        return Ok(());
    }
    let (name, stale) = if packed {
        (METADATA_GZ_FILE, METADATA_FILE)
    } else {
        (METADATA_FILE, METADATA_GZ_FILE)
    };
    let target = folder.join(name);
    build(
        Arc::clone(store),
        files.clone(),
        target,
        task.clone(),
        packed,
    )
    .await?;
    files.remove_async(&folder.join(stale)).await?;
    Ok(())
}

/// Writes the metadata file at the local path `target`, atomically. Takes
/// its store, archive and task owned: they move to a blocking thread.
async fn build(
    store: Arc<Store>,
    files: Archive,
    target: PathBuf,
    task: CollectionTask,
    packed: bool,
) -> anyhow::Result<()> {
    let collection = task.collection.to_string();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        files.write_atomically(&target, |out| {
            let lines = |out: &mut dyn Write| {
                write_lines(&store, &collection, &handle, out).map_err(std::io::Error::other)
            };
            if packed {
                // No timestamp in the header: the same lines give the same bytes.
                let mut gz = GzBuilder::new()
                    .filename(METADATA_FILE)
                    .mtime(0)
                    .write(out, Compression::best());
                lines(&mut gz)?;
                gz.finish()?;
            } else {
                lines(out)?;
            }
            handle
                .block_on(store.check_collection_task(&task))
                .map_err(std::io::Error::other)
        })
    })
    .await??;
    Ok(())
}

/// The lines of a collection's metadata, page by page.
fn write_lines(
    store: &Store,
    collection: &str,
    handle: &tokio::runtime::Handle,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut after = None;
    let mut previous_id: Option<String> = None;
    loop {
        let page = handle.block_on(store.collection_images(collection, after.as_ref(), PAGE))?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.position.clone());
        for image in page {
            // The same image archived by two jobs comes twice, side by side.
            if previous_id.as_deref() == Some(image.meta.id.as_str()) {
                continue;
            }
            let line = Line {
                meta: &image.meta,
                sha256: image.sha256.as_deref(),
                bytes: image.bytes,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            previous_id = Some(image.meta.id);
        }
    }
}
