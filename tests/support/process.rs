//! Runs the real `mapillary-downloader` binary as a child process, captures
//! its stderr, and learns its port from the "listening on" log line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

/// Environment for a test run: fast retries and polling, the fake's URL.
pub fn test_env(api_url: &str, token: &str) -> Vec<(String, String)> {
    [
        ("MAPILLARY_TOKEN", token),
        ("MAPILLARY_API_URL", api_url),
        ("MLD__RETRY__BACKOFF_BASE_MS", "20"),
        ("MLD__RETRY__BACKOFF_CAP_MS", "200"),
        ("MLD__WORKERS__POLL_INTERVAL_MS", "50"),
        ("MLD__MAPILLARY__PAGE_SIZE", "100"),
        ("MLD__MAPILLARY__CALLS_PER_MINUTE", "600000"),
        ("MLD__LOG__LEVEL", "info"),
        ("RUST_LOG", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub struct DaemonProcess {
    child: Child,
    pub base: String,
    /// Everything the process wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl DaemonProcess {
    /// Starts `serve` and waits until it listens.
    pub fn spawn(data_dir: &Path, workers: u32, env: &[(String, String)]) -> DaemonProcess {
        let mut command = Command::new(BINARY);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn the daemon");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new(Mutex::new(String::new()));
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
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "daemon did not start listening; log:\n{}",
                    log.lock().unwrap()
                )
            });
        DaemonProcess { child, base, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
