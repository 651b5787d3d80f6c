//! `/status` latency at 1,000,000 image rows (SPEC: p99 <= 5 ms).
//!
//! Run: `cargo bench --bench api`. Builds a store of 10 jobs x 100,000 images
//! (pages of 2000 through `insert_page`, half of each job marked done), serves
//! the real router on loopback and times sequential keep-alive requests from
//! reqwest, so the figure includes HTTP, JSON and the store read.

use mapillary_downloader::api::{self, AppState};
use mapillary_downloader::model::{ImageMeta, Quality};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::stats::Stats;
use mapillary_downloader::store::{JobState, Store};
use mld_testkit::latency::percentile;
use mld_testkit::server::ServerTask;
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOBS: u64 = 10;
const IMAGES_PER_JOB: u64 = 100_000;
const PAGE: u64 = 2_000;
const WARMUP: usize = 200;
const SAMPLES: usize = 5_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn page(first: u64) -> Vec<ImageMeta> {
    (first..first + PAGE)
        .map(|id| ImageMeta {
            id: id.to_string(),
            captured_at: Some(1_600_000_000_000 + id as i64),
            sequence: Some(format!("seq{}", id / 500)),
            thumb_original_url: Some(format!("https://cdn.example/{id}.jpg")),
            ..Default::default()
        })
        .collect()
}

async fn time_requests(client: &reqwest::Client, url: &str) -> Vec<Duration> {
    for _ in 0..WARMUP {
        client.get(url).send().await.unwrap().bytes().await.unwrap();
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

fn report(what: &str, samples: &[Duration]) {
    println!(
        "{what:<28} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        percentile(samples, 0.50).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await.unwrap());

    let setup = Instant::now();
    for j in 0..JOBS {
        let job = store
            .submit_job(
                &JobSpec::user(&format!("user{j}"), Quality::Original),
                now_ms(),
            )
            .await
            .unwrap()
            .job()
            .clone();
        let pages = IMAGES_PER_JOB / PAGE;
        for p in 0..pages {
            let next = (p + 1 < pages).then_some("https://graph.example/images?after=x");
            store
                .insert_page(job.id, &page(p * PAGE), next, now_ms())
                .await
                .unwrap();
        }
        store
            .transition_job(job.id, JobState::ALL, JobState::Downloading, now_ms())
            .await
            .unwrap();
    }
    // Move a share of the rows through claim/complete so counters are mixed.
    let mut completed = 0u64;
    while completed < 20_000 {
        let claimed = store
            .claim(&"bench".into(), 500, Duration::from_secs(600), now_ms(), 0)
            .await
            .unwrap();
        for image in &claimed {
            store
                .complete(
                    &image.lease,
                    &mapillary_downloader::archive::ArchivedFile::loose("x.jpg", 100_000, None),
                    now_ms(),
                )
                .await
                .unwrap();
        }
        completed += claimed.len() as u64;
    }
    let jobs = store.list_jobs().await.unwrap();
    let rows: u64 = jobs.iter().map(|j| j.counts.discovered).sum();
    println!(
        "setup: {rows} image rows in {} jobs ({completed} done) in {:.1} s",
        jobs.len(),
        setup.elapsed().as_secs_f64()
    );

    let stats = Arc::new(Stats::new());
    for _ in 0..1000 {
        stats.record_image(100_000);
    }
    let state = AppState {
        stats,
        api_token: Some(mapillary_downloader::secret::Secret::new("bench-token")),
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
    let base = task.base_url();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        "Bearer bench-token".parse().unwrap(),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();

    let status = time_requests(&client, &format!("{base}/status")).await;
    report("GET /status", &status);
    report(
        "GET /jobs/5",
        &time_requests(&client, &format!("{base}/jobs/5")).await,
    );
    report(
        "GET /metrics",
        &time_requests(&client, &format!("{base}/metrics")).await,
    );
    report(
        "GET /healthz",
        &time_requests(&client, &format!("{base}/healthz")).await,
    );

    // The same with the operator page open (its poll every 2 s), 1,000 idle
    // connections and a slowloris client trickling a header byte every 100 ms.
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowloris = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut tcp = std::net::TcpStream::connect(addr).unwrap();
                let _ = tcp.write_all(b"GET /status HTTP/1.1\r\n");
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && tcp.write_all(b"X").is_ok()
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let page = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = client.get(format!("{base}/")).send().await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client.get(format!("{base}/status")).send().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let loaded = time_requests(&client, &format!("{base}/status")).await;
    report("GET /status, page + abuse", &loaded);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = page.await;
    let _ = slowloris.join();
    drop(idle);

    let p99 = percentile(&status, 0.99).max(percentile(&loaded, 0.99));
    println!(
        "target: /status p99 <= 5 ms at 1,000,000 rows -> {} ({:.3} ms)",
        if p99 <= Duration::from_millis(5) {
            "MET"
        } else {
            "MISSED"
        },
        p99.as_secs_f64() * 1e3
    );
    task.stop().await.unwrap();
    store.close().await;
    if p99 > Duration::from_millis(5) {
        eprintln!("target missed: /status p99");
        std::process::exit(1);
    }
}
