//! Holding every download while the CDN refuses most of them.
//!
//! A CDN 429 defers the image that got it (no attempt burnt). A sporadic 429
//! should cost only that: stopping every worker for each one would slow a
//! healthy run to a crawl. But when most recent downloads are refused, the
//! CDN is throttling this client, and workers that keep fetching only dig
//! deeper. So the gate keeps the outcomes of the last [`WINDOW`] downloads,
//! and once at least half of them were refused, every download waits: for
//! the Retry-After when the CDN gave one, at least for a pause that doubles
//! (1 s to 60 s) while the refusals go on, and resets at the first success.

use super::limiter::Limiter;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How many recent downloads the gate looks at.
pub const WINDOW: usize = 20;

/// Refusals among the last [`WINDOW`] downloads that start a hold.
pub const REFUSALS_TO_HOLD: usize = WINDOW / 2;

#[derive(Debug)]
struct Recent {
    refused: [bool; WINDOW],
    next: usize,
    count: usize,
}

/// Shared by every clone of a client; see the module doc.
#[derive(Debug)]
pub struct CdnGate {
    /// No rate of its own: only its hold is used.
    hold: Limiter,
    recent: Mutex<Recent>,
}

impl Default for CdnGate {
    fn default() -> Self {
        CdnGate {
            hold: Limiter::new(u32::MAX, 10),
            recent: Mutex::new(Recent {
                refused: [false; WINDOW],
                next: 0,
                count: 0,
            }),
        }
    }
}

impl CdnGate {
    /// Waits while a hold is in force.
    pub async fn pass(&self) {
        self.hold.acquire().await;
    }

    /// Records a download's outcome: `Some(retry_after)` for a 429. Returns
    /// the pause when this refusal started (or lengthened) a hold.
    pub fn record(&self, refusal: Option<Option<Duration>>) -> Option<Duration> {
        let refused_enough = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let slot = recent.next;
            if recent.refused[slot] {
                recent.count -= 1;
            }
            recent.refused[slot] = refusal.is_some();
            if refusal.is_some() {
                recent.count += 1;
            }
            recent.next = (slot + 1) % WINDOW;
            recent.count >= REFUSALS_TO_HOLD
        };
        match refusal {
            None => {
                self.hold.record_success();
                None
            }
            Some(retry_after) if refused_enough => Some(self.hold.hold(retry_after)),
            Some(_) => None,
        }
    }

    /// When the current hold ends, if one is in force.
    pub fn held_until(&self) -> Option<Instant> {
        self.hold.held_until()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Option<Option<Duration>> = Some(Some(Duration::from_secs(1)));

    #[tokio::test(start_paused = true)]
    async fn sporadic_refusals_hold_nothing() {
        let gate = CdnGate::default();
        for i in 0..200 {
            // One refusal in five: well under half of any window.
            let refusal = if i % 5 == 0 { SECOND } else { None };
            assert_eq!(gate.record(refusal), None, "download {i}");
        }
        assert!(gate.held_until().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn mostly_refused_holds_everyone_and_a_success_resets_the_pause() {
        let gate = CdnGate::default();
        for _ in 0..REFUSALS_TO_HOLD - 1 {
            assert_eq!(gate.record(SECOND), None);
        }
        assert_eq!(gate.record(SECOND), Some(Duration::from_secs(1)));
        // Refusals go on: the pause doubles past the Retry-After.
        assert_eq!(gate.record(SECOND), Some(Duration::from_secs(2)));
        let held = gate.held_until().expect("a hold");
        let started = Instant::now();
        gate.pass().await;
        assert!(Instant::now() >= held && Instant::now() - started >= Duration::from_secs(2));
        // Successes push the refusals out of the window; the pause restarts at 1 s.
        for _ in 0..WINDOW {
            assert_eq!(gate.record(None), None);
        }
        for _ in 0..REFUSALS_TO_HOLD - 1 {
            assert_eq!(gate.record(SECOND), None);
        }
        assert_eq!(gate.record(Some(None)), Some(Duration::from_secs(1)));
    }
}
