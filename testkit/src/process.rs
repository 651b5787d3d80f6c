//! The real daemon binary as a child process: started on a free loopback
//! port (read from its "listening on http://" log line), its stderr kept
//! (all of it, or a tail), stopped by a signal, SIGKILL or `Drop`; and what
//! `/proc` says about it (CPU time, current and peak RSS).
//!
//! The caller names the binary: `env!("CARGO_BIN_EXE_mapillary-downloader")`
//! exists only in the root package's tests and benches. A child process, not
//! the in-process `Application`, when the test needs kill -9 or signals, or
//! when CPU and memory must be the daemon's alone (`/proc/<pid>` separates it
//! from the fake running in the caller's process).

use crate::api_client::ApiClient;
use anyhow::{Context, bail};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a new daemon may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A command for `binary` with nothing of the caller's environment but
/// `PATH`, then `env`; stdin is closed. The caller adds arguments and says
/// where stdout and stderr go.
pub fn command(binary: impl AsRef<OsStr>, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    command
}

/// Sends `signal` (e.g. `libc::SIGINT`) to the process `pid`.
pub fn signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// How much of the daemon's stderr to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepLog {
    /// Every line: tests search the whole log (e.g. for the token).
    All,
    /// The last `n` lines, for error messages of long runs.
    Tail(usize),
}

/// The lines kept so far.
struct LogBuffer {
    keep: KeepLog,
    lines: VecDeque<String>,
}

impl LogBuffer {
    fn push(&mut self, line: String) {
        if let KeepLog::Tail(n) = self.keep {
            while self.lines.len() >= n.max(1) {
                self.lines.pop_front();
            }
        }
        self.lines.push_back(line);
    }
}

/// A running `mapillary-downloader serve`. Dropping it kills it (SIGKILL).
pub struct DaemonProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    base: String,
    log: Arc<Mutex<LogBuffer>>,
}

impl DaemonProcess {
    /// Starts `binary serve` on `127.0.0.1:0` with `workers` workers over
    /// `data_dir` and only `env` as environment (see [`command`]), keeps its
    /// whole log, and waits until it listens.
    pub fn spawn(
        binary: impl AsRef<OsStr>,
        data_dir: &Path,
        workers: u32,
        env: &[(String, String)],
    ) -> anyhow::Result<DaemonProcess> {
        DaemonProcess::spawn_keeping(binary, data_dir, workers, env, KeepLog::All)
    }

    /// [`DaemonProcess::spawn`], keeping `keep` of the log.
    pub fn spawn_keeping(
        binary: impl AsRef<OsStr>,
        data_dir: &Path,
        workers: u32,
        env: &[(String, String)],
        keep: KeepLog,
    ) -> anyhow::Result<DaemonProcess> {
        let binary = binary.as_ref();
        let mut command = command(binary, env);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(LogBuffer {
            keep,
            lines: VecDeque::new(),
        }));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(url);
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut daemon = DaemonProcess {
            child,
            base: String::new(),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => daemon.base = base,
            Err(_) => bail!(
                "the daemon did not start listening within {START_TIMEOUT:?}; log:\n{}",
                daemon.log_text()
            ),
        }
        Ok(daemon)
    }

    /// `http://127.0.0.1:<port>`, from the "listening on" log line.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client for the daemon's HTTP API.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(&self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no cleanup of any kind; returns once the process is reaped.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        self::signal(self.pid(), signal)
    }

    /// Waits up to `timeout` for the daemon to exit on its own; `None` if it
    /// still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the graceful exit the daemon
    /// promises; an error (with the log's tail) if it does not come.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => bail!(
                "the daemon did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log_tail(200)
            ),
        }
    }

    /// The log kept so far, one line each.
    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The last `lines` lines kept, indented, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let skip = log.lines.len().saturating_sub(lines);
        log.lines
            .iter()
            .skip(skip)
            .map(|l| format!("  {l}\n"))
            .collect()
    }

    /// User + system CPU time the daemon has used so far (all its threads).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// The daemon's current and peak RSS and its thread count.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading /proc/<pid>/status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("no {name} in /proc/<pid>/status"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            threads: field("Threads:")?,
        })
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // Never leave a daemon running, whatever path the caller took.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reading of `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak RSS since the process started.
    pub hwm_kib: u64,
    pub threads: u64,
}

/// CPU time used by the calling process (in a bench: the fake API and the HTTP clients).
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    process_cpu_time("/proc/self/stat")
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` file.
fn process_cpu_time(path: &str) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let total = ticks(11)? + ticks(12)?;
    let per_sec = clock_ticks_per_sec();
    Ok(Duration::from_secs(total / per_sec)
        + Duration::from_nanos((total % per_sec) * 1_000_000_000 / per_sec))
}

/// Whole-machine CPU counters from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    iowait: u64,
    total: u64,
}

impl MachineCpu {
    pub fn read() -> anyhow::Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        if v.len() < 5 {
            bail!("short cpu line in /proc/stat");
        }
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = v.iter().take(8).sum();
        let idle = v[3];
        let iowait = v[4];
        Ok(MachineCpu {
            busy: total - idle - iowait,
            iowait,
            total,
        })
    }

    /// (busy, iowait) as fractions of all CPUs between `self` and `later`.
    pub fn share_until(&self, later: &MachineCpu) -> (f64, f64) {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        (
            later.busy.saturating_sub(self.busy) as f64 / total,
            later.iowait.saturating_sub(self.iowait) as f64 / total,
        )
    }
}

/// The 1-minute load average: other work on this machine skews every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
