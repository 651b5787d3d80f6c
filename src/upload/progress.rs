//! The upload's progress in `upload` and `download --upload-ia`, as the
//! download shows its own (`cli::progress`): a bar per job on a terminal's
//! stderr, a plain line every few seconds elsewhere (pipes, Docker logs),
//! and a summary line per job at the end.
//!
//! Bytes sent are the files the database marks sent or confirmed, plus the
//! bytes of the `PUT` under way ([`IaClient::in_flight_bytes`]): a tar of
//! gigabytes takes minutes at a home uplink, so counting whole files only
//! would leave the bar and the rate still for that long. The commands run
//! one job's track at a time, so the bytes in flight belong to the job that
//! is `uploading`.

use super::client::IaClient;
use crate::store::{Store, UploadProgress, UploadState};
use crate::units::{format_bytes, format_duration, format_rate, group_digits};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the progress is read and redrawn.
const TICK: Duration = Duration::from_millis(250);
/// Time between two plain lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One job's upload at one instant, as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadLine {
    /// The job.
    pub job_id: i64,
    /// The track's figures from the database.
    pub track: UploadProgress,
    /// Bytes sent, the `PUT` under way included.
    pub sent: u64,
    /// Current rate, bytes per second.
    pub bytes_per_sec: f64,
}

impl UploadLine {
    /// `2/5 files confirmed, 80.0 MiB/240.0 MiB sent, 19.1 MiB/s, uploading`.
    pub fn figures(&self) -> String {
        format!(
            "{}/{} files confirmed, {}/{} sent, {}, {}",
            group_digits(self.track.files_confirmed),
            group_digits(self.track.files_total),
            format_bytes(self.sent),
            format_bytes(self.track.bytes_total),
            format_rate(self.bytes_per_sec),
            self.track.state
        )
    }

    /// One line for logs: no control characters, no colour.
    pub fn plain_line(&self) -> String {
        // Nothing placed yet reads 0 %, unless the track is confirmed.
        let none = if self.track.state == UploadState::Confirmed {
            100
        } else {
            0
        };
        let percent = (self.sent.saturating_mul(100))
            .checked_div(self.track.bytes_total)
            .unwrap_or(none);
        format!(
            "job {} upload to the Internet Archive: {percent}%, {}{}",
            self.job_id,
            self.figures(),
            error_suffix(&self.track)
        )
    }
}

/// The line a job's upload ends with: where it stands, files and bytes, and
/// the rate of this run (`elapsed` since the run began, `sent_before` the
/// bytes already sent then).
pub fn summary_line(track: &UploadProgress, elapsed: Duration, sent_before: u64) -> String {
    let this_run = track.bytes_sent.saturating_sub(sent_before);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        this_run as f64 / secs
    } else {
        0.0
    };
    format!(
        "job {} upload to the Internet Archive {}: {} of {} files confirmed, {} of {} sent \
         in {} item(s); {} sent in {} ({}){}",
        track.job_id,
        track.state,
        group_digits(track.files_confirmed),
        group_digits(track.files_total),
        format_bytes(track.bytes_sent),
        format_bytes(track.bytes_total),
        track.items,
        format_bytes(this_run),
        format_duration(elapsed),
        format_rate(rate),
        error_suffix(track)
    )
}

fn error_suffix(track: &UploadProgress) -> String {
    track
        .last_error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// Turns successive database readings into shown lines: bytes in flight
/// added to the job that is uploading, never shown going backwards while it
/// uploads (a `PUT`'s bytes leave the gauge a moment before the database
/// marks its file sent), and a rate over [`RATE_WINDOW`].
#[derive(Default)]
pub struct Meter {
    samples: HashMap<i64, VecDeque<(Instant, u64)>>,
}

impl Meter {
    /// The shown line of `track` now, with `in_flight` bytes under way.
    pub fn observe(&mut self, track: &UploadProgress, in_flight: u64) -> UploadLine {
        let now = Instant::now();
        let window = self.samples.entry(track.job_id).or_default();
        let mut sent = track.bytes_sent;
        if track.state == UploadState::Uploading {
            let shown = window.back().map_or(0, |(_, b)| *b);
            sent = (sent + in_flight).min(track.bytes_total).max(shown);
        }
        window.push_back((now, sent));
        while window.len() > 2
            && window
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            window.pop_front();
        }
        let (t0, b0) = window.front().copied().unwrap_or((now, sent));
        let secs = now.duration_since(t0).as_secs_f64();
        let bytes_per_sec = if secs < 0.5 {
            0.0
        } else {
            sent.saturating_sub(b0) as f64 / secs
        };
        UploadLine {
            job_id: track.job_id,
            track: track.clone(),
            sent,
            bytes_per_sec,
        }
    }
}

/// Where the upload's progress goes: bars on a terminal, lines elsewhere.
enum Output {
    Bars {
        multi: MultiProgress,
        bars: HashMap<i64, ProgressBar>,
    },
    Lines {
        last: Option<Instant>,
    },
}

impl Output {
    fn for_stderr() -> Output {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Output::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
            }
        } else {
            Output::Lines { last: None }
        }
    }

    /// Shows `lines`; `force` prints plain lines even before their time.
    fn show(&mut self, lines: &[UploadLine], force: bool) {
        match self {
            Output::Bars { multi, bars } => {
                for line in lines {
                    let bar = bars
                        .entry(line.job_id)
                        .or_insert_with(|| new_bar(multi, line.job_id));
                    bar.set_length(line.track.bytes_total.max(1));
                    bar.set_position(line.sent);
                    bar.set_message(line.figures());
                }
            }
            Output::Lines { last } => {
                let now = Instant::now();
                if force || last.is_none_or(|t| now.duration_since(t) >= LINE_EVERY) {
                    *last = Some(now);
                    for line in lines {
                        eprintln!("{}", line.plain_line());
                    }
                }
            }
        }
    }

    /// Leaves the bars as they ended, so the summary prints below them.
    fn finish(&self) {
        if let Output::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}

fn new_bar(multi: &MultiProgress, job_id: i64) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(1));
    bar.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("job {job_id} → archive.org"));
    bar
}

/// Shows the progress of `job_ids`' uploads until `stop` fires, then the
/// last reading and a summary line per job (stderr).
pub async fn report(
    store: Arc<Store>,
    client: IaClient,
    job_ids: Vec<i64>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut output = Output::for_stderr();
    let mut meter = Meter::default();
    let first = read(&store, &job_ids).await;
    let before: HashMap<i64, u64> = first.iter().map(|t| (t.job_id, t.bytes_sent)).collect();
    loop {
        let stopping = stop.is_cancelled();
        let tracks = read(&store, &job_ids).await;
        let in_flight = client.in_flight_bytes();
        let lines: Vec<UploadLine> = tracks.iter().map(|t| meter.observe(t, in_flight)).collect();
        output.show(&lines, stopping);
        if stopping {
            output.finish();
            for track in &tracks {
                let sent_before = before.get(&track.job_id).copied().unwrap_or(0);
                eprintln!("{}", summary_line(track, started.elapsed(), sent_before));
            }
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// The tracks of `job_ids`, in their order; none when the database fails
/// (progress is never worth failing the upload for).
async fn read(store: &Store, job_ids: &[i64]) -> Vec<UploadProgress> {
    let Ok(all) = store.upload_progress(None).await else {
        return Vec::new();
    };
    job_ids
        .iter()
        .filter_map(|id| all.iter().find(|p| p.job_id == *id).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(state: UploadState, sent: u64) -> UploadProgress {
        UploadProgress {
            job_id: 3,
            state,
            items: 1,
            files_total: 5,
            files_confirmed: 2,
            bytes_sent: sent,
            bytes_total: 240 << 20,
            last_error: None,
        }
    }

    #[test]
    fn bytes_in_flight_count_while_uploading_and_never_go_back() {
        let mut meter = Meter::default();
        let line = meter.observe(&track(UploadState::Uploading, 80 << 20), 10 << 20);
        assert_eq!(line.sent, 90 << 20);
        // The PUT ended, its file not yet marked sent: no step back.
        let line = meter.observe(&track(UploadState::Uploading, 80 << 20), 0);
        assert_eq!(line.sent, 90 << 20);
        let line = meter.observe(&track(UploadState::Confirming, 240 << 20), 5);
        assert_eq!(line.sent, 240 << 20, "in flight only while uploading");
    }

    #[test]
    fn lines_are_plain_and_carry_every_figure() {
        let line = UploadLine {
            job_id: 3,
            track: track(UploadState::Uploading, 80 << 20),
            sent: 80 << 20,
            bytes_per_sec: 20.0 * 1024.0 * 1024.0,
        };
        let text = line.plain_line();
        assert_eq!(
            text,
            "job 3 upload to the Internet Archive: 33%, 2/5 files confirmed, \
             80.0 MiB/240.0 MiB sent, 20.0 MiB/s, uploading"
        );
        assert!(text.chars().all(|c| !c.is_control()));
        let mut done = track(UploadState::Confirmed, 240 << 20);
        done.files_confirmed = 5;
        let summary = summary_line(&done, Duration::from_secs(12), 0);
        assert_eq!(
            summary,
            "job 3 upload to the Internet Archive confirmed: 5 of 5 files confirmed, \
             240.0 MiB of 240.0 MiB sent in 1 item(s); 240.0 MiB sent in 12s (20.0 MiB/s)"
        );
    }
}
