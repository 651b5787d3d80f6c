//! Request latency for the benches: quantiles of sorted samples, and a
//! sampler that times `GET`s from a thread of its own.

use anyhow::bail;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `p` quantile (0..=1) of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Times `GET url` (request to last body byte) on its own OS thread and
/// runtime, so work busy on the caller's runtime (e.g. the fake API) cannot
/// delay the clock. After 20 untimed requests (connection set-up), samples
/// every `interval` until `max_samples` or `stop`; returns them sorted.
pub fn sample_get(
    url: String,
    interval: Duration,
    max_samples: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<Vec<Duration>>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            for _ in 0..20 {
                http.get(&url).send().await?.bytes().await?;
            }
            let mut samples = Vec::with_capacity(max_samples.min(100_000));
            while samples.len() < max_samples && !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let response = http.get(&url).send().await?;
                let status = response.status();
                response.bytes().await?;
                let elapsed = start.elapsed();
                if !status.is_success() {
                    bail!("GET {url} answered {status}");
                }
                samples.push(elapsed);
                tokio::time::sleep(interval).await;
            }
            samples.sort();
            Ok(samples)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let ms = |n| Duration::from_millis(n);
        let samples: Vec<Duration> = (1..=101).map(ms).collect();
        assert_eq!(percentile(&samples, 0.0), ms(1));
        assert_eq!(percentile(&samples, 0.5), ms(51));
        assert_eq!(percentile(&samples, 0.99), ms(100));
        assert_eq!(percentile(&samples, 1.0), ms(101));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
