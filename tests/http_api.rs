//! The HTTP API end to end: the real router on 127.0.0.1:0, a real SQLite
//! store in a temp dir, reqwest as the client. DB effects are checked through
//! the store; no engine runs.

use mapillary_downloader::api::{self, AppState};
use mapillary_downloader::archive::ArchivedFile;
use mapillary_downloader::model::{ImageMeta, Quality};
use mapillary_downloader::secret::Secret;
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::stats::Stats;
use mapillary_downloader::store::{JobState, RetryPolicy, Store, StoreError, Submitted};
use mld_testkit::api_client::ApiClient;
use mld_testkit::server::ServerTask;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::Notify;

const TOKEN: &str = "s3cr3t-api-token-Zq9";

struct Server {
    api: ApiClient,
    store: Arc<Store>,
    stats: Arc<Stats>,
    wake: Arc<Notify>,
    task: ServerTask,
    _dir: TempDir,
}

async fn start(token: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await.unwrap());
    let stats = Arc::new(Stats::new());
    let wake = Arc::new(Notify::new());
    let state = AppState {
        wake: wake.clone(),
        stats: stats.clone(),
        api_token: token.map(Secret::new),
        ..AppState::standalone(store.clone())
    };
    let server = api::bind(
        "127.0.0.1:0".parse().unwrap(),
        api::router(state),
        api::Limits::default(),
    )
    .await
    .unwrap();
    let task = ServerTask::spawn(server.local_addr, |stop| server.serve(stop));
    Server {
        api: ApiClient::new(task.base_url()),
        store,
        stats,
        wake,
        task,
        _dir: dir,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    fn client(&self) -> &reqwest::Client {
        self.api.http()
    }

    /// Every answer must be JSON.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api.request_json(method, path, body).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::POST, path, None).await
    }

    async fn stop(self) {
        let result = tokio::time::timeout(Duration::from_secs(5), self.task.stop())
            .await
            .expect("server stops promptly after cancel");
        result.unwrap();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A retry policy that fails an image for good at its first failure.
fn fail_now() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        retry_at_ms: now_ms(),
    }
}

/// Forces a job into `state` (tests drive states the engine would reach),
/// recording `last_error`.
trait ForceState {
    async fn transition_job_for_test(
        &self,
        id: i64,
        state: JobState,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError>;
}

impl ForceState for Store {
    async fn transition_job_for_test(
        &self,
        id: i64,
        state: JobState,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.transition_job(id, JobState::ALL, state, now)
            .await?
            .ok_or(StoreError::NoSuchJob(id))?;
        self.set_job_error(id, last_error, now).await
    }
}

fn image(id: u64) -> ImageMeta {
    ImageMeta {
        id: id.to_string(),
        captured_at: Some(1_600_000_000_000 + id as i64),
        thumb_original_url: Some(format!("https://cdn.example/{id}.jpg")),
        thumb_256_url: Some(format!("https://cdn.example/{id}-256.jpg")),
        ..Default::default()
    }
}

fn error_message(body: &Value) -> &str {
    body.get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

fn job_id(body: &Value) -> i64 {
    body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {body}"))
}

/// Puts `n` images into the job and marks its enumeration complete.
async fn enumerate(server: &Server, id: i64, first: u64, n: u64) {
    let images: Vec<ImageMeta> = (first..first + n).map(image).collect();
    server
        .store
        .insert_page(id, &images, None, now_ms())
        .await
        .unwrap();
}

#[tokio::test]
async fn create_answers_201_then_200_for_the_same_key() {
    let server = start(None).await;
    let (status, created) = server
        .post("/jobs", json!({"username": "alice", "bbox": [1, 2, 3, 4]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["username"], "alice");
    assert_eq!(created["quality"], "original");
    assert_eq!(created["bbox"], json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(created["state"], "queued");
    assert_eq!(created["enumeration_complete"], false);
    assert_eq!(
        created["counts"],
        json!({"discovered":0,"pending":0,"in_progress":0,"done":0,"failed":0,"deleted":0,"kept_jpeg":0})
    );
    assert_eq!(created["bytes_done"], 0);
    assert!(created["last_error"].is_null());
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created["updated_at"].is_string());
    assert!(
        created.get("cursor").is_none(),
        "cursor must never be served"
    );

    let (status, again) = server
        .post(
            "/jobs",
            json!({"username": "alice", "quality": "original", "bbox": [1.0, 2.0, 3.0, 4.0]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job_id(&again), job_id(&created));

    // Another quality, another bbox or none: distinct jobs.
    let (status, q256) = server
        .post(
            "/jobs",
            json!({"username": "alice", "quality": "256", "bbox": [1, 2, 3, 4]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(q256["quality"], "256");
    let (status, no_bbox) = server
        .post("/jobs", json!({"username": "alice", "bbox": null}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(no_bbox["bbox"].is_null());
    assert_eq!(server.store.list_jobs().await.unwrap().len(), 3);

    // The store's own key lookup agrees with what the API created.
    let bbox = Some(mapillary_downloader::model::Bbox::new(1.0, 2.0, 3.0, 4.0).unwrap());
    let found = server
        .store
        .submit_job(
            &JobSpec::user("alice", Quality::Original).with_bbox(bbox),
            now_ms(),
        )
        .await
        .unwrap();
    assert!(matches!(found, Submitted::Existing(_)), "{found:?}");
    assert_eq!(found.job().id, job_id(&created));

    // A -0 is 0: the same bbox, the same job.
    let (status, zero) = server
        .post("/jobs", json!({"username": "bob", "bbox": [0, 0, 1, 1]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{zero}");
    let (status, minus_zero) = server
        .post("/jobs", json!({"username": "bob", "bbox": [-0.0, 0, 1, 1]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{minus_zero}");
    assert_eq!(job_id(&minus_zero), job_id(&zero));

    // The re-sync interval is not part of the identity: a post without it
    // keeps the job's interval, one with it (or null) sets it.
    let (_, every) = server
        .post(
            "/jobs",
            json!({"username": "bob", "bbox": [0, 0, 1, 1], "resync_every": "6h"}),
        )
        .await;
    assert_eq!(every["resync_every"], "6h", "{every}");
    let (status, kept) = server
        .post("/jobs", json!({"username": "bob", "bbox": [0, 0, 1, 1]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["resync_every"], "6h", "{kept}");
    let (_, never) = server
        .post(
            "/jobs",
            json!({"username": "bob", "bbox": [0, 0, 1, 1], "resync_every": null}),
        )
        .await;
    assert!(never["resync_every"].is_null(), "{never}");
    server.stop().await;
}

#[tokio::test]
async fn api_dedupes_jobs_the_store_created() {
    let server = start(None).await;
    let bbox = Some(mapillary_downloader::model::Bbox::new(-0.5, 10.25, 0.125, 11.0).unwrap());
    let job = server
        .store
        .submit_job(
            &JobSpec::user("carol", Quality::Q1024).with_bbox(bbox),
            now_ms(),
        )
        .await
        .unwrap()
        .job()
        .clone();
    let (status, body) = server
        .post(
            "/jobs",
            json!({"username": "carol", "quality": "1024", "bbox": [-0.5, 10.25, 0.125, 11.0]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(job_id(&body), job.id);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_identical_posts_make_one_job() {
    let server = Arc::new(start(None).await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            server.post("/jobs", json!({"username": "dave"})).await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::CREATED {
            created += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
        ids.insert(job_id(&body));
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(server.store.list_jobs().await.unwrap().len(), 1);
}

#[tokio::test]
async fn posting_a_done_job_starts_a_resync() {
    let server = start(None).await;
    let (_, created) = server.post("/jobs", json!({"username": "bob"})).await;
    let id = job_id(&created);
    enumerate(&server, id, 1, 3).await;
    server
        .store
        .transition_job_for_test(id, JobState::Done, None, now_ms())
        .await
        .unwrap();
    assert!(
        server
            .store
            .find_job(id)
            .await
            .unwrap()
            .unwrap()
            .enumeration_complete
    );

    let wake = server.wake.clone();
    let woken = tokio::spawn(async move { wake.notified().await });
    tokio::task::yield_now().await;

    let (status, body) = server.post("/jobs", json!({"username": "bob"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(job_id(&body), id);
    assert_eq!(body["state"], "enumerating");
    assert_eq!(body["enumeration_complete"], false);
    assert_eq!(body["counts"]["discovered"], 3, "known images are kept");
    let stored = server.store.find_job(id).await.unwrap().unwrap();
    assert!(!stored.enumeration_complete);
    assert_eq!(stored.state, JobState::Enumerating);
    let part = server
        .store
        .current_part(id)
        .await
        .unwrap()
        .expect("a fresh first part");
    assert_eq!(part.cursor, None, "the re-sync lists from the first page");
    tokio::time::timeout(Duration::from_secs(2), woken)
        .await
        .expect("the engine is woken after a re-sync")
        .unwrap();

    // A failed job re-syncs the same way.
    server
        .store
        .transition_job_for_test(id, JobState::Failed, Some("listing failed"), now_ms())
        .await
        .unwrap();
    let (status, body) = server.post("/jobs", json!({"username": "bob"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "enumerating");
    assert!(body["last_error"].is_null());
    assert_eq!(server.store.list_jobs().await.unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_does_not_count_as_existing() {
    let server = start(None).await;
    let (_, first) = server.post("/jobs", json!({"username": "erin"})).await;
    let (status, cancelled) = server
        .send(Method::DELETE, &format!("/jobs/{}", job_id(&first)), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");
    let (status, second) = server.post("/jobs", json!({"username": "erin"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(job_id(&second), job_id(&first));
    assert_eq!(server.store.list_jobs().await.unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn list_and_get_jobs() {
    let server = start(None).await;
    let (status, list) = server.get("/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    let (_, a) = server.post("/jobs", json!({"username": "a"})).await;
    let (_, b) = server
        .post("/jobs", json!({"username": "b", "quality": "2048"}))
        .await;
    let (status, list) = server.get("/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = list.as_array().unwrap().iter().map(job_id).collect();
    assert_eq!(ids, vec![job_id(&a), job_id(&b)]);
    let (status, one) = server.get(&format!("/jobs/{}", job_id(&b))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, b);
    let (status, missing) = server.get("/jobs/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_message(&missing).contains("999"));
    let (status, bad) = server.get("/jobs/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&bad).contains("positive integer"));
    server.stop().await;
}

#[tokio::test]
async fn pause_and_resume() {
    let server = start(None).await;
    let (_, job) = server.post("/jobs", json!({"username": "frank"})).await;
    let id = job_id(&job);

    let (status, paused) = server.post_empty(&format!("/jobs/{id}/pause")).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["state"], "paused");
    let (status, again) = server.post_empty(&format!("/jobs/{id}/pause")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&again).contains("paused"), "{again}");

    server
        .store
        .set_job_error(id, Some("bad token (code 190)"), now_ms())
        .await
        .unwrap();
    let (status, resumed) = server.post_empty(&format!("/jobs/{id}/resume")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["state"], "enumerating", "listing not finished yet");
    assert!(resumed["last_error"].is_null());
    let (status, again) = server.post_empty(&format!("/jobs/{id}/resume")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&again).contains("enumerating"), "{again}");

    // Once the listing is complete, resume goes straight to downloading.
    enumerate(&server, id, 1, 2).await;
    let (status, _) = server.post_empty(&format!("/jobs/{id}/pause")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, resumed) = server.post_empty(&format!("/jobs/{id}/resume")).await;
    assert_eq!(resumed["state"], "downloading");
    let stored = server.store.find_job(id).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Downloading);

    // A finished job cannot be paused.
    server
        .store
        .transition_job_for_test(id, JobState::Done, None, now_ms())
        .await
        .unwrap();
    let (status, body) = server.post_empty(&format!("/jobs/{id}/pause")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&body).contains("done"));

    let (status, _) = server.post_empty("/jobs/4242/pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.post_empty("/jobs/4242/resume").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn retry_requeues_failed_images_and_reopens_a_finished_job() {
    let server = start(None).await;
    let (_, job) = server.post("/jobs", json!({"username": "gina"})).await;
    let id = job_id(&job);
    enumerate(&server, id, 1, 3).await;
    let store = &server.store;
    store
        .transition_job_for_test(id, JobState::Downloading, None, now_ms())
        .await
        .unwrap();
    let claimed = store
        .claim(&"worker-1".into(), 3, Duration::from_secs(60), now_ms(), 0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let (first, rest) = claimed.split_first().unwrap();
    assert!(
        store
            .complete(
                &first.lease,
                &ArchivedFile::loose("a/b.jpg", 1234, None),
                now_ms()
            )
            .await
            .unwrap()
    );
    for image in rest {
        store
            .fail(&image.lease, "HTTP 500", fail_now(), now_ms())
            .await
            .unwrap();
    }
    store
        .transition_job_for_test(id, JobState::Done, None, now_ms())
        .await
        .unwrap();
    let before = store.find_job(id).await.unwrap().unwrap();
    assert_eq!(before.counts.failed, 2);

    let (status, body) = server.post_empty(&format!("/jobs/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "downloading");
    assert_eq!(body["counts"]["failed"], 0);
    assert_eq!(body["counts"]["pending"], 2);
    assert_eq!(body["counts"]["done"], 1);
    assert_eq!(body["bytes_done"], 1234);
    let after = store.find_job(id).await.unwrap().unwrap();
    assert_eq!(after.state, JobState::Downloading);
    assert_eq!(after.counts.pending, 2);

    // Retrying a running job only re-queues: state unchanged.
    let (status, body) = server.post_empty(&format!("/jobs/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "downloading");

    // Cancelled jobs cannot be retried; missing ones are 404.
    server
        .send(Method::DELETE, &format!("/jobs/{id}"), None)
        .await;
    let (status, body) = server.post_empty(&format!("/jobs/{id}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&body).contains("cancelled"));
    let (status, _) = server.post_empty("/jobs/777/retry").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn delete_cancels_and_is_idempotent() {
    let server = start(None).await;
    let (_, job) = server.post("/jobs", json!({"username": "hank"})).await;
    let id = job_id(&job);
    enumerate(&server, id, 1, 2).await;
    let (status, body) = server
        .send(Method::DELETE, &format!("/jobs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["counts"]["discovered"], 2, "rows are kept");
    let (status, body) = server
        .send(Method::DELETE, &format!("/jobs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "cancelled");
    let stored = server.store.find_job(id).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Cancelled);
    // A cancelled job is neither paused nor resumed.
    let (status, _) = server.post_empty(&format!("/jobs/{id}/pause")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server.post_empty(&format!("/jobs/{id}/resume")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = server.send(Method::DELETE, "/jobs/31337", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_message(&body).contains("31337"));
    server.stop().await;
}

#[tokio::test]
async fn status_reports_jobs_totals_throughput_and_eta() {
    let server = start(None).await;
    let (status, empty) = server.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["jobs"], json!([]));
    assert_eq!(
        empty["totals"],
        json!({"discovered":0,"pending":0,"in_progress":0,"done":0,"failed":0,"deleted":0,"bytes_done":0})
    );
    assert_eq!(empty["eta_seconds"], 0);

    let (_, a) = server.post("/jobs", json!({"username": "ivy"})).await;
    let (_, b) = server.post("/jobs", json!({"username": "jon"})).await;
    let (a, b) = (job_id(&a), job_id(&b));
    enumerate(&server, a, 1, 4).await;
    enumerate(&server, b, 100, 6).await;
    let store = &server.store;
    store
        .transition_job_for_test(a, JobState::Downloading, None, now_ms())
        .await
        .unwrap();
    store
        .transition_job_for_test(b, JobState::Downloading, None, now_ms())
        .await
        .unwrap();
    let claimed = store
        .claim(&"w".into(), 3, Duration::from_secs(60), now_ms(), 0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .complete(
            &claimed[0].lease,
            &ArchivedFile::loose("x.jpg", 500, None),
            now_ms(),
        )
        .await
        .unwrap();
    store
        .fail(&claimed[1].lease, "boom", fail_now(), now_ms())
        .await
        .unwrap();

    // Nothing completed yet in the window: no honest ETA.
    let (_, body) = server.get("/status").await;
    assert!(body["eta_seconds"].is_null(), "{body}");
    assert_eq!(body["throughput"]["images_per_sec"], 0.0);

    for _ in 0..10 {
        server.stats.record_image(2_000);
    }
    let (status, body) = server.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.get("cursor").is_none()));
    assert_eq!(
        body["totals"],
        json!({"discovered":10,"pending":7,"in_progress":1,"done":1,"failed":1,"deleted":0,"bytes_done":500})
    );
    let ips = body["throughput"]["images_per_sec"].as_f64().unwrap();
    let bps = body["throughput"]["bytes_per_sec"].as_f64().unwrap();
    assert!(ips > 0.0 && ips <= 10.0, "{ips}");
    assert!((bps / ips - 2_000.0).abs() < 1e-6, "{bps} vs {ips}");
    // 8 images remain (7 pending + 1 in flight) at `ips` images/s.
    let eta = body["eta_seconds"].as_u64().unwrap();
    assert_eq!(eta, (8.0 / ips).ceil() as u64);

    // A paused job's images do not count towards the ETA.
    server.post_empty(&format!("/jobs/{b}/pause")).await;
    let (_, body) = server.get("/status").await;
    let remaining_a = 4
        - body["jobs"][0]["counts"]["done"].as_u64().unwrap()
        - body["jobs"][0]["counts"]["failed"].as_u64().unwrap();
    let eta = body["eta_seconds"].as_u64().unwrap();
    let ips = body["throughput"]["images_per_sec"].as_f64().unwrap();
    assert_eq!(eta, (remaining_a as f64 / ips).ceil() as u64);
    server.stop().await;
}

#[tokio::test]
async fn healthz_answers_while_the_database_does() {
    let server = start(Some(TOKEN)).await;
    let response = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
    server.store.close().await;
    let response = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert!(!error_message(&body).is_empty());
    server.stop().await;
}

/// Checks one exposition line `name{label="value",...} number`.
fn check_sample_line(line: &str) -> Result<(String, f64), String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("bad metric name in {line:?}"));
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let mut chars = labels.char_indices().peekable();
        let close;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    chars.next();
                    end = i + 1;
                } else {
                    break;
                }
            }
            if end == start {
                return Err(format!("empty label name in {line:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('=')
                || chars.next().map(|(_, c)| c) != Some('"')
            {
                return Err(format!("label without =\"...\" in {line:?}"));
            }
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' | '"' | 'n' => {}
                        other => return Err(format!("bad escape \\{other} in {line:?}")),
                    },
                    '"' => break,
                    '\n' => return Err("raw newline in label value".into()),
                    _ => {}
                }
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    close = i;
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} in labels of {line:?}")),
            }
        }
        rest = &labels[close + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before value in {line:?}"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("bad value {v:?} in {line:?}"))?,
    };
    Ok((name.to_string(), value))
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let server = start(None).await;
    // The API refuses such a username now (`[A-Za-z0-9_.-]{1,64}`), but a
    // database from before the rule may hold one: label values must be
    // escaped.
    let spec = JobSpec::user("zoë\"x", Quality::Original);
    let id = match server.store.submit_job(&spec, 1).await.unwrap() {
        Submitted::Created(job) => job.id,
        _ => panic!("a new job"),
    };
    enumerate(&server, id, 1, 5).await;
    server.stats.record_image(100);

    let response = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().expect("comment names a metric");
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                let kind = parts.next();
                assert!(
                    matches!(kind, Some("gauge" | "counter" | "histogram")),
                    "{line}"
                );
                if kind == Some("counter") {
                    assert!(
                        name.ends_with("_total"),
                        "a counter's name ends in _total: {line}"
                    );
                }
                typed.insert(name.to_string());
            }
            continue;
        }
        let (name, value) = check_sample_line(line).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| typed.contains(*base))
            })
            .unwrap_or(&name);
        assert!(typed.contains(family), "{name} has no TYPE line before it");
        samples.push((line.to_string(), value));
    }
    let find = |prefix: &str| {
        samples
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {prefix}\n{text}"))
    };
    let labels =
        format!(r#"job_id="{id}",source_kind="username",summary="user zoë\"x",quality="original""#);
    assert_eq!(
        find(&format!(
            r#"mapillary_job_images{{{labels},state="pending"}}"#
        )),
        5.0
    );
    assert_eq!(find(&format!("mapillary_job_bytes_done{{{labels}}}")), 0.0);
    assert_eq!(
        find(&format!(
            r#"mapillary_job_state{{{labels},state="queued"}}"#
        )),
        1.0
    );
    assert_eq!(find(r#"mapillary_images{state="pending"}"#), 5.0);
    assert_eq!(find(r#"mapillary_jobs{state="queued"}"#), 1.0);
    assert_eq!(find("mapillary_discovered_images "), 5.0);
    assert!(find("mapillary_throughput_images_per_second ") > 0.0);
    assert!(find("mapillary_throughput_bytes_per_second ") > 0.0);
    assert!(find("mapillary_uptime_seconds ") >= 0.0);
    server.stop().await;
}

#[tokio::test]
async fn bearer_token_guards_everything_but_healthz() {
    let server = start(Some(TOKEN)).await;
    let client = server.client();
    let mut bodies = Vec::new();
    for (method, path) in [
        (Method::GET, "/jobs"),
        (Method::POST, "/jobs"),
        (Method::GET, "/status"),
        (Method::GET, "/metrics"),
        (Method::GET, "/jobs/1"),
        (Method::DELETE, "/jobs/1"),
        (Method::POST, "/jobs/1/pause"),
        (Method::GET, "/no-such-route"),
        (Method::POST, "/healthz"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-token".to_string()),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer {TOKEN}x")),
            Some(TOKEN.to_string()),
        ] {
            let mut request = client
                .request(method.clone(), server.url(path))
                .header("content-type", "application/json")
                .body(r#"{"username":"kim"}"#);
            if let Some(auth) = &auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert!(error_message(&body).contains("Bearer"));
            bodies.push(body.to_string());
        }
    }
    assert!(
        server.store.list_jobs().await.unwrap().is_empty(),
        "nothing written"
    );

    // With the token everything works, and the scheme is case-insensitive.
    let ok = client
        .post(server.url("/jobs"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&json!({"username": "kim"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    bodies.push(ok.text().await.unwrap());
    for path in ["/jobs", "/status", "/metrics", "/jobs/1"] {
        let response = client
            .get(server.url(path))
            .header("authorization", format!("bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        bodies.push(response.text().await.unwrap());
    }
    // An unknown route with the token is a 404, not a 401.
    let response = client
        .get(server.url("/nope"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    bodies.push(response.text().await.unwrap());

    // /healthz is open.
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    bodies.push(response.text().await.unwrap());

    for body in &bodies {
        assert!(!body.contains(TOKEN), "token echoed in {body}");
    }
    server.stop().await;
}

struct BadRequest {
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// A piece of the message that says what is wrong.
    says: &'static str,
}

fn bad(
    method: Method,
    path: &'static str,
    body: &str,
    status: u16,
    says: &'static str,
) -> BadRequest {
    BadRequest {
        method,
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        says,
    }
}

fn bad_post(body: &str, status: u16, says: &'static str) -> BadRequest {
    bad(Method::POST, "/jobs", body, status, says)
}

fn malformed_requests() -> Vec<BadRequest> {
    let ids = |n: usize| -> String {
        let list: Vec<String> = (1..=n).map(|i| format!("\"{i}\"")).collect();
        list.join(",")
    };
    let too_many_sequences = format!(r#"{{"sequence_ids":[{}]}}"#, ids(1001));
    let too_many_images = format!(r#"{{"image_ids":[{}]}}"#, ids(10_001));
    let long_name = format!(r#"{{"username":"{}"}}"#, "x".repeat(101));
    let long_name: &'static str = Box::leak(long_name.into_boxed_str());
    vec![
        BadRequest {
            content_type: Some("text/plain"),
            ..bad_post(r#"{"username":"a"}"#, 415, "application/json")
        },
        BadRequest {
            content_type: None,
            ..bad_post(r#"{"username":"a"}"#, 415, "Content-Type")
        },
        BadRequest {
            content_type: Some("application/x-www-form-urlencoded"),
            ..bad_post("username=a", 415, "application/json")
        },
        bad_post("", 400, "not valid JSON"),
        bad_post("not json", 400, "not valid JSON"),
        bad_post(r#"{"username":"a""#, 400, "not valid JSON"),
        bad_post(r#"{"username":"a"} trailing"#, 400, "not valid JSON"),
        bad_post(r#"{'username':'a'}"#, 400, "not valid JSON"),
        BadRequest {
            body: b"{\"username\":\"\xff\xfe\"}".to_vec(),
            ..bad_post("", 400, "not valid JSON")
        },
        bad_post("[]", 422, "invalid request"),
        bad_post(r#""alice""#, 422, "invalid request"),
        bad_post("null", 422, "invalid request"),
        bad_post("{}", 422, "exactly one source"),
        // Sources: exactly one, each checked.
        bad_post(
            r#"{"username":"a","image_ids":["1"]}"#,
            422,
            "got username and image_ids",
        ),
        bad_post(
            r#"{"organization_id":"1","sequence_ids":["s"]}"#,
            422,
            "got organization_id and sequence_ids",
        ),
        bad_post(r#"{"organization_id":""}"#, 422, "organization_id: "),
        bad_post(r#"{"organization_id":"12-3"}"#, 422, "1-32 digits"),
        bad_post(r#"{"organization_id":123}"#, 422, "string of digits"),
        bad_post(r#"{"sequence_ids":[]}"#, 422, "at least one id"),
        bad_post(r#"{"sequence_ids":"s"}"#, 422, "must be an array"),
        bad_post(r#"{"sequence_ids":[1]}"#, 422, "must hold strings"),
        bad_post(r#"{"sequence_ids":["../x"]}"#, 422, "invalid sequence id"),
        bad_post(&too_many_sequences, 422, "at most 1000"),
        bad_post(r#"{"image_ids":[]}"#, 422, "at least one id"),
        bad_post(r#"{"image_ids":[123]}"#, 422, "must hold strings"),
        bad_post(r#"{"image_ids":["12a"]}"#, 422, "invalid image id"),
        bad_post(r#"{"image_ids":[""]}"#, 422, "invalid image id"),
        bad_post(&too_many_images, 422, "at most 10000"),
        // Filters.
        bad_post(
            r#"{"username":"a","start_captured_at":"2024-02-30"}"#,
            422,
            "start_captured_at",
        ),
        bad_post(
            r#"{"username":"a","start_captured_at":"+10000-01-01"}"#,
            422,
            "out of range",
        ),
        bad_post(
            r#"{"username":"a","end_captured_at":"tomorrow"}"#,
            422,
            "end_captured_at",
        ),
        bad_post(
            r#"{"username":"a","start_captured_at":1704067200000}"#,
            422,
            "must be a date string",
        ),
        bad_post(
            r#"{"username":"a","start_captured_at":"2024-01-01","end_captured_at":"2024-01-01T00:00:00Z"}"#,
            422,
            "not before end_captured_at",
        ),
        bad_post(
            r#"{"username":"a","pano":"yes"}"#,
            422,
            "unknown pano value",
        ),
        bad_post(r#"{"username":"a","pano":1}"#, 422, "pano must be one of"),
        bad_post(r#"{"username":"a","format":"gif"}"#, 422, "unknown format"),
        bad_post(
            r#"{"username":"a","package":"zip"}"#,
            422,
            "unknown package",
        ),
        bad_post(
            r#"{"username":"a","resync_every":"1m"}"#,
            422,
            "10-minute minimum",
        ),
        bad_post(
            r#"{"username":"a","resync_every":"soon"}"#,
            422,
            "not a duration",
        ),
        bad_post(
            r#"{"username":"a","resync_every":"400d"}"#,
            422,
            "longer than a year",
        ),
        bad_post(
            r#"{"username":"a","resync_every":3600}"#,
            422,
            "resync_every must be null",
        ),
        bad_post(r#"{"username":""}"#, 422, "must not be empty"),
        bad_post(long_name, 422, "longer than 64 characters"),
        bad_post(r#"{"username":"a/b"}"#, 422, "forbidden character"),
        bad_post(r#"{"username":"a\\b"}"#, 422, "forbidden character"),
        bad_post(r#"{"username":"a\u0007b"}"#, 422, "forbidden character"),
        bad_post(r#"{"username":"a\nb"}"#, 422, "forbidden character"),
        bad_post(r#"{"username":".."}"#, 422, "'..'"),
        bad_post(r#"{"username":5}"#, 422, "username must be a string"),
        bad_post(r#"{"username":["a"]}"#, 422, "username must be a string"),
        bad_post(
            r#"{"username":"a","quality":"4096"}"#,
            422,
            "unknown quality",
        ),
        bad_post(
            r#"{"username":"a","quality":"ORIGINAL"}"#,
            422,
            "unknown quality",
        ),
        bad_post(
            r#"{"username":"a","quality":1024}"#,
            422,
            "quality must be one of",
        ),
        bad_post(
            r#"{"username":"a","bbox":[1,2,3]}"#,
            422,
            "exactly four numbers",
        ),
        bad_post(
            r#"{"username":"a","bbox":[1,2,3,4,5]}"#,
            422,
            "exactly four numbers",
        ),
        bad_post(r#"{"username":"a","bbox":[]}"#, 422, "exactly four numbers"),
        bad_post(
            r#"{"username":"a","bbox":[3,2,1,4]}"#,
            422,
            "west must be less than east",
        ),
        bad_post(
            r#"{"username":"a","bbox":[1,2,1,4]}"#,
            422,
            "west must be less than east",
        ),
        bad_post(
            r#"{"username":"a","bbox":[1,4,3,2]}"#,
            422,
            "south must be less than north",
        ),
        bad_post(r#"{"username":"a","bbox":[-181,0,1,1]}"#, 422, "-180..180"),
        bad_post(r#"{"username":"a","bbox":[0,-91,1,1]}"#, 422, "-90..90"),
        bad_post(
            r#"{"username":"a","bbox":["0",0,1,1]}"#,
            422,
            "four numbers",
        ),
        bad_post(
            r#"{"username":"a","bbox":[0,0,1,null]}"#,
            422,
            "four numbers",
        ),
        bad_post(
            r#"{"username":"a","bbox":"0,0,1,1"}"#,
            422,
            "array of four numbers",
        ),
        bad_post(
            r#"{"username":"a","bbox":{"west":0}}"#,
            422,
            "array of four numbers",
        ),
        bad_post(
            r#"{"username":"a","bbox":[0,0,1,1e999]}"#,
            400,
            "not valid JSON",
        ),
        bad_post(
            r#"{"username":"a","extra":true}"#,
            422,
            "unknown field `extra`",
        ),
        bad_post(
            r#"{"username":"a","Username":"b"}"#,
            422,
            "unknown field `Username`",
        ),
        bad_post(r#"{"username":"a","username":"b"}"#, 422, "duplicate field"),
        bad(Method::GET, "/jobs/abc", "", 400, "positive integer"),
        bad(Method::GET, "/jobs/0", "", 400, "positive integer"),
        bad(Method::GET, "/jobs/-1", "", 400, "positive integer"),
        bad(Method::POST, "/jobs/abc/pause", "", 400, "positive integer"),
        bad(
            Method::POST,
            "/jobs/99999999999999999999999/resume",
            "",
            400,
            "positive integer",
        ),
        bad(Method::DELETE, "/jobs/1.5", "", 400, "positive integer"),
        bad(
            Method::PUT,
            "/jobs",
            r#"{"username":"a"}"#,
            405,
            "not allowed",
        ),
        bad(Method::DELETE, "/jobs", "", 405, "not allowed"),
        bad(
            Method::PATCH,
            "/jobs/1",
            r#"{"username":"a"}"#,
            405,
            "not allowed",
        ),
        bad(Method::GET, "/jobs/1/pause", "", 405, "not allowed"),
        bad(
            Method::POST,
            "/status",
            r#"{"username":"a"}"#,
            405,
            "not allowed",
        ),
        bad(Method::GET, "/nope", "", 404, "no such endpoint"),
        bad(Method::POST, "/jobs/1/explode", "", 404, "no such endpoint"),
        bad(
            Method::POST,
            "/jobs/",
            r#"{"username":"a"}"#,
            404,
            "no such endpoint",
        ),
    ]
}

#[tokio::test]
async fn malformed_requests_are_refused_and_write_nothing() {
    let server = start(None).await;
    let cases = malformed_requests();
    assert!(cases.len() >= 25);
    for case in cases {
        let mut request = server
            .client()
            .request(case.method.clone(), server.url(case.path))
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let what = format!(
            "{} {} {:?}",
            case.method,
            case.path,
            String::from_utf8_lossy(&case.body)
        );
        assert_eq!(response.status().as_u16(), case.status, "{what}");
        if case.status == 405 {
            assert!(
                response.headers().contains_key("allow"),
                "{what}: 405 names the allowed methods"
            );
        }
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let body: Value = response.json().await.unwrap();
        let message = error_message(&body);
        assert!(
            message.contains(case.says),
            "{what}: message {message:?} should say {:?}",
            case.says
        );
        assert_eq!(body.as_object().unwrap().len(), 1, "{what}: only `error`");
    }
    assert!(server.store.list_jobs().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_256_kib_are_refused_with_413() {
    let server = start(None).await;
    let padding = " ".repeat(256 * 1024);
    let body = format!(r#"{{"username":"big"{padding}}}"#);
    let response = server
        .client()
        .post(server.url("/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert!(error_message(&body).contains("262144"), "{body}");

    // Streamed without Content-Length: still refused.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..300).map(|_| Ok(vec![b' '; 1024])).collect();
    let response = server
        .client()
        .post(server.url("/jobs"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Just under the limit is fine.
    let padding = " ".repeat(250 * 1024);
    let response = server
        .client()
        .post(server.url("/jobs"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"username":"big"{padding}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(server.store.list_jobs().await.unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_is_graceful_and_prompt() {
    let server = start(None).await;
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let base = server.api.base().to_string();
    server.stop().await;
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

/// A GET answered as `(status, body, next)`, `next` the target of its
/// `Link: <…>; rel="next"` header.
async fn get_page(server: &Server, path: &str) -> (StatusCode, Value, Option<String>) {
    let response = server.client().get(server.url(path)).send().await.unwrap();
    let status = response.status();
    let next = response
        .headers()
        .get(reqwest::header::LINK)
        .map(|v| v.to_str().unwrap().to_string())
        .map(|link| {
            let target = link
                .strip_suffix(">; rel=\"next\"")
                .and_then(|l| l.strip_prefix('<'))
                .unwrap_or_else(|| panic!("not a next link: {link}"));
            target.to_string()
        });
    let body = response.json().await.unwrap();
    (status, body, next)
}

/// Follows `first` and every next link: the items of every page, and how
/// many pages there were.
async fn all_pages(server: &Server, first: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        let (status, body, link) = get_page(server, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        items.extend(body.as_array().unwrap_or_else(|| panic!("{body}")).clone());
        pages += 1;
        next = link;
    }
    (items, pages)
}

#[tokio::test]
async fn jobs_page_a_hundred_at_a_time_with_a_link_to_the_next() {
    let server = start(None).await;
    let mut ids = Vec::new();
    for n in 0..105 {
        let spec = JobSpec::user(&format!("user{n}"), Quality::Original);
        ids.push(
            server
                .store
                .submit_job(&spec, now_ms())
                .await
                .unwrap()
                .job()
                .id,
        );
    }
    // Without parameters: the first 100, and where the rest are.
    let (status, first, next) = get_page(&server, "/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.as_array().unwrap().len(), 100);
    assert_eq!(
        next.as_deref(),
        Some(format!("/jobs?limit=100&after={}", ids[99]).as_str())
    );
    let (rest, pages) = all_pages(&server, &next.unwrap()).await;
    assert_eq!((rest.len(), pages), (5, 1));
    // Any page size: every job once, in id order.
    for limit in [1, 7, 105, 1000] {
        let (jobs, pages) = all_pages(&server, &format!("/jobs?limit={limit}")).await;
        let seen: Vec<i64> = jobs.iter().map(job_id).collect();
        assert_eq!(seen, ids, "pages of {limit}");
        assert_eq!(pages, 105usize.div_ceil(limit as usize), "pages of {limit}");
    }
    let (_, tail, next) = get_page(&server, &format!("/jobs?after={}", ids[102])).await;
    assert_eq!(tail.as_array().unwrap().len(), 2);
    assert_eq!(next, None, "no link after the last page");
    for (query, says) in [
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=1001", "limit must be an integer from 1 to 1000"),
        ("limit=ten", "limit must be"),
        ("after=-3", "after must be a job id"),
        ("after=x", "after must be a job id"),
        ("page=2", "unknown query parameter"),
        ("limit=5&limit=6", "given twice"),
    ] {
        let (status, body) = server.get(&format!("/jobs?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(error_message(&body).contains(says), "{query}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn failed_images_of_a_10000_image_job_page_through_exactly_over_http() {
    let server = start(None).await;
    let (_, job) = server.post("/jobs", json!({"username": "vera"})).await;
    let id = job_id(&job);
    enumerate(&server, id, 1, 10_000).await;
    let store = &server.store;
    store
        .transition_job_for_test(id, JobState::Downloading, None, now_ms())
        .await
        .unwrap();
    let claimed = store
        .claim(&"w".into(), 10_000, Duration::from_secs(600), now_ms(), 0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10_000);
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for (n, image) in claimed.iter().enumerate() {
        if n % 10 == 0 {
            deleted.push(image.image_id.clone());
            let reason = mapillary_downloader::store::FailReason::Deleted;
            store
                .fail_for_good(&image.lease, reason, "deleted on Mapillary", now_ms())
                .await
                .unwrap();
        } else {
            failed.push(image.image_id.clone());
            store
                .fail(
                    &image.lease,
                    "download failed: HTTP 500",
                    fail_now(),
                    now_ms(),
                )
                .await
                .unwrap();
        }
    }
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    let ids = |images: &[Value]| -> Vec<String> {
        images
            .iter()
            .map(|i| i["image_id"].as_str().unwrap().to_string())
            .collect()
    };
    let everything = sorted(claimed.iter().map(|c| c.image_id.clone()).collect());
    for limit in [1000, 333] {
        let (images, pages) = all_pages(
            &server,
            &format!("/jobs/{id}/images?state=failed&limit={limit}"),
        )
        .await;
        assert_eq!(
            ids(&images),
            everything,
            "pages of {limit}: no repeats, none missing"
        );
        assert_eq!(pages, 10_000usize.div_ceil(limit));
    }
    let (gone, _) = all_pages(&server, &format!("/jobs/{id}/images?reason=deleted")).await;
    assert_eq!(ids(&gone), sorted(deleted));
    let (errors, pages) = all_pages(
        &server,
        &format!("/jobs/{id}/images?state=failed&reason=error&limit=1000"),
    )
    .await;
    assert_eq!((ids(&errors), pages), (sorted(failed), 9));
    let first = &errors[0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "attempts",
            "captured_at",
            "fail_reason",
            "image_id",
            "job_id",
            "last_error",
            "path",
            "sequence",
            "state"
        ]
    );
    assert_eq!(first["state"], "failed");
    assert_eq!(first["fail_reason"], "error");
    assert_eq!(first["last_error"], "download failed: HTTP 500");
    assert_eq!(first["attempts"], 1);
    assert!(first["path"].is_null());
    let n: i64 = first["image_id"].as_str().unwrap().parse().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(first["captured_at"].as_str().unwrap()).unwrap();
    assert_eq!(at.timestamp_millis(), 1_600_000_000_000 + n);
    // Nothing pending or done; every image in the unfiltered list.
    let (status, none, next) = get_page(&server, &format!("/jobs/{id}/images?state=pending")).await;
    assert_eq!((status, none, next), (StatusCode::OK, json!([]), None));
    let (all, _) = all_pages(&server, &format!("/jobs/{id}/images?limit=1000")).await;
    assert_eq!(all.len(), 10_000);

    for (query, says) in [
        (
            "state=lost",
            "state must be failed, pending, in_progress or done",
        ),
        ("reason=gone", "reason must be deleted or error"),
        (
            "state=done&reason=error",
            "reason applies to failed images only",
        ),
        ("limit=0", "limit must be"),
        ("after=", "after must be an image id"),
        ("sort=id", "unknown query parameter"),
    ] {
        let (status, body) = server.get(&format!("/jobs/{id}/images?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(error_message(&body).contains(says), "{query}: {body}");
    }
    let (status, body) = server.get("/jobs/4242/images?state=failed").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.get("/jobs/abc/images").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn status_lists_the_100_most_recent_jobs_summarised_with_totals_over_all() {
    let server = start(None).await;
    let store = &server.store;
    // The oldest job: its images count in the totals though it is not listed.
    let old = store
        .submit_job(&JobSpec::user("old", Quality::Original), 1)
        .await
        .unwrap()
        .job()
        .id;
    store
        .insert_page(old, &[image(1), image(2)], None, 1)
        .await
        .unwrap();
    let mut recent = Vec::new();
    for n in 0..103 {
        let spec = JobSpec::user(&format!("user{n}"), Quality::Original);
        recent.push(store.submit_job(&spec, 1_000 + n).await.unwrap().job().id);
    }
    let ids: Vec<String> = (0..1000).map(|n| (7_000_000 + n).to_string()).collect();
    let (status, big) = server.post("/jobs", json!({"image_ids": ids})).await;
    assert_eq!(status, StatusCode::CREATED, "{big}");
    let (status, report) = server.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<i64> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(job_id)
        .collect();
    let mut want: Vec<i64> = recent[4..].to_vec();
    want.push(job_id(&big));
    assert_eq!(listed, want, "the 100 most recently updated, in id order");
    assert_eq!(report["jobs_total"], 105);
    assert_eq!(report["jobs_truncated"], true);
    assert_eq!(report["totals"]["discovered"], 2, "{report}");
    assert_eq!(report["totals"]["pending"], 2);
    let summary = &report["jobs"][99];
    assert_eq!(summary["image_ids"], json!({"count": 1000}));
    assert!(summary["sequence_ids"].is_null());
    assert!(
        report.to_string().len() < 150_000,
        "a summary, not the ids: {} bytes",
        report.to_string().len()
    );
    let (_, whole) = server.get(&format!("/jobs/{}", job_id(&big))).await;
    assert_eq!(whole["image_ids"].as_array().unwrap().len(), 1000);
    // Few jobs: all of them, not truncated.
    let small = start(None).await;
    small.post("/jobs", json!({"username": "solo"})).await;
    let (_, report) = small.get("/status").await;
    assert_eq!(
        (
            report["jobs_total"].clone(),
            report["jobs_truncated"].clone()
        ),
        (json!(1), json!(false))
    );
    small.stop().await;
    server.stop().await;
}
