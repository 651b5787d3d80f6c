//! Hedged downloads: a second request for an image whose first one has gone
//! quiet for much longer than downloads usually do.
//!
//! A CDN body that stalls half-way would otherwise hold its worker for the
//! whole read-idle timeout (20 s by default), and a job's last minute is
//! ruled by such stragglers. The estimate of "much longer" is per process:
//! [`QuietEstimate`] keeps the time-to-first-byte and the longest silence
//! inside the body of recent healthy downloads, and a download that stays
//! quiet past their p95 × [`HedgePolicy::multiple`] (within a floor and a
//! cap) gets a twin. The first to finish wins and the other is dropped, so a
//! body is returned once and written once; when nothing stalls no twin is
//! ever started.

use super::error::{MapillaryError, RetryDecision};
use crate::metrics::{self, Metrics};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When a quiet download gets a twin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    /// The twin starts once the download has been quiet this many times the
    /// p95 of healthy downloads' quiet spells.
    pub multiple: f64,
    /// Never sooner than this: a scheduler hiccup on a loaded machine is no
    /// stall, and a needless twin costs the CDN a request.
    pub floor: Duration,
    /// Never later than this, and the wait while too few downloads are
    /// known to estimate from.
    pub cap: Duration,
    /// Healthy downloads needed before the estimate is trusted.
    pub min_samples: usize,
}

impl HedgePolicy {
    /// The defaults for a client whose reads give up after `idle`: a twin
    /// is useless once the first request has timed out, so the cap stays
    /// well inside it.
    pub fn for_idle_timeout(idle: Duration) -> HedgePolicy {
        HedgePolicy {
            multiple: 4.0,
            floor: Duration::from_millis(750),
            cap: (idle / 2).clamp(Duration::from_millis(750), Duration::from_secs(5)),
            min_samples: 16,
        }
    }
}

/// Healthy downloads kept for the estimate: enough for a steady p95, few
/// enough that a change of CDN conditions shows within a minute of work.
const WINDOW: usize = 256;
/// The thresholds are recomputed every this many samples, not per download.
const RECOMPUTE_EVERY: u64 = 16;

/// The per-process estimate of how long a healthy download stays quiet:
/// before its first byte, and at most between two chunks of its body.
#[derive(Debug)]
pub struct QuietEstimate {
    policy: HedgePolicy,
    samples: Mutex<Samples>,
    /// Current thresholds in microseconds (cached; read lock-free).
    headers_us: AtomicU64,
    body_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Samples {
    ttfb: VecDeque<Duration>,
    gap: VecDeque<Duration>,
    recorded: u64,
}

impl QuietEstimate {
    /// An estimate that knows nothing yet: every threshold is the cap.
    pub fn new(policy: HedgePolicy) -> QuietEstimate {
        let cap = micros(policy.cap);
        QuietEstimate {
            policy,
            samples: Mutex::default(),
            headers_us: AtomicU64::new(cap),
            body_us: AtomicU64::new(cap),
        }
    }

    /// The policy the thresholds follow.
    pub fn policy(&self) -> HedgePolicy {
        self.policy
    }

    /// Learns from one download that finished whole.
    pub fn record(&self, progress: &Progress) {
        let (Some(ttfb), gap) = (progress.ttfb(), progress.longest_gap()) else {
            return;
        };
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        push_bounded(&mut samples.ttfb, ttfb);
        push_bounded(&mut samples.gap, gap);
        samples.recorded += 1;
        if samples.ttfb.len() >= self.policy.min_samples
            && samples.recorded.is_multiple_of(RECOMPUTE_EVERY)
        {
            let headers = self.threshold(&samples.ttfb);
            let body = self.threshold(&samples.gap);
            self.headers_us.store(micros(headers), Ordering::Relaxed);
            self.body_us.store(micros(body), Ordering::Relaxed);
        }
    }

    /// How long a download in `phase` may stay quiet before it gets a twin.
    pub fn threshold_for(&self, phase: Phase) -> Duration {
        let us = match phase {
            Phase::Headers => &self.headers_us,
            Phase::Body => &self.body_us,
        };
        Duration::from_micros(us.load(Ordering::Relaxed))
    }

    fn threshold(&self, window: &VecDeque<Duration>) -> Duration {
        let mut sorted: Vec<Duration> = window.iter().copied().collect();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * 0.95).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
            .mul_f64(self.policy.multiple)
            .clamp(self.policy.floor, self.policy.cap)
    }
}

fn push_bounded(window: &mut VecDeque<Duration>, sample: Duration) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(sample);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Where a download stands, for its quiet time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent, no answer yet.
    Headers,
    /// Answered; the body is arriving.
    Body,
}

/// What one request reports as it goes: the download marks each step and
/// the hedge watches for silence. Atomics, so a download future holding a
/// reference stays `Send`.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Microseconds from `started` to the last sign of life.
    last_us: AtomicU64,
    /// Microseconds to the headers; `u64::MAX` until they came.
    ttfb_us: AtomicU64,
    longest_gap_us: AtomicU64,
    phase: AtomicU8,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// A request about to be sent.
    pub fn new() -> Progress {
        Progress {
            started: Instant::now(),
            last_us: AtomicU64::new(0),
            ttfb_us: AtomicU64::new(u64::MAX),
            longest_gap_us: AtomicU64::new(0),
            phase: AtomicU8::new(0),
        }
    }

    /// The response's headers came.
    pub fn answered(&self) {
        let now = self.now_us();
        self.ttfb_us.store(now, Ordering::Relaxed);
        self.last_us.store(now, Ordering::Relaxed);
        self.phase.store(1, Ordering::Relaxed);
    }

    /// A chunk of the body came.
    pub fn chunk(&self) {
        let now = self.now_us();
        let gap = now.saturating_sub(self.last_us.swap(now, Ordering::Relaxed));
        self.longest_gap_us.fetch_max(gap, Ordering::Relaxed);
    }

    fn now_us(&self) -> u64 {
        micros(self.started.elapsed())
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Headers,
            _ => Phase::Body,
        }
    }

    fn last_sign_of_life(&self) -> Instant {
        self.started + Duration::from_micros(self.last_us.load(Ordering::Relaxed))
    }

    fn ttfb(&self) -> Option<Duration> {
        let us = self.ttfb_us.load(Ordering::Relaxed);
        (us != u64::MAX).then(|| Duration::from_micros(us))
    }

    fn longest_gap(&self) -> Duration {
        Duration::from_micros(self.longest_gap_us.load(Ordering::Relaxed))
    }
}

/// Which request of a hedged download came back first with the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// Never hedged: the one request did it (or failed alone).
    Only,
    /// Hedged, and the first request finished first anyway.
    First,
    /// Hedged, and the twin finished first.
    Twin,
    /// Hedged, and both failed.
    Neither,
}

/// Runs `attempt` once, and once more beside it should it go quiet past
/// `estimate`'s threshold; returns the first body, or an error once both
/// have failed (an error that retrying cannot fix, like an expired URL, is
/// returned at once). The loser is dropped, which closes its connection.
pub async fn race<F, Fut, T>(
    estimate: &QuietEstimate,
    attempt: F,
) -> (Result<T, MapillaryError>, Winner)
where
    F: Fn(std::sync::Arc<Progress>) -> Fut,
    Fut: Future<Output = Result<T, MapillaryError>>,
{
    let first_progress = std::sync::Arc::new(Progress::new());
    let first = attempt(first_progress.clone());
    tokio::pin!(first);
    loop {
        let quiet_until =
            first_progress.last_sign_of_life() + estimate.threshold_for(first_progress.phase());
        tokio::select! {
            result = &mut first => {
                if result.is_ok() {
                    estimate.record(&first_progress);
                }
                return (result, Winner::Only);
            }
            _ = tokio::time::sleep_until(quiet_until) => {
                // Still quiet (no chunk moved the mark meanwhile)?
                let quiet_until = first_progress.last_sign_of_life()
                    + estimate.threshold_for(first_progress.phase());
                if Instant::now() >= quiet_until {
                    break;
                }
            }
        }
    }
    let twin_progress = std::sync::Arc::new(Progress::new());
    let twin = attempt(twin_progress.clone());
    tokio::pin!(twin);
    let (mut first_failed, mut twin_failed) = (false, false);
    let mut earliest_error = None;
    loop {
        let error = tokio::select! {
            result = &mut first, if !first_failed => match result {
                Ok(body) => return (Ok(body), Winner::First),
                Err(e) => {
                    first_failed = true;
                    e
                }
            },
            result = &mut twin, if !twin_failed => match result {
                Ok(body) => {
                    estimate.record(&twin_progress);
                    return (Ok(body), Winner::Twin);
                }
                Err(e) => {
                    twin_failed = true;
                    e
                }
            },
        };
        if decisive(&error) {
            return (Err(error), Winner::Neither);
        }
        let earliest = earliest_error.take().unwrap_or(error);
        if first_failed && twin_failed {
            return (Err(earliest), Winner::Neither);
        }
        earliest_error = Some(earliest);
    }
}

/// An error the other request cannot undo: the URL, the image or the
/// token is refused, or the CDN is rate limiting. Waiting for the other
/// request would only delay the same answer.
fn decisive(error: &MapillaryError) -> bool {
    !matches!(
        error.decision(),
        RetryDecision::Retryable | RetryDecision::GiveUp
    )
}

/// Counts a hedged download's outcome in `metrics`.
pub fn count(metrics: &Metrics, winner: Winner) {
    let counter = match winner {
        Winner::Only => return,
        Winner::First => &metrics.hedges_won_by_first,
        Winner::Twin => &metrics.hedges_won_by_twin,
        Winner::Neither => &metrics.hedges_failed,
    };
    metrics::add(counter, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn policy() -> HedgePolicy {
        HedgePolicy {
            multiple: 4.0,
            floor: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            min_samples: 4,
        }
    }

    /// A scripted request: headers after `ttfb`, then `chunks` chunks
    /// `gap` apart, then silence forever when `stall`.
    async fn scripted(
        progress: Arc<Progress>,
        ttfb: Duration,
        gap: Duration,
        stall: bool,
    ) -> Result<&'static str, MapillaryError> {
        tokio::time::sleep(ttfb).await;
        progress.answered();
        for _ in 0..4 {
            tokio::time::sleep(gap).await;
            progress.chunk();
        }
        if stall {
            std::future::pending::<()>().await;
        }
        Ok("body")
    }

    fn learned(estimate: &QuietEstimate, ttfb: Duration, gap: Duration, n: usize) {
        for _ in 0..n {
            let p = Progress::new();
            p.ttfb_us.store(micros(ttfb), Ordering::Relaxed);
            p.longest_gap_us.store(micros(gap), Ordering::Relaxed);
            estimate.record(&p);
        }
    }

    /// An estimate that has seen 16 healthy downloads: headers after 50 ms,
    /// chunks 5 ms apart.
    fn learned_healthy() -> QuietEstimate {
        let estimate = QuietEstimate::new(policy());
        learned(&estimate, ms(50), ms(5), 16);
        estimate
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn thresholds_follow_the_p95_within_floor_and_cap() {
        let estimate = QuietEstimate::new(policy());
        assert_eq!(estimate.threshold_for(Phase::Headers), ms(2000));
        learned(&estimate, ms(50), ms(1), 16);
        assert_eq!(estimate.threshold_for(Phase::Headers), ms(200));
        // Gaps of 1 ms x 4 stay at the floor.
        assert_eq!(estimate.threshold_for(Phase::Body), ms(100));
        learned(&estimate, ms(5000), ms(5000), 256);
        assert_eq!(estimate.threshold_for(Phase::Body), ms(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_download_is_never_hedged() {
        let estimate = learned_healthy();
        let calls = AtomicUsize::new(0);
        for _ in 0..50 {
            let (result, winner) = race(&estimate, |p| {
                calls.fetch_add(1, Ordering::Relaxed);
                scripted(p, ms(60), ms(20), false)
            })
            .await;
            assert_eq!((result.unwrap(), winner), ("body", Winner::Only));
        }
        assert_eq!(calls.load(Ordering::Relaxed), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_stalled_half_way_is_won_by_its_twin_soon_after_the_threshold() {
        let estimate = learned_healthy();
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let (result, winner) = race(&estimate, |p| {
            let stall = calls.fetch_add(1, Ordering::Relaxed) == 0;
            scripted(p, ms(50), ms(5), stall)
        })
        .await;
        assert_eq!((result.unwrap(), winner), ("body", Winner::Twin));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // 70 ms to the stall, the 100 ms floor, 70 ms for the twin.
        let took = started.elapsed();
        assert!(took < Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_hedged_after_the_cap_while_nothing_is_known() {
        let estimate = QuietEstimate::new(policy());
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let (result, winner) = race(&estimate, |p| {
            let first = calls.fetch_add(1, Ordering::Relaxed) == 0;
            let ttfb = if first {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(10)
            };
            scripted(p, ttfb, Duration::ZERO, false)
        })
        .await;
        assert_eq!((result.unwrap(), winner), ("body", Winner::Twin));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn both_failing_gives_the_first_error_and_a_decisive_one_ends_at_once() {
        let estimate = QuietEstimate::new(policy());
        let calls = AtomicUsize::new(0);
        let (result, winner) = race(&estimate, |_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_secs(if n == 0 { 5 } else { 1 })).await;
                Err::<(), _>(MapillaryError::Transient(format!("request {n}")))
            }
        })
        .await;
        assert_eq!(winner, Winner::Neither);
        assert!(result.unwrap_err().to_string().contains("request 1"));

        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let (result, winner) = race(&estimate, |_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Err::<(), _>(MapillaryError::UrlExpired("403".into()))
            }
        })
        .await;
        assert_eq!(winner, Winner::Neither);
        assert!(matches!(result, Err(MapillaryError::UrlExpired(_))));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
