//! Throughput over the last minute, for `/status`, `/metrics` and the ETA.
//!
//! Workers report every finished image; readers ask for a rate. A ring of 60
//! one-second buckets keeps memory constant however long the daemon runs, and
//! a bucket is recycled lazily when its second comes round again, so nobody
//! has to tick a clock. The mutex guards a few integer additions only, which
//! is cheaper than any lock-free scheme that has to recycle buckets safely.
//!
//! Time is `tokio::time::Instant`, so tests drive it with `tokio::time::pause()`.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Width of the averaging window, in one-second buckets.
const WINDOW_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which second since `origin` this bucket currently counts.
    second: u64,
    images: u64,
    bytes: u64,
}

/// Images and bytes completed per second, averaged over the last minute.
#[derive(Debug)]
pub struct Stats {
    origin: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECS as usize]>,
}

/// A throughput reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    pub images_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl Rate {
    /// How long `remaining_images` take at this rate; `None` when the rate
    /// is zero and work remains (no honest estimate).
    pub fn eta(&self, remaining_images: u64) -> Option<Duration> {
        if remaining_images == 0 {
            Some(Duration::ZERO)
        } else if self.images_per_sec > 0.0 {
            Some(Duration::from_secs_f64(
                remaining_images as f64 / self.images_per_sec,
            ))
        } else {
            None
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            origin: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS as usize]),
        }
    }

    fn second_now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs()
    }

    /// Counts one finished image of `bytes` bytes at the current instant.
    pub fn record_image(&self, bytes: u64) {
        let second = self.second_now();
        // A poisoned lock only means another thread panicked mid-addition;
        // the counters are still plain integers, so keep counting.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = &mut buckets[(second % WINDOW_SECS) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                images: 0,
                bytes: 0,
            };
        }
        bucket.images += 1;
        bucket.bytes = bucket.bytes.saturating_add(bytes);
    }

    /// The average over the last 60 s (the current, partial second included).
    ///
    /// Before a full minute has passed the divisor is the time elapsed (at
    /// least one second), so a fresh daemon does not under-report by 60x.
    pub fn rate(&self) -> Rate {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        let second = elapsed.as_secs();
        let oldest = second.saturating_sub(WINDOW_SECS - 1);
        let (images, bytes) = {
            let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            buckets
                .iter()
                .filter(|b| b.second >= oldest && b.second <= second)
                .fold((0u64, 0u64), |(i, by), b| {
                    (i + b.images, by.saturating_add(b.bytes))
                })
        };
        let window = elapsed.as_secs_f64().clamp(1.0, WINDOW_SECS as f64);
        Rate {
            images_per_sec: images as f64 / window,
            bytes_per_sec: bytes as f64 / window,
        }
    }

    /// How long `remaining_images` will take at the current rate; `None`
    /// while nothing has completed in the last minute (no honest estimate).
    pub fn eta(&self, remaining_images: u64) -> Option<Duration> {
        self.rate().eta(remaining_images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn empty_stats_have_zero_rate_and_no_eta() {
        let stats = Stats::new();
        assert_eq!(stats.rate(), Rate::default());
        assert_eq!(stats.eta(10), None);
        assert_eq!(stats.eta(0), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_load_over_a_full_minute() {
        let stats = Stats::new();
        // 5 images of 1000 bytes every second for two minutes.
        for _ in 0..120 {
            for _ in 0..5 {
                stats.record_image(1000);
            }
            advance(Duration::from_secs(1)).await;
        }
        let rate = stats.rate();
        // The current second has nothing yet, so 59 full seconds of 5/s.
        assert!(approx(rate.images_per_sec, 59.0 * 5.0 / 60.0), "{rate:?}");
        assert!(approx(rate.bytes_per_sec, 59.0 * 5000.0 / 60.0), "{rate:?}");
        let eta = stats.eta(100).unwrap();
        assert!((eta.as_secs_f64() - 100.0 / (59.0 * 5.0 / 60.0)).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn young_process_divides_by_elapsed_time() {
        let stats = Stats::new();
        advance(Duration::from_secs(10)).await;
        for _ in 0..20 {
            stats.record_image(50);
        }
        let rate = stats.rate();
        assert!(approx(rate.images_per_sec, 2.0), "{rate:?}");
        assert!(approx(rate.bytes_per_sec, 100.0), "{rate:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn first_second_is_not_inflated() {
        let stats = Stats::new();
        stats.record_image(10);
        assert!(approx(stats.rate().images_per_sec, 1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn old_work_leaves_the_window() {
        let stats = Stats::new();
        advance(Duration::from_secs(100)).await;
        for _ in 0..60 {
            stats.record_image(1);
        }
        advance(Duration::from_secs(59)).await;
        assert!(approx(stats.rate().images_per_sec, 1.0));
        advance(Duration::from_secs(1)).await;
        assert_eq!(stats.rate(), Rate::default());
        assert_eq!(stats.eta(5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn recycled_bucket_forgets_its_previous_minute() {
        let stats = Stats::new();
        advance(Duration::from_secs(61)).await;
        stats.record_image(7);
        stats.record_image(7);
        // Exactly one lap later the same bucket index is reused.
        advance(Duration::from_secs(60)).await;
        stats.record_image(3);
        let rate = stats.rate();
        assert!(approx(rate.images_per_sec, 1.0 / 60.0), "{rate:?}");
        assert!(approx(rate.bytes_per_sec, 3.0 / 60.0), "{rate:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_recorders_lose_nothing() {
        let stats = std::sync::Arc::new(Stats::new());
        let runtime = tokio::runtime::Handle::current();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                let runtime = runtime.clone();
                std::thread::spawn(move || {
                    // Inside the runtime context the paused clock applies.
                    let _context = runtime.enter();
                    for _ in 0..1000 {
                        stats.record_image(2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rate = stats.rate();
        assert!(approx(rate.images_per_sec, 4000.0), "{rate:?}");
        assert!(approx(rate.bytes_per_sec, 8000.0), "{rate:?}");
    }
}
