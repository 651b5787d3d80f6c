//! This daemon's heartbeat, and the rescue of daemons whose heartbeat
//! stopped (see `store::rescue`).
//!
//! A task of its own, not a step of the supervisor: a supervisor step may
//! take long (a stall check over a big queue, a slow database), and a late
//! beat would get a live daemon taken for dead.
//!
//! A daemon rescues others only while its own beats have been landing
//! steadily for `cluster.dead_after_secs`. After a database outage every
//! row is stale; the first daemon back must not take the others for dead
//! before they had the chance to beat again. Likewise a daemon that was
//! itself silent (paused, starved) first finds its feet.

use super::{EngineContext, daemon_info};
use crate::clock::now_ms;
use crate::store::{DaemonInfo, StoreKind};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a daemon beats with the default `cluster.dead_after_secs`.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How often a daemon beats: every 5 s, and at least four times within
/// `dead_after`, so a beat or two lost to a hiccup never makes it dead.
pub(super) fn interval(dead_after: Duration) -> Duration {
    HEARTBEAT_INTERVAL.min(dead_after / 4)
}

/// Whether this daemon's own beats have been steady, and since when.
#[derive(Debug, Clone, Copy)]
struct Pulse {
    /// The last beat that landed.
    last_beat: Instant,
    /// Since when beats have landed without a failure or a long gap;
    /// `None` right after a failed beat.
    steady_since: Option<Instant>,
}

impl Pulse {
    fn started(at: Instant) -> Pulse {
        Pulse {
            last_beat: at,
            steady_since: Some(at),
        }
    }

    /// A beat landed at `at`. Returns the gap since the previous one when
    /// it was long enough (half of `dead_after`) that others may have
    /// taken this daemon for dead: steadiness starts over.
    fn landed(&mut self, at: Instant, dead_after: Duration) -> Option<Duration> {
        let gap = at.saturating_duration_since(self.last_beat);
        self.last_beat = at;
        let long = gap > dead_after / 2;
        if long || self.steady_since.is_none() {
            self.steady_since = Some(at);
        }
        long.then_some(gap)
    }

    fn failed(&mut self) {
        self.steady_since = None;
    }

    /// Whether this daemon may take others for dead at `at`.
    fn may_rescue(&self, at: Instant, dead_after: Duration) -> bool {
        self.steady_since
            .is_some_and(|since| at.saturating_duration_since(since) >= dead_after)
    }
}

/// Beats every [`interval`] until `cancel`; on a shared PostgreSQL queue,
/// looks for silent daemons five times as often (a cheap query on a small
/// table), so a dead daemon's work is back within about a second of
/// `dead_after`. The first beat was made by `Engine::start`, just before.
pub(super) async fn run(ctx: EngineContext, cancel: CancellationToken) {
    let dead_after = ctx.tuning.dead_after;
    let every = interval(dead_after);
    let shared = ctx.store.kind() == StoreKind::Postgres;
    let me = daemon_info(&ctx);
    let mut pulse = Pulse::started(Instant::now());
    let mut next_beat = Instant::now() + every;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every / 5) => {}
        }
        // The beat first: a daemon that wakes from a pause must learn it
        // was silent before it judges anyone else.
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + every;
            beat(&ctx, &me, &mut pulse).await;
        }
        if shared && pulse.may_rescue(Instant::now(), dead_after) {
            rescue(&ctx, dead_after).await;
        }
    }
}

/// Records one heartbeat, and what it says about this daemon's pulse.
async fn beat(ctx: &EngineContext, me: &DaemonInfo, pulse: &mut Pulse) {
    let dead_after = ctx.tuning.dead_after;
    let beat = ctx.store.heartbeat(me, now_ms());
    // Bounded: a half-open connection must not hold the beats up.
    match tokio::time::timeout(dead_after / 2, beat).await {
        Ok(Ok(())) => {
            if let Some(gap) = pulse.landed(Instant::now(), dead_after) {
                warn!(
                    silent_for = ?gap,
                    "this daemon could not beat for a while (paused or starved): if other daemons \
                     took it for dead, they took its work over, and what it still holds of that is \
                     refused"
                );
            }
        }
        Ok(Err(e)) => {
            pulse.failed();
            warn!(error = %e, "could not record this daemon's heartbeat");
        }
        Err(_) => {
            pulse.failed();
            warn!("recording this daemon's heartbeat timed out");
        }
    }
}

/// Hands back the work of every daemon silent for `dead_after`, and wakes
/// the dispatcher and the supervisor to take it.
async fn rescue(ctx: &EngineContext, dead_after: Duration) {
    let rescued = match ctx
        .store
        .rescue_dead_daemons(&ctx.owner, dead_after, now_ms())
        .await
    {
        Ok(rescued) => rescued,
        Err(e) => {
            warn!(error = %e, "could not check for dead daemons");
            return;
        }
    };
    for dead in &rescued {
        info!(
            daemon = dead.daemon,
            silent_for = ?dead.silent_for,
            images = dead.images,
            job_tasks = dead.job_tasks,
            collection_tasks = dead.collection_tasks,
            "a daemon stopped beating: its work is back in the queue"
        );
    }
    if !rescued.is_empty() {
        ctx.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD_AFTER: Duration = Duration::from_secs(20);

    #[test]
    fn beats_come_at_least_four_times_within_dead_after() {
        assert_eq!(interval(DEAD_AFTER), Duration::from_secs(5));
        assert_eq!(interval(Duration::from_secs(60)), Duration::from_secs(5));
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_steady_pulse_may_rescue() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut pulse = Pulse::started(start);
        for secs in (5..20).step_by(5) {
            assert_eq!(pulse.landed(at(secs), DEAD_AFTER), None);
            assert!(!pulse.may_rescue(at(secs), DEAD_AFTER), "{secs} s");
        }
        assert_eq!(pulse.landed(at(20), DEAD_AFTER), None);
        assert!(pulse.may_rescue(at(20), DEAD_AFTER));
        // A failed beat (the database away): steady again only a whole
        // dead_after after the next beat that lands.
        pulse.failed();
        assert!(!pulse.may_rescue(at(25), DEAD_AFTER));
        assert_eq!(pulse.landed(at(30), DEAD_AFTER), None);
        assert!(!pulse.may_rescue(at(45), DEAD_AFTER));
        assert!(pulse.may_rescue(at(50), DEAD_AFTER));
        // Paused after the beat at 30 s, woken at 90 s: the gap is
        // reported, and steadiness starts over.
        assert_eq!(
            pulse.landed(at(90), DEAD_AFTER),
            Some(Duration::from_secs(60))
        );
        assert!(!pulse.may_rescue(at(90), DEAD_AFTER));
        assert!(pulse.may_rescue(at(110), DEAD_AFTER));
    }
}
