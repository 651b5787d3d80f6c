//! `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! Written by hand: the format is a few lines of text, and a metrics crate
//! would add a global registry for numbers the store already keeps.
//! Per-job series are labelled `job_id`, `source_kind`, `summary` (at most 64
//! characters) and `quality`; the summary holds user input, so label values
//! are escaped as the format requires.

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::metrics::{self, Metrics, OutcomeClass};
use crate::status::{StatusReport, Totals};
use crate::store::StoreKind;
use crate::store::{Job, JobState, UploadProgress, UploadState};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::time::Duration;

/// The Prometheus text exposition format `/metrics` answers in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    summary = "Prometheus metrics (text exposition format 0.0.4)",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut jobs = state.store.list_jobs().await?;
    // Each job's upload to the Internet Archive, for its gauges.
    state.store.with_uploads(&mut jobs).await?;
    let report = match state.store.kind() {
        StoreKind::Postgres => StatusReport::from_database(&state.store, jobs).await?,
        StoreKind::Sqlite => StatusReport::new(jobs, state.stats.rate()),
    }
    .with_daemons_of(&state.store)
    .await?;
    let body = render(&report, state.started.elapsed(), &state.metrics);
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// Renders every metric family; pure, so tests can check the text directly.
pub fn render(report: &StatusReport, uptime: Duration, counters: &Metrics) -> String {
    let mut out = Exposition::default();
    per_job(&mut out, &report.jobs);
    uploads(&mut out, &report.jobs);
    all_jobs(&mut out, report, uptime);
    daemons(&mut out, report);
    counters_since_start(&mut out, counters);
    outcomes_since_start(&mut out, counters);
    histograms_since_start(&mut out, counters);
    out.text
}

/// Plain counters since the process started.
fn counters_since_start(out: &mut Exposition, m: &Metrics) {
    for (name, help, value) in [
        (
            "mapillary_images_completed_total",
            "Images archived (written or adopted).",
            &m.images_completed,
        ),
        (
            "mapillary_images_failed_total",
            "Images failed for good (deleted ones included).",
            &m.images_failed,
        ),
        (
            "mapillary_images_deleted_total",
            "Images found deleted on Mapillary.",
            &m.images_deleted,
        ),
        (
            "mapillary_written_bytes_total",
            "Bytes of image files written to the archive.",
            &m.bytes_written,
        ),
        (
            "mapillary_retries_total",
            "Image attempts that failed and will be tried again.",
            &m.retries,
        ),
        (
            "mapillary_url_refreshes_total",
            "Image URLs renewed through GET /?ids=.",
            &m.url_refreshes,
        ),
        (
            "mapillary_rate_limit_holds_total",
            "Times the API rate-limited us and every API call was held back, or the CDN refused most downloads and every download was.",
            &m.rate_limit_holds,
        ),
        (
            "mapillary_http_auth_failures_total",
            "HTTP API requests refused for a missing or wrong token.",
            &m.http_auth_failures,
        ),
    ] {
        out.typed_family(name, help, "counter");
        out.sample(&[], metrics::get(value) as f64);
    }
}

/// Counters by outcome class since the process started: one sample per
/// class, zeros included, so a rate over any class is defined.
fn outcomes_since_start(out: &mut Exposition, m: &Metrics) {
    for (name, help, by_outcome) in [
        (
            "mapillary_api_calls_total",
            "Graph API calls by outcome.",
            &m.api_calls,
        ),
        (
            "mapillary_cdn_fetches_total",
            "Image downloads from the CDN by outcome.",
            &m.cdn_fetches,
        ),
    ] {
        out.typed_family(name, help, "counter");
        for class in OutcomeClass::ALL {
            out.sample(&[("outcome", class.as_str())], by_outcome.get(class) as f64);
        }
    }
    out.typed_family(
        "mapillary_hedged_downloads_total",
        "Downloads that went quiet and got a second request, by which request won (first, twin) or neither.",
        "counter",
    );
    for (won, counter) in [
        ("first", &m.hedges_won_by_first),
        ("twin", &m.hedges_won_by_twin),
        ("neither", &m.hedges_failed),
    ] {
        out.sample(&[("won", won)], metrics::get(counter) as f64);
    }
}

/// Latency histograms since the process started (cumulative buckets).
fn histograms_since_start(out: &mut Exposition, m: &Metrics) {
    for (name, help, histogram) in [
        (
            "mapillary_image_download_seconds",
            "Time to download one image from the CDN (successful downloads).",
            &m.image_download_seconds,
        ),
        (
            "mapillary_api_call_seconds",
            "Time of one Graph API call, any outcome.",
            &m.api_call_seconds,
        ),
    ] {
        out.typed_family(name, help, "histogram");
        let (buckets, sum, count) = histogram.snapshot();
        for (bound, cumulative) in buckets {
            let le = bound.map_or_else(|| "+Inf".to_string(), format_value);
            out.sample_named("_bucket", &[("le", le.as_str())], cumulative as f64);
        }
        out.sample_named("_sum", &[], sum);
        out.sample_named("_count", &[], count as f64);
    }
}

/// A per-job gauge's value, read off the job.
type JobGauge = fn(&Job) -> f64;

/// Gauges labelled by job.
fn per_job(out: &mut Exposition, jobs: &[Job]) {
    out.family("mapillary_job_images", "Images of a job by state.");
    for job in jobs {
        let c = &job.counts;
        for (name, value) in [
            ("pending", c.pending),
            ("in_progress", c.in_progress),
            ("done", c.done),
            ("failed", c.failed),
        ] {
            out.sample_job(job, Some(name), value as f64);
        }
    }
    let gauges: [(&str, &str, JobGauge); 4] = [
        (
            "mapillary_job_deleted_images",
            "Images of a job deleted on Mapillary while it ran (a subset of its failed images).",
            |job| job.counts.deleted as f64,
        ),
        (
            "mapillary_job_stalled",
            "1 while a job has work but has made no progress for longer than jobs.stall_after_secs (its last_error says why).",
            |job| f64::from(u8::from(job.stalled_since.is_some())),
        ),
        (
            "mapillary_job_discovered_images",
            "Images enumeration has found for a job so far.",
            |job| job.counts.discovered as f64,
        ),
        (
            "mapillary_job_bytes_done",
            "Bytes of a job's images written to the archive.",
            |job| job.bytes_done as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, help);
        for job in jobs {
            out.sample_job(job, None, value(job));
        }
    }
    out.family(
        "mapillary_job_state",
        "1 for the state a job is in, 0 for the others.",
    );
    for job in jobs {
        for &candidate in JobState::ALL {
            let value = if job.state == candidate { 1.0 } else { 0.0 };
            out.sample_job(job, Some(candidate.as_str()), value);
        }
    }
    out.family(
        "mapillary_job_enumeration_complete",
        "1 once every page of a job's listing has been stored.",
    );
    for job in jobs {
        out.sample_job(job, None, f64::from(u8::from(job.enumeration_complete)));
    }
}

/// The upload to the Internet Archive of every job that asks for one:
/// files and bytes placed against confirmed and sent, and the track's state.
fn uploads(out: &mut Exposition, jobs: &[Job]) {
    let uploading = || {
        jobs.iter()
            .filter_map(|j| j.upload.as_ref().map(|u| (j, u)))
    };
    type Count = fn(&UploadProgress) -> u64;
    type Family = (&'static str, &'static str, [(&'static str, Count); 2]);
    let families: [Family; 2] = [
        (
            "mapillary_job_upload_files",
            "Files of a job's Internet Archive items: placed in them, and confirmed by their metadata.",
            [
                ("placed", |u| u.files_total),
                ("confirmed", |u| u.files_confirmed),
            ],
        ),
        (
            "mapillary_job_upload_bytes",
            "Bytes of a job's Internet Archive items: placed in them, and sent.",
            [("placed", |u| u.bytes_total), ("sent", |u| u.bytes_sent)],
        ),
    ];
    for (name, help, counts) in families {
        out.family(name, help);
        for (job, upload) in uploading() {
            for (state, count) in counts {
                out.sample_job(job, Some(state), count(upload) as f64);
            }
        }
    }
    out.family(
        "mapillary_job_upload_state",
        "1 for the state a job's upload is in (waiting, uploading, confirming, confirmed, paused, failed), 0 for the others.",
    );
    for (job, upload) in uploading() {
        for &candidate in UploadState::ALL {
            let value = f64::from(u8::from(upload.state == candidate));
            out.sample_job(job, Some(candidate.as_str()), value);
        }
    }
}

/// Gauges over every job, and the process's own.
fn all_jobs(out: &mut Exposition, report: &StatusReport, uptime: Duration) {
    let jobs = &report.jobs;
    out.family("mapillary_jobs", "Jobs by state.");
    for &candidate in JobState::ALL {
        let count = jobs.iter().filter(|job| job.state == candidate).count();
        out.sample(&[("state", candidate.as_str())], count as f64);
    }
    let Totals {
        discovered,
        pending,
        in_progress,
        done,
        failed,
        bytes_done,
        ..
    } = report.totals;
    out.family("mapillary_images", "Images of all jobs by state.");
    for (name, value) in [
        ("pending", pending),
        ("in_progress", in_progress),
        ("done", done),
        ("failed", failed),
    ] {
        out.sample(&[("state", name)], value as f64);
    }
    out.family(
        "mapillary_deleted_images",
        "Images deleted on Mapillary while their job ran, all jobs (a subset of the failed ones).",
    );
    out.sample(&[], report.totals.deleted as f64);
    out.family(
        "mapillary_discovered_images",
        "Images found by enumeration, all jobs.",
    );
    out.sample(&[], discovered as f64);
    out.family(
        "mapillary_bytes_done",
        "Bytes written to the archive, all jobs.",
    );
    out.sample(&[], bytes_done as f64);
    out.family(
        "mapillary_throughput_images_per_second",
        "Images completed per second over the last minute.",
    );
    out.sample(&[], report.throughput.images_per_sec);
    out.family(
        "mapillary_throughput_bytes_per_second",
        "Bytes completed per second over the last minute.",
    );
    out.sample(&[], report.throughput.bytes_per_sec);
    out.family(
        "mapillary_uptime_seconds",
        "Seconds since the process started.",
    );
    out.sample(&[], uptime.as_secs_f64());
}

/// Every live daemon of the queue (one on SQLite, the cluster on
/// PostgreSQL): its workers and the age of its heartbeat.
fn daemons(out: &mut Exposition, report: &StatusReport) {
    out.family(
        "mapillary_daemon_workers",
        "Workers of each live daemon working on this queue.",
    );
    for d in &report.daemons {
        out.sample(
            &[("daemon", &d.id), ("host", &d.host)],
            f64::from(d.workers),
        );
    }
    out.family(
        "mapillary_daemon_heartbeat_age_seconds",
        "Seconds since each live daemon's last heartbeat.",
    );
    for d in &report.daemons {
        out.sample(
            &[("daemon", &d.id), ("host", &d.host)],
            d.heartbeat_age_seconds,
        );
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
    family: &'static str,
}

impl Exposition {
    fn family(&mut self, name: &'static str, help: &str) {
        self.typed_family(name, help, "gauge");
    }

    fn typed_family(&mut self, name: &'static str, help: &str, kind: &str) {
        self.family = name;
        // `write!` into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A job's labels: its id, the kind of source, a summary of the
    /// selection (at most 64 characters: never a 10,000-id list) and the
    /// quality.
    fn sample_job(&mut self, job: &Job, state: Option<&str>, value: f64) {
        let id = job.id.to_string();
        let summary = job.selection.summary();
        let mut labels = vec![
            ("job_id", id.as_str()),
            ("source_kind", job.selection.source.kind()),
            ("summary", summary.as_str()),
            ("quality", job.quality.as_str()),
        ];
        if let Some(state) = state {
            labels.push(("state", state));
        }
        self.sample(&labels, value);
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample_named("", labels, value);
    }

    /// A sample of the current family's metric name plus `suffix`
    /// (`_bucket`, `_sum`, `_count` of a histogram).
    fn sample_named(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(self.family);
        self.text.push_str(suffix);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{name}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed only.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_label_value("zoë"), "zoë");
    }

    #[tokio::test]
    async fn a_jobs_upload_shows_in_its_gauges() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("m.db"))
            .await
            .unwrap();
        let spec = crate::selection::JobSpec::user("alice", crate::model::Quality::Original);
        let mut job = store.submit_job(&spec, 0).await.unwrap().job().clone();
        let mut other = job.clone();
        other.id += 1;
        job.upload = Some(UploadProgress {
            job_id: job.id,
            state: UploadState::Confirming,
            items: 2,
            files_total: 5,
            files_confirmed: 3,
            bytes_sent: 700,
            bytes_total: 1000,
            last_error: None,
        });
        let mut out = Exposition::default();
        uploads(&mut out, &[job, other]);
        let line = |name: &str, state: &str| {
            out.text
                .lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("state=\"{state}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        assert_eq!(
            line("mapillary_job_upload_files{", "placed").as_deref(),
            Some("5")
        );
        assert_eq!(
            line("mapillary_job_upload_files{", "confirmed").as_deref(),
            Some("3")
        );
        assert_eq!(
            line("mapillary_job_upload_bytes{", "sent").as_deref(),
            Some("700")
        );
        assert_eq!(
            line("mapillary_job_upload_bytes{", "placed").as_deref(),
            Some("1000")
        );
        assert_eq!(
            line("mapillary_job_upload_state{", "confirming").as_deref(),
            Some("1")
        );
        assert_eq!(
            line("mapillary_job_upload_state{", "paused").as_deref(),
            Some("0")
        );
        // A job with no upload has no upload samples.
        let samples = out.text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 4 + UploadState::ALL.len(), "{}", out.text);
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }
}
