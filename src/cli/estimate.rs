//! `download --dry-run`: how many images a job would archive and about how
//! many bytes, without writing anything. Every source is enumerated as the
//! engine would (filters applied locally), and the size comes from the
//! Content-Length of a uniform random sample (reservoir sampling, so memory
//! stays flat however many images there are).

use crate::config::Settings;
use crate::engine::refresh::renew;
use crate::mapillary::{MapillaryClient, MapillaryError, RetryDecision, backoff_delay};
use crate::model::{ImageMeta, Quality};
use crate::selection::{IDS_PER_CALL, JobSpec, Selection, Source};
use crate::units::{format_bytes, group_digits};
use rand::Rng;
use std::collections::HashSet;
use std::time::Duration;

/// Images whose size is sampled for the estimate.
const SAMPLE_SIZE: usize = 100;

/// Dry-run result for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The job's selection, in a few words.
    pub what: String,
    /// Images the job would archive.
    pub images: u64,
    /// Images whose size was asked (the sample).
    pub sampled: usize,
    /// The sample's mean size times `images`.
    pub estimated_bytes: u64,
}

/// The images counted so far and a uniform sample of their URLs.
struct Tally {
    quality: Quality,
    count: u64,
    sample: Vec<String>,
}

impl Tally {
    fn add(&mut self, image: &ImageMeta) {
        self.count += 1;
        let Some(url) = image.url_for(self.quality) else {
            return;
        };
        if self.sample.len() < SAMPLE_SIZE {
            self.sample.push(url.to_owned());
        } else {
            let slot = rand::rng().random_range(0..self.count) as usize;
            if slot < SAMPLE_SIZE {
                self.sample[slot] = url.to_owned();
            }
        }
    }
}

/// Enumerates the job's selection without writing anything and estimates
/// its size.
pub async fn estimate(
    client: &MapillaryClient,
    settings: &Settings,
    spec: &JobSpec,
) -> Result<Estimate, MapillaryError> {
    let mut tally = Tally {
        quality: spec.quality,
        count: 0,
        sample: Vec::with_capacity(SAMPLE_SIZE),
    };
    let selection = &spec.selection;
    match &selection.source {
        Source::Username(_) | Source::Organization(_) => {
            count_listing(client, settings, selection, &mut tally).await?;
        }
        Source::Sequences(sequences) => {
            for sequence in sequences {
                let ids = with_retries(settings, || client.fetch_sequence_ids(sequence)).await?;
                count_by_id(client, settings, spec, &ids, &mut tally).await?;
            }
        }
        Source::Images(ids) => count_by_id(client, settings, spec, ids, &mut tally).await?,
    }
    let mut sizes = Vec::with_capacity(tally.sample.len());
    for url in &tally.sample {
        if let Ok(Some(size)) = with_retries(settings, || client.probe_size(url)).await {
            sizes.push(size);
        }
    }
    let mean = if sizes.is_empty() {
        0.0
    } else {
        sizes.iter().sum::<u64>() as f64 / sizes.len() as f64
    };
    Ok(Estimate {
        what: selection.to_string(),
        images: tally.count,
        sampled: sizes.len(),
        estimated_bytes: (mean * tally.count as f64).round() as u64,
    })
}

/// Counts the images of a user's or an organization's listing that pass
/// the filters, page by page.
async fn count_listing(
    client: &MapillaryClient,
    settings: &Settings,
    selection: &Selection,
    tally: &mut Tally,
) -> Result<(), MapillaryError> {
    // Overlapping pages repeat ids of the page before; remembering one page
    // is enough to count each image once.
    let mut previous_page = HashSet::new();
    let filters = &selection.filters;
    let first = client.listing_url(&selection.source, filters, filters.bbox, client.page_size());
    let mut url = Some(first);
    while let Some(page_url) = url.take() {
        let page = with_retries(settings, || client.fetch_page(&page_url)).await?;
        let mut this_page = HashSet::with_capacity(page.images.len());
        for image in &page.images {
            if previous_page.contains(&image.id) || !this_page.insert(image.id.clone()) {
                continue;
            }
            if selection.matches(image) {
                tally.add(image);
            }
        }
        if page.images.is_empty() {
            break;
        }
        previous_page = this_page;
        url = page.next;
    }
    Ok(())
}

/// Counts the images of `ids` that exist and pass the filters, 50 per call.
async fn count_by_id(
    client: &MapillaryClient,
    settings: &Settings,
    spec: &JobSpec,
    ids: &[String],
    tally: &mut Tally,
) -> Result<(), MapillaryError> {
    for chunk in ids.chunks(IDS_PER_CALL) {
        let fresh = with_retries(settings, || async {
            let renewal = renew(chunk.to_vec(), |group| async move {
                let refs: Vec<&str> = group.iter().map(String::as_str).collect();
                client.fetch_images(&refs).await
            })
            .await;
            match renewal.unsettled {
                Some((_, error)) => Err(error),
                None => Ok(renewal.fresh),
            }
        })
        .await?;
        for id in chunk {
            if let Some(image) = fresh.get(id)
                && spec.selection.matches(image)
            {
                tally.add(image);
            }
        }
    }
    Ok(())
}

/// Retries transient faults and rate limits with backoff, up to `max_attempts`.
async fn with_retries<T, F, Fut>(settings: &Settings, mut call: F) -> Result<T, MapillaryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, MapillaryError>>,
{
    let base = Duration::from_millis(settings.retry.backoff_base_ms);
    let cap = Duration::from_millis(settings.retry.backoff_cap_ms);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => match e.decision() {
                RetryDecision::RateLimited(wait) => {
                    tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))).await;
                }
                RetryDecision::Retryable | RetryDecision::RefreshUrl
                    if attempt < settings.retry.max_attempts =>
                {
                    tokio::time::sleep(backoff_delay(attempt, base, cap)).await;
                }
                _ => return Err(e),
            },
        }
    }
}

/// The dry-run report line.
pub fn estimate_line(e: &Estimate, quality: Quality) -> String {
    if e.images == 0 {
        return format!(
            "{}: no images found (unknown source, or nothing matches the filters)",
            e.what
        );
    }
    format!(
        "{}: about to download {} images at quality {quality} (≈ {}, {} bytes). Estimate: mean Content-Length of {} randomly sampled images (HEAD, or a 1-byte ranged GET where HEAD is refused) × {} images.",
        e.what,
        group_digits(e.images),
        format_bytes(e.estimated_bytes),
        e.estimated_bytes,
        e.sampled,
        group_digits(e.images),
    )
}
