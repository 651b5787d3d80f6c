//! The daemon under measurement: the real release binary as a child process,
//! and what `/proc` says about it (CPU time, peak and current RSS).
//!
//! A child process, not the in-process `Application`, because the CPU and
//! memory figures must be the daemon's alone: the fake API runs in the bench
//! process, and `/proc/<pid>` separates the two exactly.

use anyhow::{Context, bail};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Log lines kept for the error message when something goes wrong.
const LOG_TAIL_LINES: usize = 200;

pub struct Daemon {
    child: Child,
    /// `http://127.0.0.1:<port>`, from the "listening on" log line.
    pub base: String,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// Starts `serve` on a free loopback port and waits until it listens.
    pub fn spawn(
        binary: &Path,
        data_dir: &Path,
        workers: u32,
        env: &[(String, String)],
    ) -> anyhow::Result<Daemon> {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let sink = tail.clone();
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
                let mut tail = sink.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() >= LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut daemon = Daemon {
            child,
            base: String::new(),
            tail,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => daemon.base = base,
            Err(_) => bail!(
                "the daemon did not start listening within 30 s; log:\n{}",
                daemon.log_tail()
            ),
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time the daemon has used so far (all its threads).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

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

    /// SIGTERM, then waits for a graceful exit (the daemon's own promise).
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) on our own, not yet reaped child.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill(SIGTERM): {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().map(|l| format!("  {l}\n")).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only reached on an error path: never leave a daemon running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak RSS since the process started.
    pub hwm_kib: u64,
    pub threads: u64,
}

/// CPU time used by this bench process: the fake API and the HTTP clients.
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
