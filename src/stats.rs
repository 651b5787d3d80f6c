//! Throughput over the last minute, for `/status`, `/metrics` and the ETA;
//! and over the last hour, minute by minute, for the operator page's chart.
//!
//! Workers report every finished image; readers ask for a rate. A ring of 60
//! one-second buckets keeps memory constant however long the daemon runs, and
//! a bucket is recycled lazily when its second comes round again, so nobody
//! has to tick a clock. The mutex guards a few integer additions only, which
//! is cheaper than any lock-free scheme that has to recycle buckets safely.
//! A second ring of 60 one-minute buckets, recycled the same way under the
//! same lock, keeps the hour's history: O(1) per image, 60 reads per report.
//!
//! The rate's time is `tokio::time::Instant`, so tests drive it with
//! `tokio::time::pause()`. The history is keyed by wall-clock minutes (the
//! chart labels them), so its functions also come in `_at(now_ms)` forms.

use crate::clock::now_ms;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Width of the averaging window, in one-second buckets.
const WINDOW_SECS: u64 = 60;

/// Length of the throughput history, in one-minute buckets: the last hour.
pub const HISTORY_MINUTES: usize = 60;

const MINUTE_MS: i64 = 60_000;

/// One bucket of a ring: what completed in the second or minute `at`.
/// Both rings recycle their buckets the same way, so one type serves both.
#[derive(Debug, Clone, Copy)]
struct Bucket<T> {
    /// Which second since `origin` (the rate's ring) or minute since the
    /// Unix epoch (the history's; `i64::MIN`: never used) it counts.
    at: T,
    images: u64,
    bytes: u64,
}

impl<T: Copy + PartialEq> Bucket<T> {
    const fn empty(at: T) -> Self {
        Bucket {
            at,
            images: 0,
            bytes: 0,
        }
    }

    /// Counts one image of `bytes` bytes in `at`, first emptying a bucket
    /// still holding an older second or minute.
    fn count(&mut self, at: T, bytes: u64) {
        if self.at != at {
            *self = Bucket::empty(at);
        }
        self.images += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Both rings, behind one lock so an image is counted in both or neither.
#[derive(Debug)]
struct Rings {
    seconds: [Bucket<u64>; WINDOW_SECS as usize],
    minutes: [Bucket<i64>; HISTORY_MINUTES],
}

/// Images and bytes completed per second, averaged over the last minute;
/// and per minute over the last hour.
#[derive(Debug)]
pub struct Stats {
    origin: Instant,
    rings: Mutex<Rings>,
}

/// What one wall-clock minute completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteThroughput {
    /// Unix milliseconds at the start of the minute.
    pub start_ms: i64,
    /// Images completed in it.
    pub images: u64,
    /// Bytes written in it.
    pub bytes: u64,
}

/// The last [`HISTORY_MINUTES`] minutes up to the one holding `now_ms`,
/// oldest first, all zero: the shape of a history with nothing recorded.
pub fn empty_history(now_ms: i64) -> Vec<MinuteThroughput> {
    let current = now_ms.div_euclid(MINUTE_MS);
    (current - HISTORY_MINUTES as i64 + 1..=current)
        .map(|minute| MinuteThroughput {
            start_ms: minute * MINUTE_MS,
            images: 0,
            bytes: 0,
        })
        .collect()
}

/// Unix ms at the start of the oldest minute of the history as of `now_ms`.
pub fn history_start_ms(now_ms: i64) -> i64 {
    (now_ms.div_euclid(MINUTE_MS) - HISTORY_MINUTES as i64 + 1) * MINUTE_MS
}

/// [`empty_history`] as of `now_ms` with the figures of `minutes` (any
/// order; minutes outside the hour are left out): the history the `status`
/// command reads from the database.
pub fn history_of(now_ms: i64, minutes: &[MinuteThroughput]) -> Vec<MinuteThroughput> {
    let mut history = empty_history(now_ms);
    let first = history[0].start_ms;
    for m in minutes {
        let index = (m.start_ms - first).div_euclid(MINUTE_MS);
        if let Some(entry) = usize::try_from(index).ok().and_then(|i| history.get_mut(i)) {
            entry.images = m.images;
            entry.bytes = m.bytes;
        }
    }
    history
}

/// A throughput reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    /// Images completed per second.
    pub images_per_sec: f64,
    /// Bytes written per second.
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
    /// Empty rings: nothing completed yet.
    pub fn new() -> Stats {
        Stats {
            origin: Instant::now(),
            rings: Mutex::new(Rings {
                seconds: [Bucket::empty(0); WINDOW_SECS as usize],
                minutes: [Bucket::empty(i64::MIN); HISTORY_MINUTES],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rings> {
        // A poisoned lock only means another thread panicked mid-addition;
        // the counters are still plain integers, so keep counting.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn second_now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs()
    }

    /// Counts one finished image of `bytes` bytes at the current instant.
    pub fn record_image(&self, bytes: u64) {
        self.record_image_at(bytes, now_ms());
    }

    /// [`Stats::record_image`] with the wall clock at `now_ms` (the history's
    /// minute); the rate's second still comes from the monotonic clock.
    pub fn record_image_at(&self, bytes: u64, now_ms: i64) {
        let second = self.second_now();
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut rings = self.lock();
        rings.minutes[minute.rem_euclid(HISTORY_MINUTES as i64) as usize].count(minute, bytes);
        rings.seconds[(second % WINDOW_SECS) as usize].count(second, bytes);
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
            let rings = self.lock();
            rings
                .seconds
                .iter()
                .filter(|b| b.at >= oldest && b.at <= second)
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

    /// Fills the history with minutes the database remembers (images that
    /// finished before this process started), so a restarted daemon's chart
    /// goes on where the last one's stopped. A minute this process has
    /// already counted keeps the larger figure: the database's minute holds
    /// every image of that minute, ours only those finished since the start.
    pub fn seed_history(&self, minutes: &[MinuteThroughput]) {
        let mut rings = self.lock();
        for m in minutes {
            let minute = m.start_ms.div_euclid(MINUTE_MS);
            let slot = &mut rings.minutes[minute.rem_euclid(HISTORY_MINUTES as i64) as usize];
            if slot.at < minute {
                *slot = Bucket {
                    at: minute,
                    images: m.images,
                    bytes: m.bytes,
                };
            } else if slot.at == minute && slot.images < m.images {
                slot.images = m.images;
                slot.bytes = m.bytes;
            }
        }
    }

    /// The last hour, minute by minute, oldest first; the last entry is the
    /// current (partial) minute. Minutes nothing finished in are zero.
    pub fn history(&self) -> Vec<MinuteThroughput> {
        self.history_at(now_ms())
    }

    /// [`Stats::history`] as of the wall-clock instant `now_ms`. A bucket
    /// from the future (the clock was set back) is not shown until its
    /// minute comes round.
    pub fn history_at(&self, now_ms: i64) -> Vec<MinuteThroughput> {
        let mut history = empty_history(now_ms);
        let rings = self.lock();
        for entry in &mut history {
            let minute = entry.start_ms / MINUTE_MS;
            let slot = &rings.minutes[minute.rem_euclid(HISTORY_MINUTES as i64) as usize];
            if slot.at == minute {
                entry.images = slot.images;
                entry.bytes = slot.bytes;
            }
        }
        history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Stats that counted `images` images of `bytes` bytes each at once,
    /// `secs` seconds after they started.
    async fn burst_after(secs: u64, images: usize, bytes: u64) -> Stats {
        let stats = Stats::new();
        advance(Duration::from_secs(secs)).await;
        for _ in 0..images {
            stats.record_image(bytes);
        }
        stats
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
        let stats = burst_after(10, 20, 50).await;
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
        let stats = burst_after(100, 60, 1).await;
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

    /// 2024-05-01T12:00:00Z, a minute boundary.
    const NOON_MS: i64 = 1_714_564_800_000;

    #[tokio::test(start_paused = true)]
    async fn history_is_an_hour_of_minutes_oldest_first_zero_filled() {
        let stats = Stats::new();
        let now = NOON_MS + 30_000;
        let history = stats.history_at(now);
        assert_eq!(history.len(), HISTORY_MINUTES);
        assert_eq!(history.last().unwrap().start_ms, NOON_MS);
        assert_eq!(history[0].start_ms, NOON_MS - 59 * MINUTE_MS);
        assert!(
            history
                .windows(2)
                .all(|w| w[1].start_ms - w[0].start_ms == MINUTE_MS)
        );
        assert!(history.iter().all(|m| m.images == 0 && m.bytes == 0));
        assert_eq!(history, empty_history(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_seeded_history_shows_the_database_minutes_and_keeps_counting() {
        let stats = Stats::new();
        let now = NOON_MS + 30_000;
        stats.record_image_at(5, NOON_MS);
        stats.seed_history(&[
            // Before the hour: out of sight.
            MinuteThroughput {
                start_ms: NOON_MS - 60 * MINUTE_MS,
                images: 9,
                bytes: 9,
            },
            MinuteThroughput {
                start_ms: NOON_MS - 2 * MINUTE_MS,
                images: 3,
                bytes: 300,
            },
            // The current minute: the database saw more than this process.
            MinuteThroughput {
                start_ms: NOON_MS,
                images: 4,
                bytes: 400,
            },
        ]);
        stats.record_image_at(50, NOON_MS + 1_000);
        let history = stats.history_at(now);
        assert_eq!(history.len(), HISTORY_MINUTES);
        assert_eq!((history[57].images, history[57].bytes), (3, 300));
        assert_eq!((history[59].images, history[59].bytes), (5, 450));
        assert_eq!(history.iter().map(|m| m.images).sum::<u64>(), 8);
        assert_eq!(
            history_of(
                now,
                &[MinuteThroughput {
                    start_ms: NOON_MS - 2 * MINUTE_MS,
                    images: 3,
                    bytes: 300
                }]
            ),
            {
                let mut expected = empty_history(now);
                expected[57].images = 3;
                expected[57].bytes = 300;
                expected
            }
        );
        assert_eq!(
            history_of(
                now,
                &[MinuteThroughput {
                    start_ms: NOON_MS + MINUTE_MS,
                    images: 1,
                    bytes: 1
                }]
            ),
            empty_history(now)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn history_counts_each_image_in_its_minute() {
        let stats = Stats::new();
        stats.record_image_at(100, NOON_MS);
        stats.record_image_at(200, NOON_MS + 59_999);
        stats.record_image_at(50, NOON_MS - 1);
        stats.record_image_at(7, NOON_MS - 10 * MINUTE_MS);
        let history = stats.history_at(NOON_MS + 5_000);
        let last = history[HISTORY_MINUTES - 1];
        assert_eq!((last.start_ms, last.images, last.bytes), (NOON_MS, 2, 300));
        assert_eq!((history[58].images, history[58].bytes), (1, 50));
        assert_eq!((history[49].images, history[49].bytes), (1, 7));
        let total: u64 = history.iter().map(|m| m.images).sum();
        assert_eq!(total, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn history_forgets_minutes_older_than_an_hour() {
        let stats = Stats::new();
        stats.record_image_at(10, NOON_MS);
        // 59 minutes later it is the oldest bucket; 60 minutes later it is gone.
        let later = stats.history_at(NOON_MS + 59 * MINUTE_MS);
        assert_eq!((later[0].start_ms, later[0].images), (NOON_MS, 1));
        let gone = stats.history_at(NOON_MS + 60 * MINUTE_MS);
        assert!(gone.iter().all(|m| m.images == 0));
        // Exactly one lap later the same slot is recycled, not added to.
        stats.record_image_at(3, NOON_MS + 60 * MINUTE_MS);
        let lap = stats.history_at(NOON_MS + 60 * MINUTE_MS);
        assert_eq!((lap[59].images, lap[59].bytes), (1, 3));
        assert_eq!(lap.iter().map(|m| m.images).sum::<u64>(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_set_back_hides_future_minutes() {
        let stats = Stats::new();
        stats.record_image_at(10, NOON_MS + 5 * MINUTE_MS);
        let history = stats.history_at(NOON_MS);
        assert!(history.iter().all(|m| m.images == 0));
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
