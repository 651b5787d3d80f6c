//! Retry delays: exponential with "equal jitter".
//!
//! Equal jitter (half fixed, half random) keeps the delay growing with the
//! attempt number, so a flaky server is really given more room, while the
//! random half spreads 16 workers that failed together so they do not
//! return together.

use rand::Rng;
use std::time::Duration;

/// The delay before retry number `attempt` (1-based; 0 is treated as 1):
/// uniformly drawn from `[e/2, e]` where `e = min(cap, base * 2^(attempt-1))`.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    backoff_delay_with(&mut rand::rng(), attempt, base, cap)
}

/// [`backoff_delay`] with a caller-chosen RNG, for deterministic tests.
pub fn backoff_delay_with<R: Rng + ?Sized>(
    rng: &mut R,
    attempt: u32,
    base: Duration,
    cap: Duration,
) -> Duration {
    let ceiling = exponential(attempt, base, cap);
    let half = ceiling / 2;
    let spread = ceiling - half;
    let jitter_nanos = rng.random_range(0..=spread.as_nanos().min(u64::MAX as u128) as u64);
    half + Duration::from_nanos(jitter_nanos)
}

/// `min(cap, base * 2^(attempt-1))` without overflow.
fn exponential(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let shift = attempt.max(1) - 1;
    if shift >= 32 {
        return cap;
    }
    base.checked_mul(1u32 << shift).map_or(cap, |d| d.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const BASE: Duration = Duration::from_secs(2);
    const CAP: Duration = Duration::from_secs(600);

    #[test]
    fn stays_within_equal_jitter_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let e = exponential(attempt, BASE, CAP);
            for _ in 0..200 {
                let d = backoff_delay_with(&mut rng, attempt, BASE, CAP);
                assert!(
                    d >= e / 2 && d <= e,
                    "attempt {attempt}: {d:?} outside [{:?}, {e:?}]",
                    e / 2
                );
            }
        }
    }

    #[test]
    fn grows_then_caps() {
        assert_eq!(exponential(0, BASE, CAP), BASE);
        assert_eq!(exponential(1, BASE, CAP), BASE);
        assert_eq!(exponential(2, BASE, CAP), BASE * 2);
        assert_eq!(exponential(5, BASE, CAP), BASE * 16);
        assert_eq!(exponential(9, BASE, CAP), BASE * 256);
        assert_eq!(exponential(10, BASE, CAP), CAP);
        assert_eq!(exponential(u32::MAX, BASE, CAP), CAP);
        assert!(backoff_delay(u32::MAX, BASE, CAP) <= CAP);
        assert!(backoff_delay(40, Duration::MAX, CAP) <= CAP);
    }

    #[test]
    fn jitter_really_varies() {
        let mut rng = StdRng::seed_from_u64(1);
        let samples: std::collections::HashSet<Duration> = (0..50)
            .map(|_| backoff_delay_with(&mut rng, 4, BASE, CAP))
            .collect();
        assert!(samples.len() > 40, "only {} distinct delays", samples.len());
    }

    #[test]
    fn zero_base_is_zero() {
        assert_eq!(backoff_delay(3, Duration::ZERO, CAP), Duration::ZERO);
    }
}
