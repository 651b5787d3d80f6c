//! The `failures` command: which images failed for good, and why, read
//! from the database beside running daemons (as `status` reads it). A
//! table, or with `--json` the very objects `GET /jobs/{id}/images` serves,
//! as one JSON array. It pages through the store a thousand rows at a time
//! and writes each page as it comes, so a job with a million failures
//! prints in constant memory.

use crate::store::{FailReason, ImageFilter, ImageState, ListedImage, Store, StoreError};
use crate::units::group_digits;
use std::io::Write;

/// Rows read per store page.
const PAGE: u32 = 1000;

/// What to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailuresOptions {
    /// One job's failures; `None`: every job's.
    pub job: Option<i64>,
    /// Only failures for this reason.
    pub reason: Option<FailReason>,
    /// The API's JSON objects instead of a table.
    pub json: bool,
}

/// Writes the failed images `options` selects to `out`; returns how many.
/// A job that does not exist is [`StoreError::NoSuchJob`].
pub async fn write_failures(
    store: &Store,
    options: FailuresOptions,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let filter = ImageFilter {
        state: Some(ImageState::Failed),
        reason: options.reason,
    };
    let mut sink = Sink::new(options.json, out)?;
    match options.job {
        Some(id) => {
            if store.find_job(id).await?.is_none() {
                return Err(StoreError::NoSuchJob(id).into());
            }
            write_job(store, id, &filter, &mut sink).await?;
        }
        None => {
            let mut after = None;
            loop {
                let jobs = store.jobs_page(after, PAGE).await?;
                for job in jobs.items.iter().filter(|job| job.counts.failed > 0) {
                    write_job(store, job.id, &filter, &mut sink).await?;
                }
                after = jobs.items.last().map(|job| job.id);
                if !jobs.more {
                    break;
                }
            }
        }
    }
    sink.finish()
}

/// Every failed image of one job `filter` selects, page by page.
async fn write_job(
    store: &Store,
    job: i64,
    filter: &ImageFilter,
    sink: &mut Sink<'_, impl Write>,
) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = store
            .job_images(job, filter, after.as_deref(), PAGE)
            .await?;
        for image in &page.items {
            sink.write(image)?;
        }
        after = page.items.last().map(|image| image.image_id.clone());
        if !page.more {
            return Ok(());
        }
    }
}

/// Where rows go: a JSON array or the table, written as they come.
struct Sink<'a, W: Write> {
    json: bool,
    out: &'a mut W,
    written: u64,
}

/// The table's columns and their widths (a longer value widens its row).
const COLUMNS: [(&str, usize); 7] = [
    ("JOB", 5),
    ("IMAGE", 18),
    ("REASON", 7),
    ("ATTEMPTS", 8),
    ("CAPTURED", 24),
    ("SEQUENCE", 22),
    ("LAST ERROR", 0),
];

impl<'a, W: Write> Sink<'a, W> {
    fn new(json: bool, out: &'a mut W) -> anyhow::Result<Self> {
        if json {
            out.write_all(b"[")?;
        } else {
            let header: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
            line(out, &header)?;
        }
        Ok(Sink {
            json,
            out,
            written: 0,
        })
    }

    fn write(&mut self, image: &ListedImage) -> anyhow::Result<()> {
        if self.json {
            let separator = if self.written == 0 { "\n  " } else { ",\n  " };
            self.out.write_all(separator.as_bytes())?;
            serde_json::to_writer(&mut *self.out, image)?;
        } else {
            let job = image.job_id.to_string();
            let attempts = image.attempts.to_string();
            let error = image
                .last_error
                .as_deref()
                .unwrap_or_default()
                .replace(['\n', '\r'], " ");
            line(
                self.out,
                &[
                    &job,
                    &image.image_id,
                    image.fail_reason.map_or("", FailReason::as_str),
                    &attempts,
                    image.captured_at.as_deref().unwrap_or("-"),
                    image.sequence.as_deref().unwrap_or("-"),
                    &error,
                ],
            )?;
        }
        self.written += 1;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<u64> {
        if self.json {
            let end: &[u8] = if self.written == 0 { b"]\n" } else { b"\n]\n" };
            self.out.write_all(end)?;
        } else if self.written == 0 {
            writeln!(self.out, "(no failed images)")?;
        } else {
            writeln!(
                self.out,
                "{} failed image{}",
                group_digits(self.written),
                if self.written == 1 { "" } else { "s" }
            )?;
        }
        self.out.flush()?;
        Ok(self.written)
    }
}

/// One table row, each cell padded to its column's width.
fn line(out: &mut impl Write, cells: &[&str]) -> std::io::Result<()> {
    let padded: Vec<String> = cells
        .iter()
        .zip(COLUMNS)
        .map(|(cell, (_, width))| format!("{cell:<width$}"))
        .collect();
    writeln!(out, "{}", padded.join("  ").trim_end())
}
