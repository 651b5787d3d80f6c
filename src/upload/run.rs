//! One job's upload track, start to end: place the tars of its collections
//! ([`super::sync`]), send every pending file (skipping what the item
//! already holds with our MD5 and size), then confirm each sent file from
//! the item's metadata. Resumable at any instant: a file's state is
//! written after IA answered, so a kill re-sends only the file in flight.
//!
//! Throttling slows the upload and never fails it: `503 SlowDown` waits
//! (Retry-After, else doubling up to `ia.slowdown_max_secs`) and no `PUT`
//! starts while `check_limit` says the item is over its limit. A refusal
//! that is not transient pauses the track with a message that says what to
//! do; nothing is retried in a loop.

use super::client::{Decision, IaClient, IaError, ListedFile, Put};
use super::credentials::IaCredentials;
use super::headers::{self, MetaTag};
use super::ia_only;
use super::plan;
use super::sync::{self, Places, SyncError};
use crate::clock::now_ms;
use crate::config::IaSettings;
use crate::package::item::META_DIR;
use crate::store::{
    Store, StoreError, UploadFile, UploadFileKind, UploadFileState, UploadItem, UploadState,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Network errors in a row on one request before the upload fails.
const MAX_NETWORK_TRIES: u32 = 8;
/// Longest wait between two looks at an item's metadata while confirming.
const MAX_CONFIRM_POLL: Duration = Duration::from_secs(300);

/// How a track's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEnd {
    /// Every file is confirmed.
    Confirmed,
    /// Stopped on a refusal; the message says what to do.
    Paused(String),
    /// Could not go on (a bad identifier, files never listed).
    Failed(String),
    /// Shut down; the next start resumes.
    Interrupted,
}

/// Errors that end a run without a decision of IA's.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an upload needs, built once per process.
pub struct Uploader {
    /// The job store.
    pub store: Arc<Store>,
    /// IA-S3 and the metadata API.
    pub client: IaClient,
    /// The keys.
    pub credentials: IaCredentials,
    /// `[ia]`.
    pub settings: IaSettings,
    /// The local archive root (collection folders).
    pub archive_dir: PathBuf,
    /// Where per-item files are built (`<data-dir>/spool/ia`).
    pub spool: PathBuf,
}

/// A failed step's outcome, for the run loop.
enum Stop {
    End(UploadEnd),
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Store(e)
    }
}

impl Uploader {
    /// Runs job `job_id`'s track until every file is confirmed, it pauses
    /// or fails, or `shutdown` fires. The track must exist.
    pub async fn run_job(
        &self,
        job_id: i64,
        shutdown: &CancellationToken,
    ) -> Result<UploadEnd, RunError> {
        let Some(track) = self.store.upload_track(job_id).await? else {
            return Ok(UploadEnd::Failed(format!(
                "job {job_id} asked for no upload"
            )));
        };
        let state = track.state;
        if state != UploadState::Uploading
            && !self
                .store
                .set_upload_state(job_id, state, UploadState::Uploading, None, now_ms())
                .await?
        {
            return Ok(UploadEnd::Interrupted);
        }
        let end = match self.steps(job_id, shutdown).await {
            Ok(()) => UploadEnd::Confirmed,
            Err(Stop::End(end)) => end,
            Err(Stop::Store(e)) => return Err(e.into()),
        };
        self.record_end(job_id, &end).await?;
        Ok(end)
    }

    /// Writes how the run ended on the track.
    async fn record_end(&self, job_id: i64, end: &UploadEnd) -> Result<(), StoreError> {
        let (to, message) = match end {
            UploadEnd::Confirmed => (UploadState::Confirmed, None),
            UploadEnd::Paused(m) => (UploadState::Paused, Some(m.as_str())),
            UploadEnd::Failed(m) => (UploadState::Failed, Some(m.as_str())),
            UploadEnd::Interrupted => return Ok(()),
        };
        for from in [UploadState::Uploading, UploadState::Confirming] {
            if self
                .store
                .set_upload_state(job_id, from, to, message, now_ms())
                .await?
            {
                break;
            }
        }
        if let Some(message) = message {
            tracing::warn!(
                job = job_id,
                "upload to the Internet Archive stopped: {message}"
            );
        }
        Ok(())
    }

    async fn steps(&self, job_id: i64, shutdown: &CancellationToken) -> Result<(), Stop> {
        let collections = self.store.job_collections(job_id).await?;
        let mut all = Vec::new();
        for collection in &collections {
            all.push((collection.clone(), self.sync(collection).await?));
        }
        for (collection, items) in &all {
            self.send_collection(collection, items, shutdown).await?;
        }
        let (u, c) = (UploadState::Uploading, UploadState::Confirming);
        self.store
            .set_upload_state(job_id, u, c, None, now_ms())
            .await?;
        for (collection, items) in &all {
            self.confirm_collection(collection, items, shutdown).await?;
        }
        for collection in &collections {
            self.tidy(collection).await?;
        }
        Ok(())
    }

    async fn sync(&self, collection: &str) -> Result<Vec<UploadItem>, Stop> {
        let folder = self.archive_dir.join(collection);
        let spool = self.spool.join(collection);
        let places = Places {
            folder: &folder,
            spool: &spool,
        };
        match sync::sync_collection(
            &self.store,
            collection,
            &places,
            plan::limits(&self.settings),
        )
        .await
        {
            Ok(items) => Ok(items),
            Err(SyncError::Store(e)) => Err(Stop::Store(e)),
            Err(SyncError::Plan(e)) => Err(Stop::End(UploadEnd::Failed(e.to_string()))),
            Err(e @ SyncError::Io { .. }) => Err(Stop::End(UploadEnd::Paused(format!(
                "{e}; fix the collection folder, then resume the job"
            )))),
        }
    }

    /// The `.meta` tags of part `part`: " (part N)" after the first's title.
    fn tags(&self, collection: &str, part: u32) -> Result<Vec<MetaTag>, Stop> {
        let dir = self.archive_dir.join(collection).join(META_DIR);
        let tags = headers::read_meta_dir(&dir)
            .map_err(|e| Stop::End(UploadEnd::Paused(e.to_string())))?;
        Ok(plan::part_tags(tags, part))
    }

    async fn send_collection(
        &self,
        collection: &str,
        items: &[UploadItem],
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        for item in items {
            let files = self.store.upload_files(collection).await?;
            let pending = in_state(&files, item, UploadFileState::Pending);
            if pending.is_empty() {
                continue;
            }
            let tags = self.tags(collection, item.part)?;
            let headers = headers::item_headers(&self.credentials, &tags, item.bytes)
                .map_err(|e| Stop::End(UploadEnd::Paused(e.to_string())))?;
            let listed = self.retrying(shutdown, || self.client.listed_files(&item.identifier));
            let listed = listed.await?;
            for file in pending {
                if holds(&listed, file) {
                    self.mark(file, UploadFileState::Sent).await?;
                    continue;
                }
                self.send(item, file, headers.archive(), shutdown).await?;
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        item: &UploadItem,
        file: &UploadFile,
        archive_headers: &[(String, String)],
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let path = PathBuf::from(&file.local_path);
        let put = Put {
            identifier: &item.identifier,
            name: &file.name,
            path: &path,
            bytes: file.bytes,
            md5: &file.md5,
            authorization: &self.credentials.authorization(),
            archive_headers,
        };
        let access = &self.credentials.access;
        self.retrying(shutdown, || async {
            while self.client.over_limit(access, &item.identifier).await? {
                tracing::info!(item = %item.identifier, "archive.org is over its limit; waiting");
                tokio::time::sleep(Duration::from_secs(self.settings.slowdown_max_secs.min(60)))
                    .await;
            }
            self.store
                .begin_file_send(file.id)
                .await
                .map_err(|e| IaError::Local {
                    path: "the job store".into(),
                    reason: e.to_string(),
                })?;
            self.client.put(&put).await
        })
        .await?;
        self.mark(file, UploadFileState::Sent).await?;
        tracing::info!(item = %item.identifier, file = %file.name, bytes = file.bytes, "sent to archive.org");
        Ok(())
    }

    async fn mark(&self, file: &UploadFile, to: UploadFileState) -> Result<(), StoreError> {
        self.store
            .set_file_state(file.id, file.state, to, now_ms())
            .await?;
        Ok(())
    }

    /// Runs `call` until it succeeds: SlowDown and network errors wait and
    /// try again (SlowDown for ever, the network [`MAX_NETWORK_TRIES`] times),
    /// refusals pause. `shutdown` interrupts any wait.
    async fn retrying<T, F, Fut>(&self, shutdown: &CancellationToken, call: F) -> Result<T, Stop>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, IaError>>,
    {
        let cap = Duration::from_secs(self.settings.slowdown_max_secs);
        let mut wait = Duration::from_secs(1).min(cap);
        let mut network = 0;
        loop {
            let error = tokio::select! {
                result = call() => match result {
                    Ok(value) => return Ok(value),
                    Err(e) => e,
                },
                () = shutdown.cancelled() => return Err(Stop::End(UploadEnd::Interrupted)),
            };
            let delay = match error.decision() {
                Decision::Pause(message) => return Err(Stop::End(UploadEnd::Paused(message))),
                Decision::Retry(after) => {
                    if !matches!(error, IaError::SlowDown { .. }) {
                        network += 1;
                        if network >= MAX_NETWORK_TRIES {
                            return Err(Stop::End(UploadEnd::Failed(error.to_string())));
                        }
                    }
                    after.unwrap_or(wait).min(cap)
                }
            };
            tracing::info!(delay_ms = delay.as_millis() as u64, "upload waits: {error}");
            wait = (wait * 2).min(cap);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Err(Stop::End(UploadEnd::Interrupted)),
            }
        }
    }

    async fn confirm_collection(
        &self,
        collection: &str,
        items: &[UploadItem],
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + self.settings.confirm_timeout();
        let mut poll = Duration::from_millis(self.settings.confirm_poll_ms);
        loop {
            let mut waiting = 0;
            for item in items {
                waiting += self.confirm_item(collection, item, shutdown).await?;
            }
            if waiting == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() + poll > deadline {
                return Err(Stop::End(UploadEnd::Failed(format!(
                    "{waiting} file(s) of {collection} were sent but archive.org has not listed \
                     them within ia.confirm_timeout_secs ({} s); retry the job's upload later",
                    self.settings.confirm_timeout_secs
                ))));
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => return Err(Stop::End(UploadEnd::Interrupted)),
            }
            poll = (poll * 2).min(MAX_CONFIRM_POLL);
        }
    }

    /// Confirms the item's sent files it lists with our MD5; a listed file
    /// with another MD5 goes back to pending (the next run sends it again).
    /// Returns how many still wait.
    async fn confirm_item(
        &self,
        collection: &str,
        item: &UploadItem,
        shutdown: &CancellationToken,
    ) -> Result<usize, Stop> {
        let files = self.store.upload_files(collection).await?;
        let sent = in_state(&files, item, UploadFileState::Sent);
        if sent.is_empty() {
            return Ok(0);
        }
        let listed = self.retrying(shutdown, || self.client.listed_files(&item.identifier));
        let listed = listed.await?;
        let mut waiting = 0;
        for file in sent {
            if holds(&listed, file) {
                self.mark(file, UploadFileState::Confirmed).await?;
                self.after_confirm(file).await?;
            } else {
                waiting += 1;
            }
        }
        Ok(waiting)
    }

    /// `ia.delete_after_confirm`: the local tar goes once archive.org holds
    /// it (recorded as held there only first; see [`ia_only`]). A failed
    /// removal is logged: the tar stays recorded and the next run retries.
    async fn after_confirm(&self, file: &UploadFile) -> Result<(), StoreError> {
        if !self.settings.delete_after_confirm || file.kind != UploadFileKind::Tar {
            return Ok(());
        }
        ia_only::store_errors_only(
            ia_only::hold_on_ia_only(&self.store, &self.archive_dir, file).await,
        )
    }

    /// The end of a run: removals a kill left unfinished, and (with
    /// `ia.delete_after_confirm`) confirmed tars still on the disk.
    async fn tidy(&self, collection: &str) -> Result<(), StoreError> {
        let delete = self.settings.delete_after_confirm;
        ia_only::store_errors_only(
            ia_only::tidy_collection(&self.store, &self.archive_dir, collection, delete).await,
        )
    }
}

/// The files of `item` in `state`.
fn in_state<'a>(
    files: &'a [UploadFile],
    item: &UploadItem,
    state: UploadFileState,
) -> Vec<&'a UploadFile> {
    let of_item = |f: &&UploadFile| f.item_id == item.id && f.state == state;
    files.iter().filter(of_item).collect()
}

/// Whether the item lists `file` with our MD5 and size.
fn holds(listed: &[ListedFile], file: &UploadFile) -> bool {
    listed.iter().any(|l| {
        l.name == file.name
            && l.md5.as_deref() == Some(file.md5.as_str())
            && l.size.is_none_or(|size| size == file.bytes)
    })
}
