//! Runs the real daemon (`Application`) in-process against the fake API, on
//! `127.0.0.1:0`, with a real SQLite file in a temp dir; and checks archives.
#![allow(dead_code)]

use mapillary_downloader::app::Application;
use mapillary_downloader::archive;
use mapillary_downloader::config::{FlagOverrides, Settings};
use mapillary_downloader::model::{ImageMeta, Quality};
use mapillary_downloader::secret::Secret;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings for a test daemon: fast retries, quick polling, port 0.
pub fn test_settings(
    api_url: &str,
    data_dir: &Path,
    workers: u32,
    extra: &[(&str, &str)],
) -> Settings {
    let mut vars: HashMap<String, String> = [
        ("MAPILLARY_API_URL", api_url),
        ("MLD__RETRY__BACKOFF_BASE_MS", "20"),
        ("MLD__RETRY__BACKOFF_CAP_MS", "200"),
        ("MLD__WORKERS__POLL_INTERVAL_MS", "50"),
        ("MLD__WORKERS__SHUTDOWN_GRACE_SECS", "10"),
        ("MLD__MAPILLARY__PAGE_SIZE", "250"),
        ("MLD__MAPILLARY__CALLS_PER_MINUTE", "600000"),
        ("MLD__MAPILLARY__REQUEST_TIMEOUT_SECS", "10"),
        ("MLD__MAPILLARY__DOWNLOAD_TIMEOUT_SECS", "10"),
        ("MLD__LOG__LEVEL", "warn"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let flags = FlagOverrides {
        config_file: None,
        data_dir: Some(data_dir.to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        workers: Some(workers),
    };
    Settings::load_from(&flags, &vars).expect("test settings")
}

pub struct TestDaemon {
    pub base: String,
    pub http: reqwest::Client,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestDaemon {
    pub async fn start(settings: Settings, token: &str) -> TestDaemon {
        mapillary_downloader::telemetry::init(&settings.log);
        let app = Application::build(&settings, Secret::new(token))
            .await
            .expect("daemon starts");
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestDaemon {
            base,
            http: reqwest::Client::new(),
            settings,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown, as SIGTERM would do.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("daemon task")
                .expect("daemon shut down cleanly");
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("API answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_job(&self, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, "/jobs", Some(body))
            .await
    }

    pub async fn job(&self, id: i64) -> Value {
        self.request(reqwest::Method::GET, &format!("/jobs/{id}"), None)
            .await
            .1
    }

    /// Polls a job until its state is one of `states`; panics with the job after `timeout`.
    pub async fn wait_for_state(&self, id: i64, states: &[&str], timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            if states.iter().any(|s| job["state"] == *s) {
                return job;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} did not reach {states:?} in {timeout:?}: {job:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.settings.archive_dir()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Every `*.part` file under `root`.
pub fn part_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".part") {
                found.push(path);
            }
        }
    }
    found
}

/// Counts JPEG APP1 segments that start with `Exif\0\0`, walking the markers.
pub fn exif_segments(jpeg: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker == 0xE1 && jpeg[i + 4..].starts_with(b"Exif\0\0") {
            count += 1;
        }
        i += 2 + len;
    }
    count
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads an EXIF field with kamadak-exif, as display text.
fn exif_text(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    exif.get_field(tag, exif::In::PRIMARY)
        .map(|f| f.display_value().to_string())
}

fn dms_to_degrees(exif: &exif::Exif, tag: exif::Tag, reference: exif::Tag) -> Option<f64> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    let exif::Value::Rational(parts) = &field.value else {
        return None;
    };
    let deg = parts[0].to_f64() + parts[1].to_f64() / 60.0 + parts[2].to_f64() / 3600.0;
    let r = exif_text(exif, reference)?;
    Some(if r.contains('S') || r.contains('W') {
        -deg
    } else {
        deg
    })
}

/// Checks one archived image against the fake's truth: the right body (its
/// marker), exactly one EXIF block, position and UTC time, and the mtime.
pub fn check_image(path: &Path, meta: &ImageMeta, marker: &[u8]) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "{} is not a JPEG",
        path.display()
    );
    assert!(
        find(&bytes, marker),
        "{} holds another image's body",
        path.display()
    );
    assert_eq!(exif_segments(&bytes), 1, "{}: EXIF blocks", path.display());
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(&bytes))
        .unwrap_or_else(|e| panic!("{}: unreadable EXIF: {e}", path.display()));
    assert!(
        exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .is_none()
    );
    let point = meta.computed_geometry.as_ref().or(meta.geometry.as_ref());
    if let Some((lat, lon)) = point.and_then(|p| p.lat_lon()) {
        let got_lat =
            dms_to_degrees(&exif, exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef).expect("lat");
        let got_lon = dms_to_degrees(&exif, exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef)
            .expect("lon");
        assert!(
            (got_lat - lat).abs() <= 1e-5,
            "{}: lat {got_lat} vs {lat}",
            path.display()
        );
        assert!(
            (got_lon - lon).abs() <= 1e-5,
            "{}: lon {got_lon} vs {lon}",
            path.display()
        );
    }
    if let Some(ms) = meta.captured_at {
        let want = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let got = exif_text(&exif, exif::Tag::DateTimeOriginal).expect("DateTimeOriginal");
        assert_eq!(got, want, "{}", path.display());
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let mtime_ms = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(mtime_ms, ms, "{}: mtime", path.display());
    }
}

/// Checks a whole collection: one correct file per expected image, nothing
/// else, no `.part`, and a `metadata.jsonl` sorted by `captured_at`.
pub fn check_collection(
    archive_dir: &Path,
    username: &str,
    quality: Quality,
    expected: &[ImageMeta],
    marker: impl Fn(&str) -> Vec<u8>,
) {
    let collection = archive::collection_dir(archive_dir, username, quality).unwrap();
    assert!(
        part_files(archive_dir).is_empty(),
        "no .part files may remain"
    );
    let mut jpgs = 0;
    let mut stack = vec![collection.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "jpg") {
                jpgs += 1;
            }
        }
    }
    assert_eq!(jpgs, expected.len(), "files in {}", collection.display());
    for meta in expected {
        let path = archive::image_path(&collection, meta).unwrap();
        check_image(&path, meta, &marker(&meta.id));
    }
    let lines = std::fs::read_to_string(collection.join("metadata.jsonl")).expect("metadata.jsonl");
    let rows: Vec<ImageMeta> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("metadata line is JSON"))
        .collect();
    assert_eq!(rows.len(), expected.len(), "metadata.jsonl lines");
    assert!(!lines.contains("_url"), "metadata.jsonl must not hold URLs");
    let order: Vec<i64> = rows
        .iter()
        .map(|m| m.captured_at.unwrap_or(i64::MAX))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "metadata.jsonl sorted by captured_at"
    );
}
