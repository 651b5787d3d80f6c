//! The one limiter every API call passes (ARCHITECTURE.md invariant 5: a
//! rate limit slows all API calls and costs no attempt).
//!
//! It spaces calls evenly at `calls_per_minute` with a small burst (a GCRA,
//! i.e. a token bucket expressed as a "theoretical arrival time"), and it can
//! hold every caller at once after the API said "rate limited". Callers take
//! their slot under a mutex and sleep outside it, so waiting callers queue in
//! order and none spins. Time is `tokio::time`, so tests under
//! `tokio::time::pause()` are exact and instant.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};

/// First pause after a rate limit that came without `Retry-After`.
pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause without `Retry-After`; further ones stay at this value.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A budget of Graph API calls shared with other processes (a cluster's,
/// kept in its PostgreSQL queue). Every call takes a slot here after the
/// process's own [`Limiter`], so the cluster as a whole keeps the rate; a
/// rate limit one process meets holds them all.
pub trait SharedBudget: Send + Sync {
    /// `Ok(wait)`: the slot is taken, call after `wait`. `Err(hold)`: every
    /// call is held; ask again after `hold`.
    fn take_slot(
        &self,
        interval: Duration,
        tolerance: Duration,
    ) -> futures_util::future::BoxFuture<'_, Result<Duration, Duration>>;

    /// Holds every process's calls for `pause`.
    fn hold(&self, pause: Duration) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Waits for a slot of `budget` at `limiter`'s pace. Each hold it waits out
/// is finite (a server's pause, at most 60 s without `Retry-After`).
pub async fn take_shared_slot(budget: &dyn SharedBudget, limiter: &Limiter) {
    loop {
        match budget.take_slot(limiter.interval, limiter.tolerance).await {
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                return;
            }
            Err(hold) => tokio::time::sleep(hold).await,
        }
    }
}

/// Paces API calls to `calls_per_minute` with a small burst, shared by every task of the process.
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    /// How far ahead of real time the schedule may run: `(burst - 1) * interval`.
    tolerance: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the next call would be due if calls were perfectly spaced.
    theoretical: Instant,
    /// Every call waits until this instant (a rate-limit pause).
    held_until: Option<Instant>,
    /// Pauses in a row without `Retry-After`; reset by a success.
    pauses_in_a_row: u32,
}

impl Limiter {
    /// `calls_per_minute` of at least 1; `burst` calls may go back to back
    /// after an idle spell (at least 1).
    pub fn new(calls_per_minute: u32, burst: u32) -> Limiter {
        let interval = Duration::from_secs(60) / calls_per_minute.max(1);
        let tolerance = interval * (burst.max(1) - 1);
        Limiter {
            interval,
            tolerance,
            state: Mutex::new(State {
                theoretical: Instant::now(),
                held_until: None,
                pauses_in_a_row: 0,
            }),
        }
    }

    /// The burst the client uses: about 100 ms worth of calls, 1..=10.
    pub fn default_burst(calls_per_minute: u32) -> u32 {
        (calls_per_minute / 600).clamp(1, 10)
    }

    /// The even spacing between calls.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits for this caller's slot. Every API request awaits this first.
    pub async fn acquire(&self) {
        loop {
            let (due, reserved) = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.held_until {
                    Some(until) if until > now => (until, false),
                    _ => {
                        s.held_until = None;
                        let start = s.theoretical.max(now);
                        s.theoretical = start + self.interval;
                        let due = start.checked_sub(self.tolerance).unwrap_or(now).max(now);
                        if due <= now {
                            return;
                        }
                        (due, true)
                    }
                }
            };
            sleep_until(due).await;
            // A pause that began while we slept for our slot applies to us too.
            if reserved && !self.is_held(Instant::now()) {
                return;
            }
        }
    }

    /// Holds every API call for an exponential pause (1 s doubling to 60 s
    /// over refusals in a row), or until `now + retry_after` when the server
    /// asked for longer. A `Retry-After: 0` (or an HTTP-date already past,
    /// from a server whose clock is behind) never shortens the pause: repeated
    /// refusals must slow us down whatever the header says. Returns the pause.
    pub fn hold(&self, retry_after: Option<Duration>) -> Duration {
        let mut s = self.lock();
        let doublings = s.pauses_in_a_row.min(16);
        s.pauses_in_a_row = s.pauses_in_a_row.saturating_add(1);
        let escalating = FIRST_PAUSE
            .checked_mul(1u32 << doublings)
            .map_or(MAX_PAUSE, |d| d.min(MAX_PAUSE));
        let pause = retry_after.map_or(escalating, |d| d.max(escalating));
        let until = Instant::now() + pause;
        let until = s.held_until.map_or(until, |h| h.max(until));
        s.held_until = Some(until);
        // Calls resume spaced out after the pause, not as one burst.
        s.theoretical = s.theoretical.max(until);
        pause
    }

    /// A call went through: the next pause without `Retry-After` starts at 1 s again.
    pub fn record_success(&self) {
        self.lock().pauses_in_a_row = 0;
    }

    /// When the current rate-limit pause ends, if one is in force.
    pub fn held_until(&self) -> Option<Instant> {
        let s = self.lock();
        s.held_until.filter(|until| *until > Instant::now())
    }

    fn is_held(&self, now: Instant) -> bool {
        self.lock().held_until.is_some_and(|until| until > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `n` tasks that each acquire once and return when they got through.
    fn acquirers(limiter: &Arc<Limiter>, n: usize) -> Vec<tokio::task::JoinHandle<Instant>> {
        (0..n)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire().await;
                    Instant::now()
                })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_at_the_configured_rate() {
        let limiter = Limiter::new(600, 1); // one call per 100 ms
        let start = Instant::now();
        for _ in 0..21 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_back_to_back_then_spacing_resumes() {
        let limiter = Limiter::new(600, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let limiter = Arc::new(Limiter::new(60, 1)); // one per second
        let start = Instant::now();
        let tasks = acquirers(&limiter, 10);
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        for (i, t) in times.iter().enumerate() {
            assert_eq!(*t, Duration::from_secs(i as u64));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hold_blocks_everyone_until_retry_after() {
        let limiter = Arc::new(Limiter::new(60_000, 10));
        let start = Instant::now();
        assert_eq!(
            limiter.hold(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        let tasks = acquirers(&limiter, 8);
        for t in tasks {
            assert!(t.await.unwrap() - start >= Duration::from_secs(5));
        }
        assert_eq!(limiter.held_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn pause_that_starts_while_waiting_applies() {
        let limiter = Arc::new(Limiter::new(60, 1));
        let start = Instant::now();
        limiter.acquire().await; // slot 0
        let l = limiter.clone();
        let waiter = tokio::spawn(async move {
            l.acquire().await; // slot at 1 s
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        limiter.hold(Some(Duration::from_secs(10)));
        let done = waiter.await.unwrap();
        assert!(
            done - start >= Duration::from_millis(10_500),
            "{:?}",
            done - start
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_retry_after_still_pauses_and_escalates() {
        let limiter = Limiter::new(60_000, 1);
        let pauses: Vec<u64> = (0..4)
            .map(|_| limiter.hold(Some(Duration::ZERO)).as_secs())
            .collect();
        assert_eq!(pauses, vec![1, 2, 4, 8]);
        assert!(limiter.held_until().is_some());
        // A longer Retry-After is honoured as given.
        limiter.record_success();
        assert_eq!(
            limiter.hold(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_without_retry_after_doubles_and_resets() {
        let limiter = Limiter::new(60_000, 1);
        let pauses: Vec<u64> = (0..8).map(|_| limiter.hold(None).as_secs()).collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        limiter.record_success();
        assert_eq!(limiter.hold(None), FIRST_PAUSE);
    }
}
