//! The operator's page in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, started here) against the daemon in this process
//! and the fake Mapillary. The page loads without a console error, a job
//! added through its form shows up and advances, its buttons pause, resume,
//! retry and cancel (checked through the API), a bad bbox shows the API's own
//! message, a token-protected daemon gets only the prompt until the token
//! works, the page fits a 390 px phone, and it says when the daemon stops
//! answering. A screenshot taken mid-download lands in `target/` every run.
//!
//! Without Chromium and chromedriver these tests fail and say what to
//! install (`bash scripts/test` installs them). One browser runs at a time:
//! the tests take turns through [`SERIAL`].

mod common;

use common::{TestDaemon, test_settings};
use futures_util::FutureExt;
use mld_testkit::browser::{CHROMIUM, Chromedriver, chromium_args};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Fault};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use thirtyfour::prelude::*;
use thirtyfour::{BrowserLogEntry, LoggingPrefsLogLevel};
use tokio::time::Instant;

/// Long enough for a slow CI machine, short enough to fail a hung page.
const WAIT: Duration = Duration::from_secs(30);
const API_TOKEN: &str = "page-test-token-7Qx2";

/// One Chromium at a time: two of them on a two-core machine starve the
/// daemons they watch.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn job_id(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

/// Where the screenshot goes: the target directory (`CARGO_TARGET_DIR` or
/// `target/`), beside `tmp/`.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("operator-page.png")
}

/// A daemon on the fake, in a temp data dir.
struct Daemon {
    daemon: TestDaemon,
    fake: FakeMapillary,
    dir: TempDir,
}

async fn daemon(cfg: FakeConfig, workers: u32, extra: &[(&str, &str)]) -> Daemon {
    let fake = FakeMapillary::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), workers, extra);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    Daemon { daemon, fake, dir }
}

/// A fresh Chromium of `width` × `height` behind a chromedriver of its own,
/// its console captured at every level.
struct Browser {
    driver: WebDriver,
    _chromedriver: Chromedriver,
    _profile: TempDir,
}

impl Browser {
    async fn open(width: u32, height: u32) -> Browser {
        let chromedriver = Chromedriver::start().await;
        let profile = tempfile::tempdir().unwrap();
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        for arg in chromium_args(profile.path()) {
            caps.add_arg(&arg).unwrap();
        }
        caps.add_arg(&format!("--window-size={width},{height}"))
            .unwrap();
        if width < 500 {
            // A window is at least 500 px wide; a phone is emulated.
            caps.add_experimental_option(
                "mobileEmulation",
                json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0}}),
            )
            .unwrap();
        }
        caps.set_browser_log_level(LoggingPrefsLogLevel::All)
            .unwrap();
        let driver = WebDriver::new(chromedriver.url(), caps)
            .await
            .expect("a Chromium session");
        Browser {
            driver,
            _chromedriver: chromedriver,
            _profile: profile,
        }
    }

    /// Runs `test` with this browser, then ends the session whatever
    /// happened (a panic is raised again once the browser is gone).
    async fn run(self, test: impl AsyncFnOnce(&WebDriver)) {
        let outcome = AssertUnwindSafe(test(&self.driver)).catch_unwind().await;
        let _ = self.driver.clone().quit().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Polls `probe` until it gives a value; panics naming `what` after [`WAIT`].
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` in the page and returns its JSON result.
/// Opens the page and waits for its first answer from the daemon.
async fn load(driver: &WebDriver, url: &str) {
    driver.goto(url).await.unwrap();
    eventually("the page's first answer", async || {
        shown(driver, "app").await.then_some(())
    })
    .await;
}

async fn js(driver: &WebDriver, script: &str) -> Value {
    driver
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
        .json()
        .clone()
}

/// The job rows as the page shows them.
async fn rows(driver: &WebDriver) -> Vec<Value> {
    let rows = js(
        driver,
        r#"return Array.from(document.querySelectorAll('#jobs > li.job')).map(li => {
            const bar = li.querySelector('progress');
            const visible = (cls) => { const b = li.querySelector(cls); return !!b && !b.hidden; };
            return {
              id: Number(li.dataset.id), state: li.dataset.state,
              done: Number(li.dataset.done), discovered: Number(li.dataset.discovered),
              value: bar.hasAttribute('value') ? bar.value : null, max: bar.max,
              text: li.innerText,
              pause: visible('.act-pause'), resume: visible('.act-resume'),
              retry: visible('.act-retry'), retry_deleted: visible('.act-retry-deleted'),
              cancel: visible('.act-cancel'),
              confirm: visible('.act-confirm'),
            };
          });"#,
    )
    .await;
    rows.as_array().cloned().unwrap_or_default()
}

async fn row(driver: &WebDriver, id: i64) -> Option<Value> {
    rows(driver).await.into_iter().find(|r| r["id"] == id)
}

/// Whether the element with `id` is shown (present and not hidden).
async fn shown(driver: &WebDriver, id: &str) -> bool {
    js(
        driver,
        &format!(
            "const e = document.getElementById('{id}'); \
             return !!e && !e.hidden && e.getClientRects().length > 0;"
        ),
    )
    .await
        == true
}

async fn text_of(driver: &WebDriver, id: &str) -> String {
    driver.find(By::Id(id)).await.unwrap().text().await.unwrap()
}

async fn click(driver: &WebDriver, css: &str) {
    driver
        .find(By::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn type_into(driver: &WebDriver, id: &str, text: &str) {
    let input = driver.find(By::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

async fn severe_entries(driver: &WebDriver) -> Vec<BrowserLogEntry> {
    driver
        .browser_log()
        .await
        .expect("the browser log")
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .collect()
}

/// A job through the API (the page's own tests add theirs through the form).
async fn post(d: &TestDaemon, body: Value) -> i64 {
    let (status, job) = d.post_job(body).await;
    assert!(status.is_success(), "{status}: {job}");
    job_id(&job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_and_its_assets_are_served_without_a_token_with_strict_headers() {
    let d = daemon(FakeConfig::default(), 1, &[("MLD__API__TOKEN", API_TOKEN)]).await;
    let http = d.daemon.http();
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let response = http.get(d.daemon.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let body = response.text().await.unwrap();
        assert!(!body.contains(API_TOKEN), "{path} holds the token");
        assert!(
            !body.contains(DEFAULT_TOKEN),
            "{path} holds the Mapillary token"
        );

        // HEAD answers the same headers without a body; a current copy gets 304.
        let head = http.head(d.daemon.url(path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(head.text().await.unwrap(), "");
        let again = http
            .get(d.daemon.url(path))
            .header(header::IF_NONE_MATCH, headers[header::ETAG].clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    // The data still needs the token; a page path with another method too.
    let (status, _) = d.daemon.request(Method::GET, "/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = d.daemon.request(Method::POST, "/", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = http
        .get(d.daemon.url("/assets/other.js"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_has_an_hour_of_minute_buckets_and_completed_images_land_in_the_current_minute() {
    let d = daemon(FakeConfig::default(), 4, &[]).await;
    d.fake.add_user("minnie", 40, 31);
    let before = chrono::Utc::now();
    let id = post(&d.daemon, json!({"username": "minnie"})).await;
    d.daemon.wait_for_state(id, &["done"], WAIT).await;
    let (status, report) = d.daemon.request_json(Method::GET, "/status", None).await;
    let after = chrono::Utc::now();
    assert_eq!(status, StatusCode::OK);
    let history = report["throughput_history"].as_array().expect("a history");
    assert_eq!(history.len(), 60, "{history:?}");
    let minutes: Vec<chrono::DateTime<chrono::Utc>> = history
        .iter()
        .map(|b| {
            let minute = b["minute"].as_str().expect("an RFC 3339 minute");
            chrono::DateTime::parse_from_rfc3339(minute)
                .unwrap_or_else(|e| panic!("{minute}: {e}"))
                .to_utc()
        })
        .collect();
    for pair in minutes.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 60, "{history:?}");
    }
    let minute_of = |t: chrono::DateTime<chrono::Utc>| t.timestamp().div_euclid(60) * 60;
    let last = minutes[59].timestamp();
    assert!(last % 60 == 0, "{history:?}");
    assert!(
        minute_of(before) <= last && last <= minute_of(after),
        "{history:?}"
    );
    let images: u64 = history.iter().map(|b| b["images"].as_u64().unwrap()).sum();
    let bytes: u64 = history.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!(images, 40, "{history:?}");
    assert_eq!(bytes, report["totals"]["bytes_done"].as_u64().unwrap());
    if minute_of(before) == minute_of(after) {
        // Nothing crossed a minute boundary: everything is in the current one.
        assert_eq!(history[59]["images"], 40, "{history:?}");
    } else {
        let last_two =
            history[58]["images"].as_u64().unwrap() + history[59]["images"].as_u64().unwrap();
        assert_eq!(last_two, 40, "{history:?}");
    }
    assert!(history[..58].iter().all(|b| b["images"] == 0));
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_loads_with_no_console_errors_and_shows_totals_chart_and_jobs() {
    let _turn = SERIAL.lock().await;
    let d = daemon(FakeConfig::default(), 4, &[]).await;
    d.fake.add_user("alice", 30, 1);
    let id = post(&d.daemon, json!({"username": "alice", "quality": "1024"})).await;
    d.daemon.wait_for_state(id, &["done"], WAIT).await;
    let url = d.daemon.url("/");
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            let row = eventually("the job's row", async || {
                row(driver, id).await.filter(|r| r["state"] == "done")
            })
            .await;
            assert_eq!(row["done"], 30, "{row}");
            assert_eq!(row["value"], 30, "{row}");
            assert_eq!(row["max"], 30, "{row}");
            let text = row["text"].as_str().unwrap();
            assert!(text.contains("user alice"), "{text}");
            assert!(text.contains("1024 px"), "{text}");
            for button in ["pause", "resume", "retry", "cancel"] {
                assert_eq!(row[button], false, "{button} shown on a done job: {row}");
            }
            assert_eq!(text_of(driver, "t-images").await, "30 / 30");
            let bars = js(
                driver,
                "return document.querySelectorAll('#chart svg rect').length;",
            )
            .await;
            assert_eq!(bars, 60);
            let tall = js(
                driver,
                "return Array.from(document.querySelectorAll('#chart svg rect'))\
                   .filter(r => Number(r.getAttribute('height')) > 0).length;",
            )
            .await;
            assert!(
                tall.as_u64().unwrap() >= 1,
                "no bar for the images just done"
            );
            assert!(!shown(driver, "login").await);
            assert!(!shown(driver, "offline").await);
            // A few polls later, still nothing went wrong.
            tokio::time::sleep(Duration::from_millis(4500)).await;
            let severe = severe_entries(driver).await;
            assert!(severe.is_empty(), "console errors: {severe:#?}");
        })
        .await;
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_added_through_the_form_appears_and_advances() {
    let _turn = SERIAL.lock().await;
    let cfg = FakeConfig {
        cdn_latency: Duration::from_millis(120),
        ..Default::default()
    };
    let d = daemon(cfg, 2, &[]).await;
    d.fake.add_user("bob", 24, 2);
    d.fake.add_user("carol", 400, 3);
    d.fake.add_user("alice", 600, 1);
    // Company on the page for the screenshot: one job done, one paused.
    let bob = post(&d.daemon, json!({"username": "bob", "quality": "2048"})).await;
    d.daemon.wait_for_state(bob, &["done"], WAIT).await;
    let carol = post(
        &d.daemon,
        json!({"username": "carol", "format": "webp", "package": "tar",
               "start_captured_at": "2015-01-01", "pano": "exclude"}),
    )
    .await;
    let (status, _) = d
        .daemon
        .request(Method::POST, &format!("/jobs/{carol}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let url = d.daemon.url("/");
    let fake = &d.fake;
    let api = &d.daemon;
    Browser::open(1200, 1160)
        .await
        .run(async |driver| {
            load(driver, &url).await;
            click(driver, "#add > summary").await;
            type_into(driver, "f-value", "alice").await;
            type_into(driver, "f-resync", "6h").await;
            click(driver, "#f-submit").await;
            let added = eventually("the form's confirmation", async || {
                let text = text_of(driver, "add-ok").await;
                (!text.is_empty()).then_some(text)
            })
            .await;
            let (_, jobs) = api.request_json(Method::GET, "/jobs", None).await;
            let alice = jobs
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["username"] == "alice")
                .unwrap_or_else(|| panic!("no job for alice: {jobs}"))
                .clone();
            let id = job_id(&alice);
            assert_eq!(added, format!("Added job #{id}."));
            assert_eq!(alice["resync_every"], "6h", "{alice}");
            assert_eq!(alice["quality"], "original", "{alice}");

            let first = eventually("alice's row with progress", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["done"].as_u64() > Some(0) && r["value"].as_f64() > Some(0.0))
            })
            .await;
            let later = eventually("alice's counts and bar advancing", async || {
                row(driver, id).await.filter(|r| {
                    r["done"].as_u64() >= first["done"].as_u64().map(|d| d + 20)
                        && r["value"].as_f64() > first["value"].as_f64()
                })
            })
            .await;
            assert_eq!(later["state"], "downloading", "{later}");
            assert!(later["pause"].as_bool().unwrap(), "{later}");
            assert!(later["cancel"].as_bool().unwrap(), "{later}");
            assert!(!later["resume"].as_bool().unwrap(), "{later}");
            // The client-side rate and ETA appear once two polls are in.
            let rated = eventually("alice's rate", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["text"].as_str().is_some_and(|t| t.contains("img/s")))
            })
            .await;
            let text = rated["text"].as_str().unwrap();
            assert!(
                text.contains("user alice") && text.contains("re-sync every 6h"),
                "{text}"
            );
            let paused = row(driver, carol).await.expect("carol's row");
            assert_eq!(paused["state"], "paused", "{paused}");
            assert!(
                paused["text"]
                    .as_str()
                    .unwrap()
                    .contains("Paused by an operator")
            );

            // Mid-download: the screenshot for the README and for whoever
            // looks at a failed run.
            let totals = text_of(driver, "t-rate").await;
            assert!(totals.contains("img/s"), "{totals}");
            click(driver, "#add > summary").await;
            let path = screenshot_path();
            driver.screenshot(&path).await.expect("a screenshot");
            assert!(std::fs::metadata(&path).unwrap().len() > 10_000);
            eprintln!("screenshot: {}", path.display());

            // Let it finish quickly; the page follows to done.
            fake.set_cdn_latency(Duration::ZERO, Duration::ZERO);
            eventually("alice done on the page", async || {
                row(driver, id).await.filter(|r| r["state"] == "done")
            })
            .await;
            let done = row(driver, id).await.unwrap();
            assert_eq!(done["done"], 600, "{done}");
            assert_eq!(done["value"], 600, "{done}");
        })
        .await;
    assert!(
        d.daemon
            .archive_dir()
            .join("mapillary-alice-original")
            .is_dir()
    );
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_cancel_through_the_buttons_change_the_job_state() {
    let _turn = SERIAL.lock().await;
    let cfg = FakeConfig {
        cdn_latency: Duration::from_millis(300),
        ..Default::default()
    };
    let d = daemon(cfg, 2, &[]).await;
    d.fake.add_user("dave", 500, 4);
    let id = post(&d.daemon, json!({"username": "dave"})).await;
    let url = d.daemon.url("/");
    let api = &d.daemon;
    let state = async |id: i64| api.job(id).await["state"].as_str().unwrap().to_string();
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            eventually("dave downloading", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["state"] == "downloading" && r["pause"] == true)
            })
            .await;
            let pause = format!("li.job[data-id=\"{id}\"] .act-pause");
            let resume = format!("li.job[data-id=\"{id}\"] .act-resume");
            click(driver, &pause).await;
            eventually("paused in the API", async || {
                (state(id).await == "paused").then_some(())
            })
            .await;
            let r = eventually("paused on the page", async || {
                row(driver, id).await.filter(|r| r["state"] == "paused")
            })
            .await;
            assert!(r["resume"] == true && r["pause"] == false, "{r}");
            assert_eq!(api.job(id).await["pause_reason"], "user");

            click(driver, &resume).await;
            eventually("running again in the API", async || {
                let s = state(id).await;
                (s == "downloading" || s == "enumerating").then_some(())
            })
            .await;
            eventually("running again on the page", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["state"] == "downloading" && r["pause"] == true)
            })
            .await;

            // Cancel asks first; "keep it" changes nothing.
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-cancel")).await;
            let r = row(driver, id).await.unwrap();
            assert!(
                r["confirm"] == true && r["cancel"] == false && r["pause"] == false,
                "{r}"
            );
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-keep")).await;
            assert_ne!(state(id).await, "cancelled");
            let r = row(driver, id).await.unwrap();
            assert!(r["confirm"] == false && r["cancel"] == true, "{r}");
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-cancel")).await;
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-confirm")).await;
            eventually("cancelled in the API", async || {
                (state(id).await == "cancelled").then_some(())
            })
            .await;
            let r = eventually("cancelled on the page", async || {
                row(driver, id).await.filter(|r| r["state"] == "cancelled")
            })
            .await;
            for button in ["pause", "resume", "retry", "cancel", "confirm"] {
                assert_eq!(r[button], false, "{button} shown on a cancelled job: {r}");
            }
        })
        .await;
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_failed_through_the_button_requeues_the_failed_image_and_the_job_completes() {
    let _turn = SERIAL.lock().await;
    let d = daemon(
        FakeConfig::default(),
        2,
        &[("MLD__RETRY__MAX_ATTEMPTS", "2")],
    )
    .await;
    d.fake.add_user("gina", 12, 7);
    let victim = d.fake.images("gina")[3].id.clone();
    d.fake
        .fail_image_always(&victim, Some(Fault::Status503Html));
    let id = post(&d.daemon, json!({"username": "gina"})).await;
    let job = d.daemon.wait_for_state(id, &["done", "failed"], WAIT).await;
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    d.fake.fail_image_always(&victim, None);
    let url = d.daemon.url("/");
    let api = &d.daemon;
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            let r = eventually("gina's row with a retry button", async || {
                row(driver, id).await.filter(|r| r["retry"] == true)
            })
            .await;
            let text = r["text"].as_str().unwrap();
            assert!(text.contains("Retry 1 failed"), "{text}");
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-retry")).await;
            let job = eventually("the failed image archived after the retry", async || {
                let job = api.job(id).await;
                (job["state"] == "done" && job["counts"]["done"] == 12).then_some(job)
            })
            .await;
            assert_eq!(job["counts"]["failed"], 0, "{job}");
            let r = eventually("the page follows to done", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["state"] == "done" && r["done"] == 12)
            })
            .await;
            assert_eq!(r["retry"], false, "nothing left to retry: {r}");
        })
        .await;
    d.daemon.stop().await;
}

/// Deleted images stay out of a plain retry; their own button asks for them
/// (`include_deleted=true`), for images Mapillary only hid for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_images_have_their_own_retry_button() {
    let _turn = SERIAL.lock().await;
    let d = daemon(FakeConfig::default(), 2, &[]).await;
    d.fake.add_user("hana", 10, 8);
    let hidden: Vec<String> = d.fake.images("hana")[2..4]
        .iter()
        .map(|m| m.id.clone())
        .collect();
    d.fake.delete_when_listed(hidden.clone());
    let id = post(&d.daemon, json!({"username": "hana"})).await;
    let job = d.daemon.wait_for_state(id, &["done"], WAIT).await;
    assert_eq!(job["counts"]["deleted"], 2, "{job}");
    d.fake.restore_images(hidden);
    let url = d.daemon.url("/");
    let api = &d.daemon;
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            let r = eventually("hana's row with a retry-deleted button", async || {
                row(driver, id).await.filter(|r| r["retry_deleted"] == true)
            })
            .await;
            assert_eq!(r["retry"], false, "no failure but deleted ones: {r}");
            let text = r["text"].as_str().unwrap();
            assert!(text.contains("Retry 2 deleted"), "{text}");
            click(
                driver,
                &format!("li.job[data-id=\"{id}\"] .act-retry-deleted"),
            )
            .await;
            let job = eventually("the restored images archived", async || {
                let job = api.job(id).await;
                (job["state"] == "done" && job["counts"]["done"] == 10).then_some(job)
            })
            .await;
            assert_eq!(job["counts"]["deleted"], 0, "{job}");
            let r = eventually("the page follows to done", async || {
                row(driver, id)
                    .await
                    .filter(|r| r["state"] == "done" && r["done"] == 10)
            })
            .await;
            assert_eq!(r["retry_deleted"], false, "nothing left to retry: {r}");
        })
        .await;
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_bbox_in_the_form_shows_the_apis_own_message() {
    let _turn = SERIAL.lock().await;
    let d = daemon(FakeConfig::default(), 1, &[]).await;
    // What the API says to the body the form sends.
    let (status, refusal) = d
        .daemon
        .post_job(
            json!({"username": "erin", "quality": "original", "format": "jpeg",
                         "package": "none", "pano": "any", "bbox": [13.5, 52.6, 13.3, 52.4]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refusal}");
    let expected = refusal["error"].as_str().unwrap().to_string();
    assert!(expected.contains("bbox"), "{expected}");
    let url = d.daemon.url("/");
    let api = &d.daemon;
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            load(driver, &url).await;
            click(driver, "#add > summary").await;
            type_into(driver, "f-value", "erin").await;
            type_into(driver, "f-bbox", "13.5, 52.6, 13.3, 52.4").await;
            click(driver, "#f-submit").await;
            let shown_error = eventually("the form's error", async || {
                let text = text_of(driver, "add-error").await;
                (!text.is_empty()).then_some(text)
            })
            .await;
            assert_eq!(shown_error, expected);
            assert!(!shown(driver, "add-ok").await);

            // Not four numbers: the API's message again, verbatim.
            type_into(driver, "f-bbox", "13.3, north").await;
            click(driver, "#f-submit").await;
            let (_, refusal) = api
                .post_job(
                    json!({"username": "erin", "quality": "original", "format": "jpeg",
                                 "package": "none", "pano": "any", "bbox": [13.3, "north"]}),
                )
                .await;
            let expected = refusal["error"].as_str().unwrap().to_string();
            eventually("the second error", async || {
                (text_of(driver, "add-error").await == expected).then_some(())
            })
            .await;
        })
        .await;
    let (_, jobs) = d.daemon.request_json(Method::GET, "/jobs", None).await;
    assert_eq!(jobs, json!([]), "a refused form created a job");
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_api_token_the_page_shows_only_the_prompt_until_the_token_works() {
    let _turn = SERIAL.lock().await;
    let d = daemon(FakeConfig::default(), 2, &[("MLD__API__TOKEN", API_TOKEN)]).await;
    d.fake.add_user("frank", 20, 5);
    let response = d
        .daemon
        .http()
        .post(d.daemon.url("/jobs"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"username": "frank"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = job_id(&response.json::<Value>().await.unwrap());
    let url = d.daemon.url("/");
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            eventually("the token prompt", async || {
                shown(driver, "login").await.then_some(())
            })
            .await;
            let only_prompt = async || {
                assert!(!shown(driver, "app").await);
                let body = js(driver, "return document.body.innerText;").await;
                let body = body.as_str().unwrap().to_string();
                assert!(
                    !body.contains("frank"),
                    "data shown before the token: {body}"
                );
                assert_eq!(rows(driver).await, Vec::<Value>::new());
            };
            only_prompt().await;
            // Stays so across polls.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            only_prompt().await;

            type_into(driver, "token", "not-the-token").await;
            click(driver, "#login-form button[type=submit]").await;
            let refused = eventually("the refusal", async || {
                let text = text_of(driver, "login-error").await;
                (!text.is_empty()).then_some(text)
            })
            .await;
            assert!(refused.contains("refused"), "{refused}");
            only_prompt().await;

            type_into(driver, "token", API_TOKEN).await;
            click(driver, "#login-form button[type=submit]").await;
            eventually("frank's row", async || row(driver, id).await).await;
            assert!(!shown(driver, "login").await);
            let kept = js(driver, "return sessionStorage.getItem('mld.apiToken');").await;
            assert_eq!(kept, API_TOKEN);
            // The token is sent as a header, never put in the page itself.
            let html = js(driver, "return document.documentElement.outerHTML;").await;
            assert!(!html.as_str().unwrap().contains(API_TOKEN));

            // A reload keeps the session's token; forgetting it brings the prompt back.
            driver.refresh().await.unwrap();
            eventually("frank's row after a reload", async || row(driver, id).await).await;
            click(driver, "#forget").await;
            eventually("the prompt again", async || {
                shown(driver, "login").await.then_some(())
            })
            .await;
            only_prompt().await;
            let kept = js(driver, "return sessionStorage.getItem('mld.apiToken');").await;
            assert_eq!(kept, Value::Null);
        })
        .await;
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_390_px_the_page_has_no_horizontal_scroll() {
    let _turn = SERIAL.lock().await;
    let cfg = FakeConfig {
        cdn_latency: Duration::from_millis(200),
        ..Default::default()
    };
    let d = daemon(cfg, 1, &[]).await;
    d.fake
        .add_user("a-rather-long-username-for-a-narrow-screen", 50, 6);
    post(
        &d.daemon,
        json!({"username": "a-rather-long-username-for-a-narrow-screen",
               "bbox": [-122.523, 37.7034, -122.3482, 37.8324],
               "start_captured_at": "2019-06-01T08:30:00Z", "end_captured_at": "2024-12-31",
               "pano": "only", "format": "webp", "package": "tar", "resync_every": "6h"}),
    )
    .await;
    let ids: Vec<String> = (0..40)
        .map(|i| format!("{}", 1_000_000_000_000_000u64 + i))
        .collect();
    post(&d.daemon, json!({"image_ids": ids, "quality": "256"})).await;
    let url = d.daemon.url("/");
    Browser::open(390, 844)
        .await
        .run(async |driver| {
            driver.goto(&url).await.unwrap();
            eventually("two rows", async || {
                (rows(driver).await.len() == 2).then_some(())
            })
            .await;
            click(driver, "#add > summary").await;
            // An error message in the form too.
            type_into(driver, "f-value", "x/y").await;
            click(driver, "#f-submit").await;
            eventually("the form's error", async || {
                (!text_of(driver, "add-error").await.is_empty()).then_some(())
            })
            .await;
            let size = js(
                driver,
                "return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth, \
                         body: document.body.scrollWidth};",
            )
            .await;
            let inner = size["inner"].as_u64().unwrap();
            assert!(inner <= 390, "the viewport is not phone-sized: {size}");
            assert!(
                size["scroll"].as_u64().unwrap() <= inner && size["body"].as_u64().unwrap() <= inner,
                "horizontal scroll at {inner} px: {size}"
            );
            // No element sticks out either (a clipped one would not scroll).
            let wide = js(
                driver,
                "return Array.from(document.querySelectorAll('body *'))\
                   .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > window.innerWidth + 0.5)\
                   .map(e => e.tagName + '.' + e.className);",
            )
            .await;
            assert_eq!(wide, json!([]), "elements wider than the screen");
            let phone = screenshot_path().with_file_name("operator-page-phone.png");
            driver.screenshot(&phone).await.expect("a screenshot");
        })
        .await;
    d.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_says_when_the_daemon_stops_answering_and_when_it_is_back() {
    let _turn = SERIAL.lock().await;
    let d = daemon(FakeConfig::default(), 1, &[]).await;
    let addr = d.daemon.base().trim_start_matches("http://").to_string();
    let url = d.daemon.url("/");
    let Daemon { daemon, fake, dir } = d;
    let mut daemon = Some(daemon);
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            load(driver, &url).await;
            assert!(!shown(driver, "offline").await);
            daemon.take().unwrap().stop().await;
            let banner = eventually("the banner", async || {
                if shown(driver, "offline").await {
                    Some(text_of(driver, "offline").await)
                } else {
                    None
                }
            })
            .await;
            assert!(banner.contains("not answering"), "{banner}");
            // Back on the same address: the banner goes away by itself.
            let mut settings = test_settings(fake.api_url().as_str(), dir.path(), 1, &[]);
            settings.api.listen = addr.clone();
            daemon = Some(TestDaemon::start(settings, DEFAULT_TOKEN).await);
            eventually("the banner cleared", async || {
                (!shown(driver, "offline").await).then_some(())
            })
            .await;
        })
        .await;
    if let Some(daemon) = daemon {
        daemon.stop().await;
    }
}

/// The failed images of a job as its row lists them: `(image id, reason,
/// text)` of each, once the list is shown.
async fn failures_listed(driver: &WebDriver, id: i64) -> Option<Vec<(String, String, String)>> {
    let listed = js(
        driver,
        &format!(
            r#"const li = document.querySelector('li.job[data-id="{id}"]');
               const box = li && li.querySelector('.job-failures');
               if (!box || box.hidden) return null;
               return Array.from(box.querySelectorAll('li.failure')).map(f =>
                 [f.dataset.imageId, f.dataset.reason, f.innerText]);"#
        ),
    )
    .await;
    let rows = listed.as_array()?;
    Some(
        rows.iter()
            .map(|r| {
                let cell = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                (cell(0), cell(1), cell(2))
            })
            .collect(),
    )
}

/// A job's failed images are listed with their reasons beside its "Retry
/// failed" button; with more jobs than `/status` lists, the page says so
/// and shows every job, page by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_lists_failures_beside_retry_and_pages_through_every_job() {
    let _turn = SERIAL.lock().await;
    let d = daemon(
        FakeConfig::default(),
        2,
        &[("MLD__RETRY__MAX_ATTEMPTS", "2")],
    )
    .await;
    d.fake.add_user("ines", 10, 9);
    let mut victims: Vec<String> = [2, 6]
        .iter()
        .map(|&i| d.fake.images("ines")[i].id.clone())
        .collect();
    victims.sort();
    for victim in &victims {
        d.fake.fail_image_always(victim, Some(Fault::Status503Html));
    }
    let id = post(&d.daemon, json!({"username": "ines"})).await;
    let job = d.daemon.wait_for_state(id, &["done", "failed"], WAIT).await;
    assert_eq!(job["counts"]["failed"], 2, "{job}");
    let url = d.daemon.url("/");
    let api = &d.daemon;
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            load(driver, &url).await;
            let r = eventually("ines's row with its buttons", async || {
                row(driver, id).await.filter(|r| r["retry"] == true)
            })
            .await;
            assert!(r["text"].as_str().unwrap().contains("Show failures"), "{r}");
            assert_eq!(failures_listed(driver, id).await, None, "closed at first");
            click(driver, &format!("li.job[data-id=\"{id}\"] .act-failures")).await;
            let listed = eventually("the failed images listed", async || {
                failures_listed(driver, id).await.filter(|l| l.len() == 2)
            })
            .await;
            let ids: Vec<&str> = listed.iter().map(|(i, _, _)| i.as_str()).collect();
            assert_eq!(ids, victims, "by image id");
            for (_, reason, text) in &listed {
                assert_eq!(reason, "error");
                assert!(text.contains("503"), "the reason shown: {text}");
                assert!(text.contains(" attempt"), "{text}");
            }
            let r = row(driver, id).await.unwrap();
            assert_eq!(r["retry"], true, "the retry button beside the list: {r}");

            // 104 more jobs: /status lists the 100 most recently updated.
            for n in 0..104 {
                post(api, json!({"username": format!("nobody{n}")})).await;
            }
            eventually("the note that some jobs are not shown", async || {
                (shown(driver, "jobs-all").await && rows(driver).await.len() == 100).then_some(())
            })
            .await;
            assert!(
                row(driver, id).await.is_none(),
                "the oldest job is not among the recent"
            );
            assert!(
                text_of(driver, "jobs-more-text")
                    .await
                    .contains("of 105 jobs")
            );
            click(driver, "#jobs-all").await;
            eventually("the first page of every job", async || {
                let rows = rows(driver).await;
                (rows.len() == 100 && rows[0]["id"] == id && shown(driver, "jobs-next").await)
                    .then_some(())
            })
            .await;
            click(driver, "#jobs-next").await;
            let all = eventually("every job", async || {
                let rows = rows(driver).await;
                (rows.len() == 105).then_some(rows)
            })
            .await;
            let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(ids, sorted, "every job once, oldest first");
            assert!(!shown(driver, "jobs-next").await, "nothing more");
            click(driver, "#jobs-recent").await;
            eventually("back to the recent ones", async || {
                (rows(driver).await.len() == 100).then_some(())
            })
            .await;
            let severe = severe_entries(driver).await;
            assert!(severe.is_empty(), "console errors: {severe:#?}");
        })
        .await;
    d.daemon.stop().await;
}

/// Places two files in the job's first item through the store, one of them
/// confirmed: an upload caught half-way, whatever the daemon's own track
/// did before it paused.
async fn half_uploaded(db: &Path, job: i64) {
    use mapillary_downloader::store::{NewUploadFile, Store, UploadFileKind, UploadFileState};
    let store = Store::open(db).await.unwrap();
    let collection = store.job_collections(job).await.unwrap().remove(0);
    let item = store
        .add_upload_item(&collection, 1, &collection)
        .await
        .unwrap();
    for (name, bytes) in [("1999-01-01.tar", 300_000), ("1999-01-02.tar", 700_000)] {
        let file = NewUploadFile {
            kind: UploadFileKind::Tar,
            name,
            local_path: "/nowhere",
            bytes,
            md5: "0123456789abcdef0123456789abcdef",
        };
        store.place_upload_file(&item, &file).await.unwrap();
    }
    let first = store.upload_files(&collection).await.unwrap();
    let first = first.iter().find(|f| f.name == "1999-01-01.tar").unwrap();
    for (from, to) in [
        (UploadFileState::Pending, UploadFileState::Sent),
        (UploadFileState::Sent, UploadFileState::Confirmed),
    ] {
        assert!(store.set_file_state(first.id, from, to, 1).await.unwrap());
    }
    store.close().await;
}

/// A job with an upload to the Internet Archive shows the upload's own
/// state, files confirmed of placed, bytes sent of placed and its
/// `last_error`, as the API gives them. The daemon has no IA keys here, so
/// its track pauses with the reason; IA's endpoints point at the kit's fake
/// so nothing could leave the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_with_an_upload_shows_the_uploads_state_figures_and_error() {
    use mapillary_downloader::units::format_bytes;
    use mld_testkit::fake_ia::{FakeIa, FakeIaOptions};
    let _turn = SERIAL.lock().await;
    let ia = FakeIa::start(FakeIaOptions::default()).await;
    let url = ia.base_url();
    let extra = [
        ("MLD__IA__ENDPOINT", url.as_str()),
        ("MLD__ARCHIVE__IA_URL", url.as_str()),
    ];
    let d = daemon(FakeConfig::default(), 4, &extra).await;
    d.fake.add_user("alice", 6, 1);
    let body = json!({"username": "alice", "quality": "1024", "upload": "ia"});
    let id = post(&d.daemon, body).await;
    d.daemon.wait_for_state(id, &["done"], WAIT).await;
    eventually("the upload track to pause", async || {
        let job = d.daemon.job(id).await;
        (job["upload"]["state"] == "paused").then_some(())
    })
    .await;
    half_uploaded(&d.dir.path().join("mapillary.db"), id).await;
    let up = d.daemon.job(id).await["upload"].clone();
    assert_eq!(
        (up["files_confirmed"].as_u64(), up["state"].as_str()),
        (Some(1), Some("paused")),
        "{up}"
    );
    let error = up["last_error"]
        .as_str()
        .expect("a paused upload says why")
        .to_string();
    let page = d.daemon.url("/");
    Browser::open(1200, 900)
        .await
        .run(async |driver| {
            load(driver, &page).await;
            let shown = eventually("the job's upload block", async || {
                let v = js(driver, &format!(
                    "const li = document.querySelector('#jobs > li.job[data-id=\"{id}\"]');\
                     const u = li && li.querySelector('.job-upload');\
                     if (!u || u.hidden) return null;\
                     const t = (c) => u.querySelector(c).textContent;\
                     const bar = u.querySelector('progress');\
                     return {{state: u.dataset.state, badge: t('.upload-state'), files: t('.up-files'),\
                       bytes: t('.up-bytes'), items: t('.up-items'), error: t('.up-error'),\
                       error_shown: !u.querySelector('.up-error').hidden, value: bar.value, max: bar.max}};"
                )).await;
                (!v.is_null()).then_some(v)
            })
            .await;
            assert_eq!(shown["state"], "paused", "{shown}");
            assert_eq!(shown["badge"], "paused", "{shown}");
            let files = format!("{} / {}", up["files_confirmed"], up["files_total"]);
            assert_eq!(shown["files"], files.as_str(), "{shown}");
            let sent = up["bytes_sent"].as_u64().unwrap();
            let total = up["bytes_total"].as_u64().unwrap();
            let bytes = format!("{} / {}", format_bytes(sent), format_bytes(total));
            assert_eq!(shown["bytes"], bytes.as_str(), "{shown}");
            assert_eq!((shown["value"].as_u64(), shown["max"].as_u64()), (Some(sent), Some(total)));
            assert_eq!(shown["items"], up["items"].to_string().as_str(), "{shown}");
            assert_eq!(shown["error"], error.as_str(), "the API's message verbatim");
            assert_eq!(shown["error_shown"], true, "{shown}");
            let upload = screenshot_path().with_file_name("operator-page-upload.png");
            driver.screenshot(&upload).await.expect("a screenshot");
            let severe = severe_entries(driver).await;
            assert!(severe.is_empty(), "console errors: {severe:#?}");
        })
        .await;
    d.daemon.stop().await;
}
