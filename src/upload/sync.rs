//! From a packed collection folder to recorded placements: the tars not
//! placed yet go to items by [`super::plan`], each item gets its own
//! `metadata.jsonl.gz` (the lines of its tars' dates) and the thumbnail,
//! and every file's size and MD5 are stored before anything is sent.

use super::client::file_md5;
use super::plan::{self, ItemLoad, Limits, LocalTar, PlanError};
use crate::archive::date_folder;
use crate::package::item::THUMB_FILE;
use crate::package::metadata::{METADATA_FILE, METADATA_GZ_FILE};
use crate::store::{NewUploadFile, Store, StoreError, UploadFileKind, UploadItem};
use flate2::{Compression, GzBuilder, read::GzDecoder};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Why a collection could not be prepared for upload.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The identifier breaks IA's rule: nothing is sent.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SyncError {
    let what = what.into();
    move |source| SyncError::Io { what, source }
}

/// Where a collection's files are, and where per-item files are built.
pub struct Places<'a> {
    /// The collection folder (`<archive>/<collection>`).
    pub folder: &'a Path,
    /// A spool directory of this collection's own for built item files.
    pub spool: &'a Path,
}

/// Places the collection's unplaced tars and refreshes every item's own
/// files. Returns the collection's items.
pub async fn sync_collection(
    store: &Store,
    collection: &str,
    places: &Places<'_>,
    limits: Limits,
) -> Result<Vec<UploadItem>, SyncError> {
    plan::identifier(collection, 1)?;
    let placed: BTreeSet<String> = store
        .upload_files(collection)
        .await?
        .into_iter()
        .filter(|f| f.kind == UploadFileKind::Tar)
        .map(|f| f.name)
        .collect();
    let tars = local_tars(places.folder)?;
    let fresh: Vec<LocalTar> = tars
        .into_iter()
        .filter(|t| !placed.contains(&t.name))
        .collect();
    let loads = item_loads(store, collection).await?;
    for placement in plan::place(&loads, &fresh, limits) {
        let identifier = plan::identifier(collection, placement.part)?;
        let item = store
            .add_upload_item(collection, placement.part, &identifier)
            .await?;
        let path = places.folder.join(&placement.name);
        place(store, &item, UploadFileKind::Tar, &placement.name, path).await?;
    }
    let items = store.upload_items(collection).await?;
    for item in &items {
        item_files(store, collection, item, &items, places).await?;
    }
    Ok(store.upload_items(collection).await?)
}

/// The collection's tars on disk, by name.
fn local_tars(folder: &Path) -> Result<Vec<LocalTar>, SyncError> {
    let mut tars = Vec::new();
    let entries = std::fs::read_dir(folder).map_err(io(format!("read {}", folder.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("read {}", folder.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().map_err(io(format!("stat {name}")))?;
        if meta.is_file() && name.ends_with(".tar") {
            tars.push(LocalTar {
                name,
                bytes: meta.len(),
            });
        }
    }
    tars.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tars)
}

/// What each item holds in tars.
async fn item_loads(store: &Store, collection: &str) -> Result<Vec<ItemLoad>, SyncError> {
    let items = store.upload_items(collection).await?;
    let files = store.upload_files(collection).await?;
    Ok(plan::item_loads(&items, &files))
}

/// Records one file with its size and MD5 (read from disk).
async fn place(
    store: &Store,
    item: &UploadItem,
    kind: UploadFileKind,
    name: &str,
    path: PathBuf,
) -> Result<(), SyncError> {
    let shown = path.display().to_string();
    let read = path.clone();
    let (md5, bytes) = tokio::task::spawn_blocking(move || file_md5(&read))
        .await
        .map_err(|e| SyncError::Io {
            what: format!("hash {shown}"),
            source: std::io::Error::other(e),
        })?
        .map_err(io(format!("hash {shown}")))?;
    let local_path = path.to_string_lossy();
    let file = NewUploadFile {
        kind,
        name,
        local_path: &local_path,
        bytes,
        md5: &md5,
    };
    store.place_upload_file(item, &file).await?;
    Ok(())
}

/// An item's `metadata.jsonl.gz` and thumbnail. A collection in one item
/// sends its own metadata file; one in several builds each item's from the
/// lines of its tars' capture dates.
async fn item_files(
    store: &Store,
    collection: &str,
    item: &UploadItem,
    items: &[UploadItem],
    places: &Places<'_>,
) -> Result<(), SyncError> {
    let thumb = places.folder.join(THUMB_FILE);
    if thumb.is_file() {
        place(store, item, UploadFileKind::Item, THUMB_FILE, thumb).await?;
    }
    let whole = places.folder.join(METADATA_GZ_FILE);
    if !whole.is_file() {
        return Ok(());
    }
    let metadata = if items.len() == 1 {
        whole
    } else {
        let names: Vec<String> = store
            .upload_files(collection)
            .await?
            .into_iter()
            .filter(|f| f.item_id == item.id && f.kind == UploadFileKind::Tar)
            .map(|f| f.name)
            .collect();
        let dates = plan::item_dates(names.iter().map(String::as_str));
        let target = places.spool.join(&item.identifier).join(METADATA_GZ_FILE);
        let built = target.clone();
        tokio::task::spawn_blocking(move || filter_metadata(&whole, &built, &dates))
            .await
            .map_err(|e| SyncError::Io {
                what: "build an item's metadata".into(),
                source: std::io::Error::other(e),
            })??;
        target
    };
    place(
        store,
        item,
        UploadFileKind::Item,
        METADATA_GZ_FILE,
        metadata,
    )
    .await
}

/// Writes to `target` (atomically, deterministic gzip) the lines of the
/// collection's metadata `source` captured on one of `dates`.
fn filter_metadata(
    source: &Path,
    target: &Path,
    dates: &BTreeSet<String>,
) -> Result<(), SyncError> {
    let input = std::fs::File::open(source).map_err(io(format!("read {}", source.display())))?;
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    let partial = target.with_extension("gz.part");
    let out =
        std::fs::File::create(&partial).map_err(io(format!("write {}", partial.display())))?;
    let mut gz = GzBuilder::new()
        .filename(METADATA_FILE)
        .mtime(0)
        .write(out, Compression::best());
    let write = io(format!("write {}", partial.display()));
    let result = (|| -> std::io::Result<()> {
        for line in BufReader::new(GzDecoder::new(input)).lines() {
            let line = line?;
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if dates.contains(&date_folder(value["captured_at"].as_i64())) {
                gz.write_all(line.as_bytes())?;
                gz.write_all(b"\n")?;
            }
        }
        gz.finish()?.sync_all()?;
        std::fs::rename(&partial, target)
    })();
    result.map_err(write)
}
