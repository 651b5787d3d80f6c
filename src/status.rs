//! The status report: one shape for `GET /status` and `status --json`, and
//! the human table of the `status` command. Reads counters only, so it stays
//! cheap at millions of images.

use crate::progress::group_digits;
use crate::store::{Job, Store};
use crate::units::format_bytes;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub discovered: u64,
    pub pending: u64,
    pub in_progress: u64,
    pub done: u64,
    pub failed: u64,
    pub bytes_done: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    pub images_per_sec: f64,
    pub bytes_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<Job>,
    pub totals: Totals,
    pub throughput: Throughput,
    /// Seconds until every discovered image is finished at the current rate;
    /// `null` when nothing moves.
    pub eta_seconds: Option<u64>,
}

impl StatusReport {
    pub fn new(jobs: Vec<Job>, throughput: Throughput) -> StatusReport {
        let mut totals = Totals::default();
        for job in &jobs {
            totals.discovered += job.counts.discovered;
            totals.pending += job.counts.pending;
            totals.in_progress += job.counts.in_progress;
            totals.done += job.counts.done;
            totals.failed += job.counts.failed;
            totals.bytes_done += job.bytes_done;
        }
        let left = totals.pending + totals.in_progress;
        let eta_seconds = (throughput.images_per_sec > 0.0)
            .then(|| (left as f64 / throughput.images_per_sec).ceil() as u64);
        StatusReport {
            jobs,
            totals,
            throughput,
            eta_seconds,
        }
    }
}

/// The `status` command: reads the database read-only, beside a live daemon.
pub async fn print_status(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = Store::open_read_only(db).await?;
    let jobs = store.list_jobs().await?;
    let since = crate::engine::now_ms() - 60_000;
    let (images, bytes) = store.finished_since(since).await?;
    let throughput = Throughput {
        images_per_sec: images as f64 / 60.0,
        bytes_per_sec: bytes as f64 / 60.0,
    };
    let report = StatusReport::new(jobs, throughput);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report.jobs));
    }
    Ok(())
}

/// The human table: one row per job.
pub fn render_table(jobs: &[Job]) -> String {
    let header = ["ID", "USER", "QUALITY", "STATE", "DONE/DISCOVERED", "FAILED", "SIZE", "LAST ERROR"];
    let rows: Vec<[String; 8]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.username.clone(),
                j.quality.to_string(),
                j.state.as_str().to_string(),
                format!(
                    "{}/{}{}",
                    group_digits(j.counts.done),
                    group_digits(j.counts.discovered),
                    if j.enumeration_complete { "" } else { "+" }
                ),
                group_digits(j.counts.failed),
                format_bytes(j.bytes_done),
                j.last_error.clone().unwrap_or_default().replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    };
    push_row(&header.map(String::from));
    for row in &rows {
        push_row(row);
    }
    if jobs.is_empty() {
        out.push_str("(no jobs yet)\n");
    }
    out
}
