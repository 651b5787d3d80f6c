//! Archive packaging figures (issue 13): WebP encoding, SHA-256, packing, and
//! a WebP job end to end.
//!
//! Run: `cargo bench --bench archive`. For the ratio to `cwebp`, install
//! Debian's `webp` package first (`apt-get install -y webp`); without it that
//! line says so and the rest still runs.
//!
//! 1. WebP: CPU ms per image (one thread, libwebp at quality 75) at 1024 and
//!    2048 px, and `cwebp -q 75` on the same JPEGs (its CPU time, from
//!    `getrusage` of the child), with the ratio and the output sizes.
//! 2. SHA-256: µs per 100 KB.
//! 3. Packing: one 10,000-image day (loose files of `BENCH_PACK_KB` KB, 80 by
//!    default) into its tar: MB/s, fsyncs included.
//! 4. A WebP job through the real daemon with 16 workers at 2048 px:
//!    images/s on this machine, the daemon's CPU ms per image and peak RSS.
//!
//! The source picture is `BENCH_PHOTO` (any JPEG, resized to each width), or
//! a synthetic photo-like image (smooth gradients, edges and grain). Noise
//! compresses worse than photos and flat colour better; the synthetic one
//! sits between.

mod common;

use anyhow::{Context, bail};
use common::cpu::{children_cpu, thread_cpu};
use mapillary_downloader::archive::checksum::sha256_hex;
use mapillary_downloader::archive::{ArchivedFile, FileKind, collection_path, image_path};
use mapillary_downloader::model::{ImageMeta, Packaging, Quality};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::{JobState, Store};
use mld_testkit::env;
use mld_testkit::fake::{self as fake_mapillary, FakeConfig, FakeMapillary};
use mld_testkit::process::{DaemonProcess, KeepLog};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

fn main() -> anyhow::Result<()> {
    let photo = source_photo()?;
    println!("source: {}", photo.0);
    webp_figures(&photo.1)?;
    sha_figures();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(packing_figures())?;
    runtime.block_on(daemon_figures(&photo.1))?;
    Ok(())
}

/// The picture every figure starts from, and where it came from.
fn source_photo() -> anyhow::Result<(String, image::DynamicImage)> {
    if let Some(path) = std::env::var_os("BENCH_PHOTO") {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
        let image = image::load_from_memory(&bytes).context("BENCH_PHOTO is not an image")?;
        return Ok((
            format!(
                "{} ({}x{})",
                Path::new(&path).display(),
                image.width(),
                image.height()
            ),
            image,
        ));
    }
    let (w, h) = (4000u32, 3000u32);
    let pixels = image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let sky = fy < 0.4 + 0.05 * (fx * 9.0).sin();
        let mut z = (u64::from(x) << 32 | u64::from(y)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z ^= z >> 29;
        let grain = (z % 24) as f32 - 12.0;
        let base = if sky {
            [110.0 + 80.0 * fy, 150.0 + 60.0 * fy, 220.0 - 30.0 * fy]
        } else {
            let stripes = 40.0 * ((fx * 60.0).sin() * (fy * 35.0).cos());
            [90.0 + stripes, 110.0 + 0.5 * stripes, 70.0 + 40.0 * fx]
        };
        image::Rgb(base.map(|c| (c + grain).clamp(0.0, 255.0) as u8))
    });
    Ok((
        "synthetic 4000x3000 photo-like image".into(),
        image::DynamicImage::ImageRgb8(pixels),
    ))
}

/// The photo at `width` px wide, as a quality-90 JPEG (what the CDN serves).
fn jpeg_at(photo: &image::DynamicImage, width: u32) -> Vec<u8> {
    let height = (u64::from(photo.height()) * u64::from(width) / u64::from(photo.width())) as u32;
    let resized = photo.resize_exact(width, height, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&resized.into_rgb8())
        .expect("JPEG encodes");
    out
}

fn meta(id: u64) -> ImageMeta {
    ImageMeta {
        id: id.to_string(),
        captured_at: Some(1_704_153_600_000 + id as i64 * 1000),
        sequence: Some(format!("seq{}", id % 40)),
        ..Default::default()
    }
}

fn webp_figures(photo: &image::DynamicImage) -> anyhow::Result<()> {
    println!("\n1. WebP, libwebp lossy q75, one thread (CPU time of this thread)");
    for width in [1024u32, 2048] {
        let jpeg = jpeg_at(photo, width);
        let rounds = if width == 1024 { 20 } else { 8 };
        let start = thread_cpu();
        let mut size = 0;
        for i in 0..rounds {
            let webp = mapillary_downloader::archive::webp::jpeg_to_webp(&jpeg, &meta(i), 75.0)?;
            size = webp.len();
        }
        let ours = (thread_cpu() - start).as_secs_f64() * 1000.0 / rounds as f64;
        println!(
            "   {width} px: {ours:.1} ms CPU per image (decode + encode + container), {} KB JPEG -> {} KB WebP",
            jpeg.len() / 1024,
            size / 1024
        );
        match cwebp(&jpeg, rounds)? {
            Some((ms, bytes)) => println!(
                "   {width} px: cwebp -q 75 {ms:.1} ms CPU per image, {} KB; ratio ours/cwebp {:.2}",
                bytes / 1024,
                ours / ms
            ),
            None => println!("   cwebp not found: `apt-get install -y webp` for the ratio"),
        }
    }
    Ok(())
}

/// `cwebp -q 75` on `jpeg`, `rounds` times: CPU ms per run and output size.
fn cwebp(jpeg: &[u8], rounds: u64) -> anyhow::Result<Option<(f64, usize)>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jpg");
    let output = dir.path().join("out.webp");
    std::fs::write(&input, jpeg)?;
    let before = children_cpu();
    for _ in 0..rounds {
        let status = match std::process::Command::new("cwebp")
            .args(["-quiet", "-q", "75", "-metadata", "exif"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .status()
        {
            Ok(status) => status,
            Err(_) => return Ok(None),
        };
        if !status.success() {
            bail!("cwebp failed");
        }
    }
    let ms = (children_cpu() - before).as_secs_f64() * 1000.0 / rounds as f64;
    Ok(Some((ms, std::fs::metadata(&output)?.len() as usize)))
}

fn sha_figures() {
    println!("\n2. SHA-256");
    let data = vec![0x5au8; 100 * 1024];
    let rounds = 2000;
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..rounds {
        last = sha256_hex(std::hint::black_box(&data));
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    println!(
        "   {us:.0} µs per 100 KB ({:.0} MB/s) [{}]",
        100.0 / 1024.0 / (us / 1e6),
        &last[..8]
    );
}

async fn packing_figures() -> anyhow::Result<()> {
    let images: u64 = std::env::var("BENCH_PACK_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let kb: usize = std::env::var("BENCH_PACK_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80);
    println!("\n3. Packing one day of {images} images of {kb} KB");
    let dir =
        tempfile::tempdir_in(std::env::var_os("BENCH_DATA_DIR").unwrap_or_else(|| ".".into()))?;
    let archive = dir.path().join("archive");
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await?);
    let mut spec = JobSpec::user("bench", Quality::Q1024);
    spec.package = Packaging::Tar;
    let job = store.submit_job(&spec, 1).await?.job().id;
    let metas: Vec<ImageMeta> = (0..images)
        .map(|i| ImageMeta {
            captured_at: Some(1_704_153_600_000 + i as i64 * 8),
            ..meta(i)
        })
        .collect();
    let pages: Vec<&[ImageMeta]> = metas.chunks(2000).collect();
    for (n, page) in pages.iter().enumerate() {
        let next = (n + 1 < pages.len()).then_some("more");
        store.insert_page(job, page, next, 2).await?;
    }
    store
        .transition_job(job, &[JobState::Queued], JobState::Downloading, 2)
        .await?;
    let owner: Arc<str> = "bench".into();
    let folder = collection_path(&archive, "mapillary-bench-1024")?;
    let mut total = 0u64;
    loop {
        let claimed = store
            .claim(&owner, 500, Duration::from_secs(600), 3, 0)
            .await?;
        if claimed.is_empty() {
            break;
        }
        for image in claimed {
            let path = image_path(&folder, &image.meta, FileKind::Webp)?;
            let mut bytes = vec![0u8; kb * 1024];
            bytes[..image.image_id.len()].copy_from_slice(image.image_id.as_bytes());
            std::fs::create_dir_all(path.parent().unwrap_or(&path))?;
            std::fs::write(&path, &bytes)?;
            total += bytes.len() as u64;
            let file = ArchivedFile::loose(&path, bytes.len() as u64, Some(sha256_hex(&bytes)));
            store.complete(&image.lease, &file, 3).await?;
        }
    }
    // Loose files fresh in the page cache would flatter the read side.
    let _ = std::process::Command::new("sync").status();
    let lease = store
        .take_collection_task(
            "mapillary-bench-1024",
            &std::sync::Arc::from("bench"),
            Duration::from_secs(3600),
            mapillary_downloader::clock::now_ms(),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the collection's lease is held"))?;
    let start = Instant::now();
    let report = mapillary_downloader::package::pack_collection(
        &store,
        &mapillary_downloader::archive::Archive::disk(&archive, 0),
        &lease,
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "   {} tar(s), {} members, {:.0} MB in {secs:.2} s: {:.0} MB/s (read, hash, write, fsync, remove loose files)",
        report.tars.len(),
        report.members,
        total as f64 / 1e6,
        total as f64 / 1e6 / secs
    );
    store.close().await;
    Ok(())
}

async fn daemon_figures(photo: &image::DynamicImage) -> anyhow::Result<()> {
    let images: u64 = std::env::var("BENCH_WEBP_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    println!(
        "\n4. A WebP job through the daemon: {images} images at 2048 px, 16 workers, CDN latency 50 ms"
    );
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("webby", images, 77);
    let body = jpeg_at(photo, 2048);
    for image in fake.images("webby") {
        fake.set_body(&image.id, body.clone());
    }
    let dir =
        tempfile::tempdir_in(std::env::var_os("BENCH_DATA_DIR").unwrap_or_else(|| ".".into()))?;
    let env = env::daemon_env(fake.api_url().as_str(), fake_mapillary::DEFAULT_TOKEN);
    let daemon = DaemonProcess::spawn_keeping(BINARY, dir.path(), 16, &env, KeepLog::Tail(100))?;
    let cpu_before = daemon.cpu_time()?;
    let start = Instant::now();
    let (_, job) = daemon
        .api()
        .post_job(serde_json::json!({"username": "webby", "quality": "2048", "format": "webp"}))
        .await;
    let id = job["id"].as_i64().context("no job id")?;
    let done = daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(1800))
        .await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = (daemon.cpu_time()? - cpu_before).as_secs_f64();
    let memory = daemon.memory()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "   {} done in {secs:.1} s: {:.1} images/s on {cores} cores; daemon CPU {:.1} ms per image; peak RSS {:.0} MiB",
        done["counts"]["done"],
        images as f64 / secs,
        cpu * 1000.0 / images as f64,
        memory.hwm_kib as f64 / 1024.0
    );
    Ok(())
}
