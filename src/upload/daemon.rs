//! The upload track in `serve`: every few seconds, each job whose upload is
//! `waiting`, `uploading` or `confirming` and whose job is `done` (packed)
//! gets a runner, one per job; a track the user paused (or that failed)
//! has its runner stopped. Keys missing at start pause the tracks that
//! would run, with the reason.

use super::command;
use super::run::UploadEnd;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::store::{JobState, Store, UploadState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the loop looks at the tracks.
const TICK: Duration = Duration::from_secs(2);

/// The running loop; dropping it stops the loop and every runner (their
/// tracks stay as they are, and the next start resumes them).
pub struct UploadDaemon {
    cancel: CancellationToken,
    _task: JoinHandle<()>,
}

impl Drop for UploadDaemon {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts the loop for `serve`.
pub fn spawn(settings: &Settings, store: Arc<Store>) -> UploadDaemon {
    let cancel = CancellationToken::new();
    let uploader = command::uploader(settings, store.clone())
        .map(Arc::new)
        .map_err(|e| e.to_string());
    let task = tokio::spawn(run(store, uploader, cancel.clone()));
    UploadDaemon {
        cancel,
        _task: task,
    }
}

type Runners = HashMap<i64, (CancellationToken, JoinHandle<()>)>;

async fn run(
    store: Arc<Store>,
    uploader: Result<Arc<super::run::Uploader>, String>,
    cancel: CancellationToken,
) {
    let mut runners: Runners = HashMap::new();
    while !cancel.is_cancelled() {
        if let Err(e) = tick(&store, &uploader, &cancel, &mut runners).await {
            tracing::warn!("upload loop: {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = cancel.cancelled() => {}
        }
    }
    for (token, _) in runners.values() {
        token.cancel();
    }
}

async fn tick(
    store: &Store,
    uploader: &Result<Arc<super::run::Uploader>, String>,
    cancel: &CancellationToken,
    runners: &mut Runners,
) -> anyhow::Result<()> {
    runners.retain(|_, (_, task)| !task.is_finished());
    for track in store.upload_tracks().await? {
        let active = matches!(
            track.state,
            UploadState::Waiting | UploadState::Uploading | UploadState::Confirming
        );
        if !active {
            if let Some((token, _)) = runners.remove(&track.job_id) {
                token.cancel();
            }
            rearm_after_resync(store, track.job_id, track.state).await?;
            continue;
        }
        if runners.contains_key(&track.job_id) {
            continue;
        }
        let done = store
            .find_job(track.job_id)
            .await?
            .is_some_and(|j| j.state == JobState::Done);
        if !done {
            continue;
        }
        let uploader = match uploader {
            Ok(uploader) => uploader.clone(),
            Err(message) => {
                let m = format!("cannot upload: {message}");
                store
                    .set_upload_state(
                        track.job_id,
                        track.state,
                        UploadState::Paused,
                        Some(&m),
                        now_ms(),
                    )
                    .await?;
                continue;
            }
        };
        let token = cancel.child_token();
        let job = track.job_id;
        let stop = token.clone();
        let task = tokio::spawn(async move {
            match uploader.run_job(job, &stop).await {
                Ok(UploadEnd::Confirmed) => tracing::info!(job, "upload confirmed on archive.org"),
                Ok(end) => tracing::info!(job, ?end, "upload stopped"),
                Err(e) => tracing::warn!(job, "upload: {e}"),
            }
        });
        runners.insert(job, (token, task));
    }
    Ok(())
}

/// `POST /jobs/{id}/pause` on a done job: its active upload pauses.
pub async fn pause(store: &Store, job_id: i64) -> crate::store::StoreResult<bool> {
    let message = "paused by the user: POST /jobs/{id}/resume to go on";
    for from in [
        UploadState::Waiting,
        UploadState::Uploading,
        UploadState::Confirming,
    ] {
        if store
            .set_upload_state(job_id, from, UploadState::Paused, Some(message), now_ms())
            .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Resume (from paused) or retry (from paused or failed): the track waits
/// for its runner again, its error cleared.
pub async fn restart(
    store: &Store,
    job_id: i64,
    from: &[UploadState],
) -> crate::store::StoreResult<bool> {
    for state in from {
        if store
            .set_upload_state(job_id, *state, UploadState::Waiting, None, now_ms())
            .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A confirmed upload whose job is working again (a re-sync) waits again:
/// its new tars go up once the job is done.
async fn rearm_after_resync(
    store: &Store,
    job_id: i64,
    state: UploadState,
) -> crate::store::StoreResult<()> {
    if state != UploadState::Confirmed {
        return Ok(());
    }
    let working = store
        .find_job(job_id)
        .await?
        .is_some_and(|j| crate::store::ACTIVE.contains(&j.state));
    if working {
        let (from, to) = (UploadState::Confirmed, UploadState::Waiting);
        store
            .set_upload_state(job_id, from, to, None, now_ms())
            .await?;
    }
    Ok(())
}
