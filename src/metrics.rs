//! Counters and histograms an operator can alert on, fed by the client and
//! the engine, rendered by `GET /metrics` next to the per-job gauges the
//! store keeps. Plain atomics: one relaxed add per event, nothing global
//! (one [`Metrics`] per client, shared by the engine and the API).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a call to the API or the CDN ended, for `outcome` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    /// Answered as hoped.
    Ok,
    /// HTTP 429, or the Graph API's rate-limit codes.
    RateLimited,
    /// Worth retrying: 5xx, timeouts, resets, expired URLs.
    Transient,
    /// Will not pass by retrying: bad token, bad parameter, deleted.
    Fatal,
}

impl OutcomeClass {
    /// Every class, in the order `/metrics` prints them.
    pub const ALL: [OutcomeClass; 4] = [
        OutcomeClass::Ok,
        OutcomeClass::RateLimited,
        OutcomeClass::Transient,
        OutcomeClass::Fatal,
    ];

    /// The `outcome` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Ok => "ok",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::Transient => "transient",
            OutcomeClass::Fatal => "fatal",
        }
    }

    /// The class of a call's result; the error says its own class.
    pub fn of<T, E: Classified>(result: &Result<T, E>) -> OutcomeClass {
        match result {
            Ok(_) => OutcomeClass::Ok,
            Err(error) => error.outcome_class(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An error that knows its [`OutcomeClass`]. The client's error implements
/// it where it is defined, so this low module never names the client's types
/// (the client feeds these counters: naming it here would be a cycle).
pub trait Classified {
    /// The class this outcome is counted under.
    fn outcome_class(&self) -> OutcomeClass;
}

/// A counter per [`OutcomeClass`].
#[derive(Debug, Default)]
pub struct ByOutcome([AtomicU64; 4]);

impl ByOutcome {
    /// Counts one call of `class`.
    pub fn add(&self, class: OutcomeClass) {
        self.0[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls of `class` so far.
    pub fn get(&self, class: OutcomeClass) -> u64 {
        self.0[class.index()].load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the `+Inf` bucket last.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration in its bucket and the sum.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last as `None`;
    /// then the sum in seconds and the total count.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64, u64) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied(), cumulative));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, cumulative)
    }
}

/// Download times: CDN answers take tens of ms to seconds.
const DOWNLOAD_BOUNDS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// API calls: a page of 2,000 images can take seconds; a search, tens.
const API_BOUNDS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything counted since the process started.
#[derive(Debug)]
pub struct Metrics {
    /// Images archived (written or adopted).
    pub images_completed: AtomicU64,
    /// Images failed for good.
    pub images_failed: AtomicU64,
    /// Images found deleted on Mapillary (also counted failed).
    pub images_deleted: AtomicU64,
    /// Bytes of images stored.
    pub bytes_written: AtomicU64,
    /// Graph API calls by outcome.
    pub api_calls: ByOutcome,
    /// CDN downloads by outcome.
    pub cdn_fetches: ByOutcome,
    /// Attempts that failed and will be tried again.
    pub retries: AtomicU64,
    /// Image URLs renewed through `GET /?ids=`.
    pub url_refreshes: AtomicU64,
    /// Times the API said "rate limited" and every API call was held.
    pub rate_limit_holds: AtomicU64,
    /// HTTP API requests refused for a missing or wrong token.
    pub http_auth_failures: AtomicU64,
    /// Hedged downloads (a second request beside a quiet first one) that
    /// the first request won anyway.
    pub hedges_won_by_first: AtomicU64,
    /// Hedged downloads that the second request won.
    pub hedges_won_by_twin: AtomicU64,
    /// Hedged downloads whose two requests both failed.
    pub hedges_failed: AtomicU64,
    /// How long image downloads take.
    pub image_download_seconds: Histogram,
    /// How long Graph API calls take.
    pub api_call_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            images_completed: AtomicU64::new(0),
            images_failed: AtomicU64::new(0),
            images_deleted: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            api_calls: ByOutcome::default(),
            cdn_fetches: ByOutcome::default(),
            retries: AtomicU64::new(0),
            url_refreshes: AtomicU64::new(0),
            rate_limit_holds: AtomicU64::new(0),
            http_auth_failures: AtomicU64::new(0),
            hedges_won_by_first: AtomicU64::new(0),
            hedges_won_by_twin: AtomicU64::new(0),
            hedges_failed: AtomicU64::new(0),
            image_download_seconds: Histogram::new(DOWNLOAD_BOUNDS),
            api_call_seconds: Histogram::new(API_BOUNDS),
        }
    }
}

/// `counter.fetch_add(n)`, relaxed: counters order nothing.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A counter's value now, relaxed like [`add`].
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_with_an_infinite_last_bucket() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(buckets, vec![(Some(0.1), 2), (Some(1.0), 3), (None, 4)]);
        assert_eq!(count, 4);
        assert!((sum - 5.65).abs() < 1e-9);
    }
}
