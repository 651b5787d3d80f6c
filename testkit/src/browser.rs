//! Headless Chromium for the operator page's tests: `chromedriver` started
//! by the test on a free port, and the browser's command line.
//!
//! Nothing is downloaded: both come from Debian's `chromium` and
//! `chromium-driver` packages (`bash scripts/test` installs them). When one
//! is missing, [`Chromedriver::start`] panics naming the package, so a
//! machine without a browser fails the test instead of skipping it.
//!
//! The driver runs in a process group of its own; dropping the handle kills
//! the group, so a failed test leaves no Chromium behind.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The browser binary (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The WebDriver server (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long chromedriver may take to answer `/status` with `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Chromium's flags for a test: headless, sandbox off (tests run as root in
/// CI), no GPU, no shared-memory disk, nothing fetched in the background,
/// and a profile of its own in `profile`.
pub fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Panics with what to install when the browser or its driver is missing.
pub fn require_browser() {
    for (binary, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(binary).is_file() {
            panic!(
                "{binary} is missing: the browser tests need the Debian packages `chromium` and \
                 `chromium-driver` (`bash scripts/test` installs them; or \
                 `apt-get install -y chromium chromium-driver`); missing package: {package}"
            );
        }
    }
}

/// A running `chromedriver`; killed (with the browsers it started) on drop.
pub struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub async fn start() -> Chromedriver {
        require_browser();
        let port = free_port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"))
        };
        let mut driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        driver.wait_ready().await;
        driver
    }

    /// The WebDriver endpoint, e.g. `http://127.0.0.1:9515`.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let status = format!("{}/status", self.url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("{CHROMEDRIVER} exited before it was ready: {exit}");
            }
            let ready = match http
                .get(&status)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(response) => response
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return;
            }
            if Instant::now() > deadline {
                panic!("{CHROMEDRIVER} was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group holds chromedriver and every Chromium it started.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with the (negated) id of the group this handle created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
