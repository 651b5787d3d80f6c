//! `mapillary-downloader upload [--job ID] [--dry-run]` and the upload at
//! the end of `download --upload-ia`: build the [`Uploader`] from the
//! settings and the keys, run each job's track, report progress on stderr.
//! `--dry-run` prints each item's files, sizes and headers (the secret
//! redacted) and writes nothing.

use super::client::IaClient;
use super::credentials::IaCredentials;
use super::headers;
use super::plan::{self, LocalTar};
use super::progress;
use super::run::{UploadEnd, Uploader};
use crate::config::Settings;
use crate::package::item::META_DIR;
use crate::store::{Store, UploadFile, UploadState};
use crate::units::format_bytes;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why no upload could start: a usage or settings problem (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No keys, or bad ones.
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
    /// The archive is in a bucket: uploads read tars from the local disk.
    #[error(
        "uploading to the Internet Archive needs the archive on the local disk (storage.archive_url is a bucket)"
    )]
    BucketArchive,
    /// The endpoint or archive URL.
    #[error(transparent)]
    Client(#[from] super::client::IaError),
}

/// The uploader for these settings, with the keys from the environment.
pub fn uploader(settings: &Settings, store: Arc<Store>) -> Result<Uploader, SetupError> {
    if !settings.storage.archive_url.trim().is_empty() {
        return Err(SetupError::BucketArchive);
    }
    let credentials = IaCredentials::from_env()?;
    Ok(Uploader {
        store,
        client: IaClient::new(&settings.ia.endpoint, &settings.archive.ia_url)?,
        credentials,
        settings: settings.ia.clone(),
        archive_dir: settings.archive_dir(),
        spool: settings.storage.data_dir.join("spool").join("ia"),
    })
}

/// Runs each job's track in turn, its progress on stderr ([`progress`]: a
/// bar on a terminal, a line every few seconds elsewhere, a summary line
/// per job at the end). The first end that is not `Confirmed` wins (a
/// pause stops the rest).
pub async fn run_tracks(
    uploader: &Uploader,
    job_ids: &[i64],
    shutdown: &CancellationToken,
) -> anyhow::Result<UploadEnd> {
    let stop = CancellationToken::new();
    let shown = tokio::spawn(progress::report(
        uploader.store.clone(),
        uploader.client.clone(),
        job_ids.to_vec(),
        stop.clone(),
    ));
    let mut end = Ok(UploadEnd::Confirmed);
    for id in job_ids {
        match uploader.run_job(*id, shutdown).await {
            Ok(UploadEnd::Confirmed) => {}
            other => {
                end = other;
                break;
            }
        }
    }
    stop.cancel();
    let _ = shown.await;
    Ok(end?)
}

/// The jobs `upload` acts on: `--job ID` (given an upload track if it has
/// none), else every job with a track that is not confirmed.
pub async fn jobs_to_upload(store: &Store, job: Option<i64>) -> anyhow::Result<Vec<i64>> {
    if let Some(id) = job {
        let found = store.find_job(id).await?;
        let job = found.ok_or_else(|| anyhow::anyhow!("no job with id {id}"))?;
        if job.package != crate::model::Packaging::Tar {
            anyhow::bail!("job {id} is not packed (package: tar): nothing to upload");
        }
        store.enable_upload(id, crate::clock::now_ms()).await?;
        return Ok(vec![id]);
    }
    Ok(store
        .upload_tracks()
        .await?
        .into_iter()
        .filter(|t| t.state != UploadState::Confirmed)
        .map(|t| t.job_id)
        .collect())
}

/// `--dry-run`: what each job's upload would send, writing nothing.
pub async fn dry_run(
    uploader: &Uploader,
    job_ids: &[i64],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for id in job_ids {
        writeln!(out, "job {id}:")?;
        for collection in uploader.store.job_collections(*id).await? {
            dry_run_collection(uploader, &collection, out).await?;
        }
    }
    Ok(())
}

/// The collection folder's tars that no item holds yet: what a real run
/// would place next.
fn unplaced_tars(
    folder: &std::path::Path,
    placed: &[UploadFile],
) -> std::io::Result<Vec<LocalTar>> {
    let names: BTreeSet<&str> = placed.iter().map(|f| f.name.as_str()).collect();
    let mut fresh = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tar") && !names.contains(name.as_str()) {
            let bytes = entry.metadata()?.len();
            fresh.push(LocalTar { name, bytes });
        }
    }
    Ok(fresh)
}

async fn dry_run_collection(
    uploader: &Uploader,
    collection: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = &uploader.store;
    let placed = store.upload_files(collection).await?;
    let items = store.upload_items(collection).await?;
    let loads = plan::item_loads(&items, &placed);
    let folder = uploader.archive_dir.join(collection);
    let fresh = unplaced_tars(&folder, &placed)?;
    let mut files: Vec<(u32, String, u64, &str)> = placed
        .iter()
        .filter_map(|f| {
            let part = items.iter().find(|i| i.id == f.item_id)?.part;
            Some((part, f.name.clone(), f.bytes, f.state.as_str()))
        })
        .collect();
    for p in plan::place(&loads, &fresh, plan::limits(&uploader.settings)) {
        let bytes = fresh
            .iter()
            .find(|t| t.name == p.name)
            .map_or(0, |t| t.bytes);
        files.push((p.part, p.name, bytes, "new"));
    }
    let tags = headers::read_meta_dir(&folder.join(META_DIR))?;
    let parts: BTreeSet<u32> = files.iter().map(|f| f.0).collect();
    for part in parts {
        let identifier = plan::identifier(collection, part)?;
        let in_part: Vec<_> = files.iter().filter(|f| f.0 == part).collect();
        let total: u64 = in_part.iter().map(|f| f.2).sum();
        writeln!(
            out,
            "  item {identifier}: {} file(s), {}",
            in_part.len(),
            format_bytes(total)
        )?;
        for (_, name, bytes, state) in in_part {
            writeln!(out, "    {name}  {bytes} bytes  ({state})")?;
        }
        let part_tags = plan::part_tags(tags.clone(), part);
        let headers = headers::item_headers(&uploader.credentials, &part_tags, total)?;
        for line in headers.redacted().lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}
