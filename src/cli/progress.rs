//! Progress for the one-shot `download` command: indicatif bars on a
//! terminal, a plain line every few seconds elsewhere (pipes, Docker logs).
//! Rendering is pure string work, so tests check it without a terminal.

use crate::store::{Job, JobState};
use crate::units::{format_bytes, format_duration, format_rate, group_digits};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::time::Duration;

/// A job's progress at one instant, with rates measured by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct JobProgress {
    /// What the job archives, in a few words.
    pub selection: String,
    /// The job's quality, as shown.
    pub quality: String,
    /// Images archived.
    pub done: u64,
    /// Images failed for good.
    pub failed: u64,
    /// Images enumerated so far.
    pub discovered: u64,
    /// True while enumeration runs: the total is still growing.
    pub total_growing: bool,
    /// Bytes archived.
    pub bytes: u64,
    /// Current byte rate.
    pub bytes_per_sec: f64,
    /// Current image rate.
    pub images_per_sec: f64,
    /// The job's state (a paused job says why elsewhere).
    pub state: JobState,
}

impl JobProgress {
    /// A job's progress from its row, with the rates the caller measured.
    pub fn from_job(job: &Job, images_per_sec: f64, bytes_per_sec: f64) -> JobProgress {
        JobProgress {
            selection: job.selection.summary(),
            quality: job.quality.to_string(),
            done: job.counts.done,
            failed: job.counts.failed,
            discovered: job.counts.discovered,
            total_growing: !job.enumeration_complete,
            bytes: job.bytes_done,
            bytes_per_sec,
            images_per_sec,
            state: job.state,
        }
    }

    /// Time left at the current rate; unknown while the total still grows
    /// or nothing has moved yet.
    pub fn eta(&self) -> Option<Duration> {
        if self.total_growing || self.images_per_sec <= 0.0 {
            return None;
        }
        let left = self.discovered.saturating_sub(self.done + self.failed);
        Some(Duration::from_secs_f64(left as f64 / self.images_per_sec))
    }

    /// `1,234/5,678+` (the `+` says the total is still growing).
    pub fn count_text(&self) -> String {
        format!(
            "{}/{}{}",
            group_digits(self.done),
            group_digits(self.discovered),
            if self.total_growing { "+" } else { "" }
        )
    }

    /// One line for logs: no control characters, no colour.
    pub fn plain_line(&self) -> String {
        let eta = match self.eta() {
            Some(eta) => format_duration(eta),
            None if self.total_growing => "unknown (still enumerating)".into(),
            None => "unknown".into(),
        };
        let failed = failed_count(self.failed)
            .map(|n| format!(", {n} failed"))
            .unwrap_or_default();
        format!(
            "{} [{}] {}: {} images{failed}, {}, {}, {:.1} images/s, ETA {eta}",
            self.selection,
            self.quality,
            self.state.as_str(),
            self.count_text(),
            format_bytes(self.bytes),
            format_rate(self.bytes_per_sec),
            self.images_per_sec,
        )
    }
}

/// Measures per-job rates from successive snapshots (a moving window).
#[derive(Default)]
pub struct RateMeter {
    samples: HashMap<i64, std::collections::VecDeque<(tokio::time::Instant, u64, u64)>>,
}

/// How far back rates look.
const RATE_WINDOW: Duration = Duration::from_secs(30);

impl RateMeter {
    /// Records `job` now and returns its (images/s, bytes/s) over the window.
    pub fn observe(&mut self, job: &Job) -> (f64, f64) {
        let now = tokio::time::Instant::now();
        let finished = job.counts.done + job.counts.failed;
        let window = self.samples.entry(job.id).or_default();
        window.push_back((now, finished, job.bytes_done));
        while window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
            && window.len() > 2
        {
            window.pop_front();
        }
        let (t0, n0, b0) = window
            .front()
            .copied()
            .unwrap_or((now, finished, job.bytes_done));
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.5 {
            return (0.0, 0.0);
        }
        (
            finished.saturating_sub(n0) as f64 / secs,
            job.bytes_done.saturating_sub(b0) as f64 / secs,
        )
    }
}

/// A bar counting to `total` on a terminal's stderr; hidden elsewhere (a
/// pipe, a log) or when `hidden`.
pub fn count_bar(total: u64, label: &str, hidden: bool) -> ProgressBar {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if hidden || !terminal {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {human_pos}/{human_len} ({per_sec}, ETA {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// Where progress goes.
pub enum Reporter {
    /// Live bars on a terminal.
    Bars {
        /// The terminal's set of bars.
        multi: MultiProgress,
        /// One bar per job id.
        bars: HashMap<i64, ProgressBar>,
    },
    /// Plain lines on stderr every `every`.
    Lines {
        /// Time between lines.
        every: Duration,
        /// When the last line went out.
        last: Option<tokio::time::Instant>,
    },
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Reporter {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Reporter::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
            }
        } else {
            Reporter::Lines {
                every: Duration::from_secs(5),
                last: None,
            }
        }
    }

    /// Shows the latest snapshot. `force` prints a plain line even if the
    /// interval has not passed (the final summary).
    pub fn update(&mut self, jobs: &[(i64, JobProgress)], force: bool) {
        match self {
            Reporter::Bars { multi, bars } => {
                for (id, p) in jobs {
                    let bar = bars.entry(*id).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(0));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{} [{}]", p.selection, p.quality));
                        bar
                    });
                    bar.set_length(p.discovered.max(1));
                    bar.set_position(p.done + p.failed);
                    bar.set_message(bar_message(p));
                }
            }
            Reporter::Lines { every, last } => {
                let now = tokio::time::Instant::now();
                let due = last.is_none_or(|t| now.duration_since(t) >= *every);
                if force || due {
                    *last = Some(now);
                    for (_, p) in jobs {
                        eprintln!("{}", p.plain_line());
                    }
                }
            }
        }
    }

    /// Leaves the bars as they ended, so the summary prints below them.
    pub fn finish(&mut self) {
        if let Reporter::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}

/// How many images failed, digits grouped; `None` while none has.
fn failed_count(failed: u64) -> Option<String> {
    (failed > 0).then(|| group_digits(failed))
}

/// The text right of a bar.
pub fn bar_message(p: &JobProgress) -> String {
    let eta = p.eta().map(format_duration).unwrap_or_else(|| {
        if p.total_growing {
            "enumerating".into()
        } else {
            "-".into()
        }
    });
    let failed = failed_count(p.failed)
        .map(|n| format!(" ({n} failed)"))
        .unwrap_or_default();
    format!(
        "{}{failed} {} {} ETA {eta}",
        p.count_text(),
        format_bytes(p.bytes),
        format_rate(p.bytes_per_sec)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> JobProgress {
        JobProgress {
            selection: "user alice".into(),
            quality: "original".into(),
            done: 1500,
            failed: 0,
            discovered: 4500,
            total_growing: false,
            bytes: 3 * 1024 * 1024,
            bytes_per_sec: 1024.0 * 1024.0,
            images_per_sec: 10.0,
            state: JobState::Downloading,
        }
    }

    #[test]
    fn eta_is_left_over_rate_and_unknown_while_growing() {
        let p = progress();
        assert_eq!(p.eta(), Some(Duration::from_secs(300)));
        let growing = JobProgress {
            total_growing: true,
            ..p.clone()
        };
        assert_eq!(growing.eta(), None);
        assert_eq!(growing.count_text(), "1,500/4,500+");
        let idle = JobProgress {
            images_per_sec: 0.0,
            ..p
        };
        assert_eq!(idle.eta(), None);
    }

    #[test]
    fn plain_line_is_plain() {
        let line = progress().plain_line();
        assert!(
            line.starts_with("user alice [original] downloading: 1,500/4,500 images"),
            "{line}"
        );
        assert!(line.contains("ETA 5m"), "{line}");
        assert!(line.chars().all(|c| !c.is_control()), "{line:?}");
    }
}
