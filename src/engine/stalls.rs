//! No-progress detection: every loop must make progress or say why.
//!
//! A job that has work but has not moved forward (no image finished, no page
//! stored) for `jobs.stall_after_secs` is marked stalled, and its
//! `last_error` says what holds it back: a rate-limit hold, its listing's
//! error, or the latest error of its waiting images. The mark clears itself
//! at the job's next progress. Progress times live in the database, so the
//! answer does not depend on which process asks.

use super::EngineContext;
use crate::clock::now_ms;
use crate::store::StallCandidate;
use crate::units::format_duration;
use std::time::Duration;
use tracing::{info, warn};

/// How often to look: a quarter of the threshold, between 200 ms and 30 s.
pub fn check_interval(stall_after: Duration) -> Duration {
    (stall_after / 4).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// Clears the marks of jobs that moved again, then marks the jobs that have
/// not moved for longer than the threshold.
pub async fn check(ctx: &EngineContext) -> anyhow::Result<()> {
    let now = now_ms();
    for job in ctx.store.clear_recovered_stalls(now).await? {
        info!(job, "job is making progress again");
    }
    let threshold = i64::try_from(ctx.tuning.stall_after.as_millis()).unwrap_or(i64::MAX);
    let before = now.saturating_sub(threshold);
    for candidate in ctx.store.stall_candidates(before).await? {
        let idle = Duration::from_millis(u64::try_from(now - candidate.progress_at).unwrap_or(0));
        let message = format!(
            "no progress for {} with {} images waiting: {}",
            format_duration(idle),
            candidate.waiting,
            why(ctx, &candidate).await?
        );
        if ctx
            .store
            .mark_stalled(candidate.job_id, before, &message, now)
            .await?
        {
            warn!(job = candidate.job_id, message, "job stalled");
        }
    }
    Ok(())
}

/// The best explanation at hand, most specific first.
async fn why(ctx: &EngineContext, job: &StallCandidate) -> anyhow::Result<String> {
    if let Some(until) = ctx.client.limiter().held_until() {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        return Ok(format!(
            "Mapillary rate-limited the API; every call is held for another {}",
            format_duration(left)
        ));
    }
    if let Some(until) = ctx.client.cdn_gate().held_until() {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        return Ok(format!(
            "the CDN refuses most downloads (HTTP 429); every download is held for another {}",
            format_duration(left)
        ));
    }
    if let Some(error) = &job.last_error {
        return Ok(error.clone());
    }
    if let Some(error) = ctx.store.latest_image_error(job.job_id).await? {
        return Ok(format!("latest image error: {error}"));
    }
    Ok(if job.enumeration_complete {
        "no error recorded; images may be held in flight by a worker".to_string()
    } else {
        "no error recorded; the listing has not moved".to_string()
    })
}
