//! The status report, assembled once here for `GET /status`, `/metrics` and
//! the `status` command; and that command itself: the jobs table, or with
//! `--json` the very report `GET /status` serves. The command opens the
//! database read-only, so it works beside a running daemon, and reads only
//! counters, so it stays cheap at millions of images. Its throughput comes
//! from the images finished in the last minute, its history from those of the
//! last hour.

use crate::stats::{MinuteThroughput, Rate, empty_history, history_of, history_start_ms};
use crate::store::{Job, JobState, LiveDaemon, Store};
use crate::units::{format_bytes, group_digits};
use serde::Serialize;

mod jobs_view;
use jobs_view::summarised_jobs;
pub use jobs_view::{JobSummary, JobsView, STATUS_JOBS};

/// Image counts summed over jobs: what `/status` and the `status` command show at the bottom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Images enumerated so far.
    pub discovered: u64,
    /// Waiting for a worker.
    pub pending: u64,
    /// Held by a worker now.
    pub in_progress: u64,
    /// Archived.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
    /// Deleted on Mapillary: a subset of `failed`.
    pub deleted: u64,
    /// Bytes archived.
    pub bytes_done: u64,
}

impl Totals {
    /// The sum of `jobs`' counters (each kept by the store, so this is O(jobs)).
    pub fn of(jobs: &[Job]) -> Totals {
        jobs.iter().fold(Totals::default(), |t, job| Totals {
            discovered: t.discovered + job.counts.discovered,
            pending: t.pending + job.counts.pending,
            in_progress: t.in_progress + job.counts.in_progress,
            done: t.done + job.counts.done,
            failed: t.failed + job.counts.failed,
            deleted: t.deleted + job.counts.deleted,
            bytes_done: t.bytes_done + job.bytes_done,
        })
    }
}

/// The rate over the last minute, as `/status` serves it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Throughput {
    /// Images completed per second.
    pub images_per_sec: f64,
    /// Bytes written per second.
    pub bytes_per_sec: f64,
}

/// One minute of the throughput history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MinuteBucket {
    /// RFC 3339 UTC: the start of the minute.
    pub minute: String,
    /// Images completed in that minute.
    pub images: u64,
    /// Bytes of those images.
    pub bytes: u64,
}

impl From<&MinuteThroughput> for MinuteBucket {
    fn from(m: &MinuteThroughput) -> Self {
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(m.start_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        MinuteBucket {
            minute: start,
            images: m.images,
            bytes: m.bytes,
        }
    }
}

/// The status report shared by `GET /status` and the `status` command, so both say the same.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// On `GET /status` and `status --json`: the [`STATUS_JOBS`] jobs most
    /// recently changed or advanced, in id order, each selection's id list
    /// summarised as `{"count": n}` (the whole job is at `GET /jobs/{id}`).
    #[serde(serialize_with = "summarised_jobs")]
    #[schema(value_type = Vec<JobSummary>)]
    pub jobs: Vec<Job>,
    /// Every job in the queue, listed in `jobs` or not.
    pub jobs_total: u64,
    /// `jobs` leaves some out: `GET /jobs` pages through them all.
    pub jobs_truncated: bool,
    /// Over every job, not only those listed.
    pub totals: Totals,
    /// Over the last minute, in this process (the `status` command reads it from the database).
    pub throughput: Throughput,
    /// Seconds until the images known so far are downloaded; `null` while
    /// nothing has completed in the last minute.
    pub eta_seconds: Option<u64>,
    /// The last hour in 60 one-minute buckets, oldest first; the last is the
    /// current minute. Read from the database by the `status` command and at
    /// each daemon start; the daemon then counts in memory.
    pub throughput_history: Vec<MinuteBucket>,
    /// The daemons working on this queue whose heartbeat is recent (at most
    /// [`DAEMON_LIVE_WITHIN`] old): one on SQLite, every live one of the
    /// cluster on PostgreSQL.
    pub daemons: Vec<DaemonView>,
}

/// A daemon's heartbeat older than this and it is not shown as live.
pub const DAEMON_LIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// A live daemon as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DaemonView {
    /// Its lease owner id (pid and a random suffix).
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Its worker count.
    pub workers: u32,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// Seconds since its last heartbeat (one every 5 s), by the queue's clock.
    pub heartbeat_age_seconds: f64,
}

impl From<LiveDaemon> for DaemonView {
    fn from(d: LiveDaemon) -> Self {
        DaemonView {
            id: d.id,
            host: d.host,
            workers: d.workers,
            started_at: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(d.started_at)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            heartbeat_age_seconds: d.heartbeat_age.as_secs_f64(),
        }
    }
}

/// Images still to download in jobs the engine is working on. Paused and
/// cancelled jobs are not counted: they will not progress by waiting.
pub fn remaining_images(jobs: &[Job]) -> u64 {
    jobs.iter()
        .filter(|job| {
            matches!(
                job.state,
                JobState::Queued | JobState::Enumerating | JobState::Downloading
            )
        })
        .map(|job| job.counts.pending + job.counts.in_progress)
        .sum()
}

impl StatusReport {
    /// The report for `jobs` at throughput `rate`: the daemon's own rate for
    /// `GET /status`, one read from the database for the `status` command.
    /// Its history is all zeros; [`StatusReport::with_history`] gives one.
    pub fn new(jobs: impl Into<JobsView>, rate: Rate) -> StatusReport {
        Self::with_history(jobs, rate, &empty_history(crate::clock::now_ms()))
    }

    /// [`StatusReport::new`] with the daemon's minute-by-minute history
    /// (`Stats::history`).
    pub fn with_history(
        jobs: impl Into<JobsView>,
        rate: Rate,
        history: &[MinuteThroughput],
    ) -> StatusReport {
        let view = jobs.into();
        // One reading for both, so the ETA matches the throughput shown.
        let eta_seconds = rate
            .eta(view.remaining)
            .map(|eta| eta.as_secs_f64().ceil() as u64);
        StatusReport {
            totals: view.totals,
            throughput: Throughput {
                images_per_sec: rate.images_per_sec,
                bytes_per_sec: rate.bytes_per_sec,
            },
            eta_seconds,
            jobs_truncated: view.total > view.jobs.len() as u64,
            jobs_total: view.total,
            jobs: view.jobs,
            throughput_history: history.iter().map(MinuteBucket::from).collect(),
            daemons: Vec::new(),
        }
    }

    /// The report with throughput, ETA and history read from the database:
    /// the whole cluster's on a shared queue (what `/status` shows there),
    /// and the `status` command's on SQLite.
    pub async fn from_database(
        store: &Store,
        jobs: impl Into<JobsView>,
    ) -> crate::store::StoreResult<Self> {
        let now = crate::clock::now_ms();
        let (images, bytes) = store.finished_since(now - 60_000).await?;
        let rate = Rate {
            images_per_sec: images as f64 / 60.0,
            bytes_per_sec: bytes as f64 / 60.0,
        };
        let minutes = store.finished_by_minute(history_start_ms(now)).await?;
        Ok(StatusReport::with_history(
            jobs,
            rate,
            &history_of(now, &minutes),
        ))
    }

    /// The report with the live daemons read from `store`.
    pub async fn with_daemons_of(self, store: &Store) -> crate::store::StoreResult<Self> {
        Ok(self.with_daemons(live_daemons(store).await?))
    }

    /// The report with `daemons` (read beside the jobs, see [`live_daemons`]).
    pub fn with_daemons(mut self, daemons: Vec<DaemonView>) -> Self {
        self.daemons = daemons;
        self
    }
}

/// The daemons whose heartbeat is recent, as `/status` shows them.
pub async fn live_daemons(store: &Store) -> crate::store::StoreResult<Vec<DaemonView>> {
    Ok(store
        .live_daemons(DAEMON_LIVE_WITHIN, crate::clock::now_ms())
        .await?
        .into_iter()
        .map(DaemonView::from)
        .collect())
}

/// The store as commands that only read open it, beside live daemons:
/// SQLite read-only; PostgreSQL, shared by them all, as one more client
/// that never migrates (daemons of another version may be running on it).
pub async fn open_reader(settings: &crate::config::Settings) -> anyhow::Result<Store> {
    Ok(match settings.database_url().map_err(anyhow::Error::msg)? {
        Some(url) => Store::open_postgres_existing(url.expose().trim())
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot read the PostgreSQL queue (storage.database_url): {e}")
            })?,
        None => Store::open_read_only(&settings.database_path()).await?,
    })
}

/// The `status` command: reads the database beside live daemons (SQLite
/// read-only; PostgreSQL, shared by them all, as one more client).
pub async fn print_status(settings: &crate::config::Settings, json: bool) -> anyhow::Result<()> {
    let store = open_reader(settings).await?;
    let jobs = JobsView::recent(&store, STATUS_JOBS).await?;
    let report = StatusReport::from_database(&store, jobs)
        .await?
        .with_daemons_of(&store)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report.jobs));
        print!("{}", more_line(&report));
    }
    store.close().await;
    Ok(())
}

/// The line that ends a truncated table: how many jobs it left out.
pub fn more_line(report: &StatusReport) -> String {
    let left_out = report.jobs_total.saturating_sub(report.jobs.len() as u64);
    if !report.jobs_truncated || left_out == 0 {
        return String::new();
    }
    format!(
        "… and {} more (the {} most recently updated are shown; GET /jobs lists every job)\n",
        group_digits(left_out),
        report.jobs.len()
    )
}

/// One job's cells of the human table, in [`render_table`]'s column order.
fn table_row(j: &Job) -> [String; 8] {
    let discovered = if j.enumeration_complete { "" } else { "+" };
    let failed = if j.counts.deleted > 0 {
        format!(
            "{} ({} deleted)",
            group_digits(j.counts.failed),
            group_digits(j.counts.deleted)
        )
    } else {
        group_digits(j.counts.failed)
    };
    [
        j.id.to_string(),
        j.selection.to_string(),
        format!("{}{}", j.quality, j.format.collection_suffix()),
        j.state.as_str().to_string(),
        format!(
            "{}/{}{discovered}",
            group_digits(j.counts.done),
            group_digits(j.counts.discovered),
        ),
        failed,
        format_bytes(j.bytes_done),
        j.last_error
            .clone()
            .unwrap_or_default()
            .replace(['\n', '\r'], " "),
    ]
}

/// The human table: one row per job.
pub fn render_table(jobs: &[Job]) -> String {
    let header = [
        "ID",
        "SELECTION",
        "QUALITY",
        "STATE",
        "DONE/DISCOVERED",
        "FAILED",
        "SIZE",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 8]> = jobs.iter().map(table_row).collect();
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
