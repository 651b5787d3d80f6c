//! The `status` command: the jobs table, or with `--json` the very report
//! `GET /status` serves. It opens the database read-only, so it works beside
//! a running daemon, and reads only counters, so it stays cheap at millions
//! of images. Throughput comes from the images finished in the last minute.

use crate::api::status::{StatusReport, Throughput, Totals, remaining_images};
use crate::progress::group_digits;
use crate::stats::Rate;
use crate::store::{Job, Store};
use crate::units::format_bytes;
use std::path::Path;

/// The `status` command: reads the database read-only, beside a live daemon.
pub async fn print_status(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = Store::open_read_only(db).await?;
    let jobs = store.list_jobs().await?;
    let since = crate::engine::now_ms() - 60_000;
    let (images, bytes) = store.finished_since(since).await?;
    let rate = Rate {
        images_per_sec: images as f64 / 60.0,
        bytes_per_sec: bytes as f64 / 60.0,
    };
    let report = StatusReport {
        totals: Totals::of(&jobs),
        throughput: Throughput {
            images_per_sec: rate.images_per_sec,
            bytes_per_sec: rate.bytes_per_sec,
        },
        eta_seconds: rate
            .eta(remaining_images(&jobs))
            .map(|eta| eta.as_secs_f64().ceil() as u64),
        jobs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report.jobs));
    }
    Ok(())
}

/// The human table: one row per job.
pub fn render_table(jobs: &[Job]) -> String {
    let header = [
        "ID",
        "USER",
        "QUALITY",
        "STATE",
        "DONE/DISCOVERED",
        "FAILED",
        "SIZE",
        "LAST ERROR",
    ];
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
                if j.counts.deleted > 0 {
                    format!(
                        "{} ({} deleted)",
                        group_digits(j.counts.failed),
                        group_digits(j.counts.deleted)
                    )
                } else {
                    group_digits(j.counts.failed)
                },
                format_bytes(j.bytes_done),
                j.last_error
                    .clone()
                    .unwrap_or_default()
                    .replace(['\n', '\r'], " "),
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
