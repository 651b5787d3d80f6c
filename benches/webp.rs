//! WebP conversion: images per CPU-second of ours against `cwebp -q 75
//! -metadata all` run once per image (the Python peer's way), on the same
//! JPEGs, at 1024 and 2048 px (issue 24: ours at least cwebp's).
//!
//! Run: `cargo bench --bench webp` (needs Debian's `webp` package for
//! `cwebp`: `apt-get install -y webp`). Ours is timed as the thread's CPU
//! time of `webp::jpeg_to_webp` (decode, tags, encode, container); cwebp as
//! its processes' CPU time (`getrusage` of the children), start-up included,
//! since the peer pays it per image. `BENCH_WEBP_IMAGES` (12) distinct
//! photo-like JPEGs per size. Exits 1 when ours is slower.

mod common;

use anyhow::{Context, bail};
use common::cpu::{children_cpu, thread_cpu};
use mapillary_downloader::model::ImageMeta;

fn main() -> anyhow::Result<()> {
    let count: u64 = std::env::var("BENCH_WEBP_IMAGES")
        .ok()
        .map(|v| v.trim().parse())
        .transpose()
        .context("BENCH_WEBP_IMAGES is not a count")?
        .unwrap_or(12);
    let mut missed = false;
    for (width, height) in [(1024u32, 768u32), (2048, 1536)] {
        let jpegs: Vec<Vec<u8>> = (0..count).map(|i| photo_jpeg(width, height, i)).collect();
        let ours = ours_per_cpu_second(&jpegs)?;
        let theirs = cwebp_per_cpu_second(&jpegs)?;
        let met = ours >= theirs;
        missed |= !met;
        println!(
            "webp {width} px: ours {ours:>6.1} images/CPU-s, cwebp -q 75 -metadata all {theirs:>6.1} \
             images/CPU-s, ratio {:.2} -> {}",
            ours / theirs,
            if met { "MET" } else { "MISSED" }
        );
    }
    if missed {
        eprintln!("target missed: WebP images per CPU-second below cwebp's");
        std::process::exit(1);
    }
    Ok(())
}

/// A photo-like picture (sky, stripes, grain; different per `seed`) as the
/// quality-90 JPEG a CDN serves.
fn photo_jpeg(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let phase = seed as f32 * 0.37;
    let pixels = image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let sky = fy < 0.4 + 0.05 * (fx * 9.0 + phase).sin();
        let mut z = ((u64::from(x) << 32) | (u64::from(y) ^ (seed << 20)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z ^= z >> 29;
        let grain = (z % 24) as f32 - 12.0;
        let base = if sky {
            [110.0 + 80.0 * fy, 150.0 + 60.0 * fy, 220.0 - 30.0 * fy]
        } else {
            let stripes = 40.0 * ((fx * 60.0 + phase).sin() * (fy * 35.0).cos());
            [90.0 + stripes, 110.0 + 0.5 * stripes, 70.0 + 40.0 * fx]
        };
        image::Rgb(base.map(|c| (c + grain).clamp(0.0, 255.0) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&pixels)
        .expect("JPEG encodes");
    out
}

fn ours_per_cpu_second(jpegs: &[Vec<u8>]) -> anyhow::Result<f64> {
    let meta = |i: usize| ImageMeta {
        id: (1000 + i).to_string(),
        captured_at: Some(1_704_153_600_000 + i as i64 * 1000),
        make: Some("GoPro".into()),
        ..Default::default()
    };
    // One untimed pass: page faults of first use are no per-image cost.
    mapillary_downloader::archive::webp::jpeg_to_webp(&jpegs[0], &meta(0), 75.0)?;
    let start = thread_cpu();
    for (i, jpeg) in jpegs.iter().enumerate() {
        mapillary_downloader::archive::webp::jpeg_to_webp(jpeg, &meta(i), 75.0)?;
    }
    Ok(jpegs.len() as f64 / (thread_cpu() - start).as_secs_f64())
}

fn cwebp_per_cpu_second(jpegs: &[Vec<u8>]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut inputs = Vec::new();
    for (i, jpeg) in jpegs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.jpg"));
        std::fs::write(&path, jpeg)?;
        inputs.push(path);
    }
    let before = children_cpu();
    for input in &inputs {
        let status = std::process::Command::new("cwebp")
            .args(["-quiet", "-q", "75", "-metadata", "all"])
            .arg(input)
            .arg("-o")
            .arg(input.with_extension("webp"))
            .status()
            .context("running cwebp (apt-get install -y webp)")?;
        if !status.success() {
            bail!("cwebp failed on {}", input.display());
        }
    }
    Ok(jpegs.len() as f64 / (children_cpu() - before).as_secs_f64())
}
