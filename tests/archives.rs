//! Archives for the Internet Archive, end to end against the fake: WebP and
//! JPEG jobs of one user side by side, tars per capture date read back with
//! GNU tar and checked member by member, re-packing the same input into the
//! same bytes, re-syncs into `<date>.1.tar`, item files, `verify` and its
//! repair, a full disk while packing, and the Internet Archive check.
//! kill -9 during packing lives in `crash_resume.rs`.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::archive_check::{check_collection, collection_dir, image_path, member_name};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Quality};
use mld_testkit::tar_check::{self, TarEntry, files_under};
use mld_testkit::tmpfs::{Tmpfs, df};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
const LONG: Duration = Duration::from_secs(180);

fn job_id(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

fn webp_collection(archive: &Path, user: &str, q: Quality) -> PathBuf {
    archive.join(format!("mapillary-{user}-{}-webp", q.as_str()))
}

fn utc_date(image: &FakeImage) -> String {
    image
        .captured_at
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown-date".into())
}

/// `exiftool -j -n -G1` of a file: numbers raw, keys `Group:Tag`.
fn exiftool(bytes: &[u8], ext: &str) -> Map<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("x.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("exiftool")
        .args(["-j", "-n", "-G1"])
        .arg(&path)
        .output()
        .expect("exiftool is installed (libimage-exiftool-perl; `bash scripts/test` installs it)");
    assert!(output.status.success(), "exiftool failed on a .{ext}");
    let mut list: Vec<Map<String, Value>> = serde_json::from_slice(&output.stdout).unwrap();
    list.pop().unwrap()
}

/// The metadata tags of a file that must match between a JPEG and a WebP
/// of the same image: EXIF (IFD0, ExifIFD, GPS) and the panorama XMP.
fn metadata_tags(tags: &Map<String, Value>) -> BTreeMap<String, Value> {
    tags.iter()
        .filter(|(k, _)| {
            ["IFD0:", "ExifIFD:", "GPS:", "XMP-GPano:"]
                .iter()
                .any(|g| k.starts_with(g))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The lines of a collection's `metadata.jsonl.gz`, as `gzip -dc` reads them.
fn gz_lines(collection: &Path) -> Vec<Value> {
    tar_check::gunzip(&collection.join("metadata.jsonl.gz"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("metadata line is JSON"))
        .collect()
}

/// Checks a packed collection member by member: the tars are exactly one
/// per date of `expected` (names given by `tar_of`), each member sorted,
/// regular, 0644, owned by 0/0 without names, mtime the capture second,
/// and its bytes those the metadata line's `sha256` and `bytes` describe.
/// Returns every member's bytes by image id.
fn check_packed(
    collection: &Path,
    expected: &[FakeImage],
    ext_of: impl Fn(&FakeImage) -> &'static str,
) -> HashMap<String, Vec<u8>> {
    let lines = gz_lines(collection);
    assert_eq!(lines.len(), expected.len(), "metadata.jsonl.gz lines");
    let by_id: HashMap<String, &Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l))
        .collect();
    let order: Vec<i64> = lines
        .iter()
        .map(|l| l["captured_at"].as_i64().unwrap_or(i64::MAX))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "sorted by capture time"
    );
    let mut members = HashMap::new();
    let tars: BTreeSet<String> = files_under(collection)
        .into_iter()
        .filter(|f| f.ends_with(".tar"))
        .collect();
    for tar in &tars {
        let listing: Vec<TarEntry> = tar_check::list(&collection.join(tar));
        let names: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{tar}: members in path order");
        let contents = tar_check::extract(&collection.join(tar));
        for entry in &listing {
            let id = Path::new(&entry.name)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let image = expected
                .iter()
                .find(|m| m.id == id)
                .unwrap_or_else(|| panic!("{tar} holds an unexpected {}", entry.name));
            let date = utc_date(image);
            assert!(tar.starts_with(&date), "{} is in {tar}", entry.name);
            assert_eq!(entry.name, member_name(image, ext_of(image)), "{tar}");
            assert_eq!(entry.mode, "-rw-r--r--", "{tar}: {}", entry.name);
            assert_eq!(entry.owner, "0/0", "{tar}: uid/gid 0, no names");
            let mtime = image.captured_at.map_or(0, |ms| ms.div_euclid(1000));
            assert_eq!(entry.mtime, mtime, "{tar}: {} mtime", entry.name);
            let data = &contents[&entry.name];
            let line = by_id[&id];
            assert_eq!(line["bytes"].as_u64(), Some(data.len() as u64), "{id}");
            assert_eq!(
                line["sha256"].as_str(),
                Some(tar_check::sha256sum(data).as_str()),
                "{id}: SHA-256 on its metadata line"
            );
            assert!(
                members.insert(id.clone(), data.clone()).is_none(),
                "{id} packed twice"
            );
        }
    }
    assert_eq!(members.len(), expected.len(), "every image packed once");
    let dates: BTreeSet<String> = expected.iter().map(utc_date).collect();
    let first_tars: BTreeSet<String> = tars
        .iter()
        .filter(|t| t.matches('.').count() == 1)
        .cloned()
        .collect();
    let wanted: BTreeSet<String> = dates.iter().map(|d| format!("{d}.tar")).collect();
    assert_eq!(first_tars, wanted, "one <date>.tar per capture date");
    members
}

/// A packed collection holds its tars and item files, and nothing loose.
fn assert_only_item_files(collection: &Path) {
    for file in files_under(collection) {
        let item_file = file.ends_with(".tar")
            || file == "metadata.jsonl.gz"
            || file == "__ia_thumb__.jpg"
            || file.starts_with(".meta/");
        assert!(item_file, "{} left in a packed collection", file);
    }
    for entry in std::fs::read_dir(collection).unwrap().flatten() {
        if entry.path().is_dir() {
            assert_eq!(
                entry.file_name(),
                ".meta",
                "a folder left in a packed collection"
            );
        }
    }
}

fn read_tag(collection: &Path, tag: &str, n: usize) -> String {
    std::fs::read_to_string(collection.join(".meta").join(tag).join(n.to_string()))
        .unwrap_or_else(|e| panic!(".meta/{tag}/{n}: {e}"))
}

/// A JPEG wider than WebP allows (16,383 px), small in bytes.
fn too_wide_jpeg() -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(16_400, 8, |x, y| {
        image::Rgb([(x % 251) as u8, (y * 30) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// The item thumbnail comes from the first image that can serve: a first
/// image too large to decode in memory gives way to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_image_too_large_to_decode_gives_the_thumbnail_to_the_next() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("tia", 6, 28);
    let first = fake
        .images("tia")
        .into_iter()
        .filter(|m| m.captured_at.is_some())
        .min_by_key(|m| m.captured_at)
        .unwrap();
    // Too large for the image crate's default decode limit (512 MiB).
    fake.set_body(&first.id, mld_testkit::jpeg::claiming(30_000, 20_000));
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), dir.path(), 2, &[]),
        DEFAULT_TOKEN,
    )
    .await;
    let (_, job) = daemon
        .post_job(json!({"username": "tia", "quality": "256", "package": "tar"}))
        .await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 6, "{done}");
    let tias = collection_dir(daemon.archive_dir(), "tia", Quality::Q256);
    let thumb =
        image::load_from_memory(&std::fs::read(tias.join("__ia_thumb__.jpg")).unwrap()).unwrap();
    assert!(thumb.width() <= 256 && thumb.height() <= 256);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webp_and_jpeg_jobs_side_by_side_then_packed_for_the_internet_archive() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("wendy", 130, 21);
    let first = fake.images("wendy")[0].clone();
    let wide = FakeImage {
        id: "990000000000001".into(),
        ..first.clone()
    };
    fake.add_image("wendy", wide.clone());
    // It carries the fake's marker, so the JPEG job's oracle knows it.
    let marked = mld_testkit::jpeg::insert_segment(
        &too_wide_jpeg(),
        1,
        0xFE,
        &fake.jpeg_marker(&wide.id, Quality::Q1024),
    );
    fake.set_body(&wide.id, marked);
    let expected = fake.images("wendy");
    assert!(
        expected.iter().any(|m| m.is_pano == Some(true)),
        "the fixture has panoramas"
    );
    let q = Quality::Q1024;

    let run = |data: PathBuf| {
        let fake = &fake;
        async move {
            let settings = test_settings(fake.api_url().as_str(), &data, 8, &[]);
            let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
            let (status, webp) = daemon
                .post_job(json!({"username": "wendy", "quality": "1024", "format": "webp", "package": "tar"}))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{webp}");
            let (status, jpeg) = daemon
                .post_job(json!({"username": "wendy", "quality": "1024"}))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{jpeg}");
            let webp = daemon.wait_for_state(job_id(&webp), &["done"], LONG).await;
            let jpeg = daemon.wait_for_state(job_id(&jpeg), &["done"], LONG).await;
            daemon.stop().await;
            (webp, jpeg)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (webp_job, jpeg_job) = run(dir.path().join("a")).await;
    let archive = dir.path().join("a/archive");
    assert_eq!(webp_job["counts"]["done"], 131, "{webp_job}");
    assert_eq!(webp_job["counts"]["failed"], 0, "{webp_job}");
    assert_eq!(
        webp_job["counts"]["kept_jpeg"], 1,
        "the too-wide image: {webp_job}"
    );
    assert_eq!(webp_job["format"], "webp");
    assert_eq!(webp_job["package"], "tar");
    assert_eq!(jpeg_job["counts"]["kept_jpeg"], 0, "{jpeg_job}");

    // The JPEG job: loose files, as always, each line with its checksum.
    check_collection(&archive, "wendy", q, &expected, |id| {
        fake.jpeg_marker(id, q)
    });
    let jpegs = collection_dir(&archive, "wendy", q);
    let plain = std::fs::read_to_string(jpegs.join("metadata.jsonl")).unwrap();
    for line in plain.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let image = expected.iter().find(|m| m.id == line["id"]).unwrap();
        let bytes = std::fs::read(image_path(&jpegs, image)).unwrap();
        assert_eq!(
            line["sha256"].as_str(),
            Some(tar_check::sha256sum(&bytes).as_str())
        );
        assert_eq!(line["bytes"].as_u64(), Some(bytes.len() as u64));
    }
    assert!(
        !jpegs.join(".meta").exists(),
        "no item files for an unpacked job"
    );

    // The WebP job: packed, every member checked.
    let webps = webp_collection(&archive, "wendy", q);
    assert_only_item_files(&webps);
    let ext_of = |m: &FakeImage| if m.id == wide.id { "jpg" } else { "webp" };
    let members = check_packed(&webps, &expected, ext_of);
    for image in &expected {
        let data = &members[&image.id];
        let served = image::load_from_memory(&fake.expected_body(&image.id, q)).unwrap();
        let jpeg = std::fs::read(image_path(&jpegs, image)).unwrap();
        if image.id == wide.id {
            assert_eq!(data, &jpeg, "the too-wide image is kept as our tagged JPEG");
            continue;
        }
        assert!(
            data.starts_with(b"RIFF") && &data[8..12] == b"WEBP",
            "{}",
            image.id
        );
        let decoded = image::load_from_memory_with_format(data, image::ImageFormat::WebP)
            .unwrap_or_else(|e| panic!("{}: {e}", image.id));
        assert_eq!(
            (decoded.width(), decoded.height()),
            (served.width(), served.height()),
            "{}: pixel size kept",
            image.id
        );
        // Every EXIF field and the GPano XMP, as ExifTool reads them, are
        // those of the JPEG job's file for the same image.
        let from_webp = exiftool(data, "webp");
        let from_jpeg = exiftool(&jpeg, "jpg");
        assert!(
            !from_webp.contains_key("ExifTool:Warning"),
            "{}: {from_webp:#?}",
            image.id
        );
        let (w, j) = (metadata_tags(&from_webp), metadata_tags(&from_jpeg));
        assert!(w.contains_key("GPS:GPSLatitude"), "{w:#?}");
        assert_eq!(
            w.contains_key("ExifIFD:DateTimeOriginal"),
            image.captured_at.is_some(),
            "{w:#?}"
        );
        assert_eq!(w, j, "{}: WebP and JPEG metadata", image.id);
        if image.is_pano == Some(true) {
            assert_eq!(
                w["XMP-GPano:ProjectionType"], "equirectangular",
                "{}",
                image.id
            );
        }
    }

    // Item files.
    let thumb =
        image::load_from_memory(&std::fs::read(webps.join("__ia_thumb__.jpg")).unwrap()).unwrap();
    assert!(thumb.width() <= 256 && thumb.height() <= 256);
    assert_eq!(read_tag(&webps, "title", 0), "Mapillary images by wendy");
    let description = read_tag(&webps, "description", 0);
    assert!(
        description.contains("Contains 131 images in 1024px resolution"),
        "{description}"
    );
    assert!(
        description.contains("recompressed with WebP"),
        "{description}"
    );
    assert_eq!(read_tag(&webps, "creator", 0), "wendy");
    assert_eq!(read_tag(&webps, "mediatype", 0), "data");
    assert_eq!(read_tag(&webps, "collection", 0), "mapillary-images");
    assert_eq!(read_tag(&webps, "subject", 4), "photography");
    assert_eq!(
        read_tag(&webps, "source", 0),
        "https://www.mapillary.com/app/user/wendy"
    );
    let first_date = expected.iter().filter_map(|m| m.captured_at).min().unwrap();
    let first_date = chrono::DateTime::from_timestamp_millis(first_date)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(read_tag(&webps, "date", 0), first_date);

    // Packing the same input again, on another data dir, gives the same bytes.
    let (again, _) = run(dir.path().join("b")).await;
    assert_eq!(again["counts"]["done"], 131);
    let webps_again = webp_collection(&dir.path().join("b/archive"), "wendy", q);
    for file in files_under(&webps) {
        assert_eq!(
            std::fs::read(webps.join(&file)).unwrap(),
            std::fs::read(webps_again.join(&file)).unwrap(),
            "{file} differs between two runs over the same input"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_packs_new_images_of_a_packed_date_into_the_next_tar() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("rose", 120, 22);
    let q = Quality::Q256;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let spec = json!({"username": "rose", "quality": "256", "package": "tar"});
    let (_, job) = daemon.post_job(spec.clone()).await;
    let id = job_id(&job);
    daemon.wait_for_state(id, &["done"], LONG).await;
    let collection = collection_dir(daemon.archive_dir(), "rose", q);
    let before: HashMap<String, Vec<u8>> = files_under(&collection)
        .into_iter()
        .filter(|f| f.ends_with(".tar"))
        .map(|f| (f.clone(), std::fs::read(collection.join(&f)).unwrap()))
        .collect();
    let old = fake.images("rose");
    assert_eq!(
        before.len(),
        old.iter().map(utc_date).collect::<BTreeSet<_>>().len()
    );

    // Five more on the first date, two on a new date.
    let first_date = utc_date(&old[0]);
    let new_day = old[0].captured_at.unwrap() - 10 * 86_400_000;
    let mut added = Vec::new();
    for k in 0..7u64 {
        let captured_at = if k < 5 {
            old[0].captured_at.unwrap() + 1000 * k as i64 + 1
        } else {
            new_day + k as i64
        };
        let image = FakeImage {
            id: format!("98000000000000{k}"),
            captured_at: Some(captured_at),
            ..old[1].clone()
        };
        fake.add_image("rose", image.clone());
        added.push(image);
    }
    let (status, again) = daemon.post_job(spec).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a re-sync of the finished job: {again}"
    );
    let job = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(job["counts"]["done"], 127, "{job}");

    // The old tars are untouched, byte for byte.
    for (name, bytes) in &before {
        assert_eq!(
            &std::fs::read(collection.join(name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }
    let next = format!("{first_date}.1.tar");
    let listing = tar_check::list(&collection.join(&next));
    let names: BTreeSet<String> = listing.iter().map(|e| e.name.clone()).collect();
    let want: BTreeSet<String> = added[..5].iter().map(|m| member_name(m, "jpg")).collect();
    assert_eq!(names, want, "{next} holds only the new images of its date");
    let new_date = utc_date(&added[5]);
    let listing = tar_check::list(&collection.join(format!("{new_date}.tar")));
    assert_eq!(listing.len(), 2);
    let all = fake.images("rose");
    check_packed(&collection, &all, |_| "jpg");
    assert_only_item_files(&collection);
    assert!(read_tag(&collection, "description", 0).contains("Contains 127 images"));
    for image in &old {
        assert_eq!(fake.cdn_hits(&image.id), 1, "{} downloaded again", image.id);
    }

    // Another job over the same collection takes the packed copies as they
    // are: nothing downloaded, nothing loose, and `verify` finds its images
    // in the tars.
    let hits = fake.cdn_hits_total();
    let (status, window) = daemon
        .post_job(json!({"username": "rose", "quality": "256", "start_captured_at": "2000-01-01"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{window}");
    let window = daemon
        .wait_for_state(job_id(&window), &["done"], LONG)
        .await;
    assert_eq!(window["counts"]["done"], 127, "{window}");
    assert_eq!(
        fake.cdn_hits_total(),
        hits,
        "packed copies are adopted, not downloaded"
    );
    assert_only_item_files(&collection);
    let data = daemon.archive_dir().parent().unwrap().to_path_buf();
    let (code, report) = verify_json(&data, &["--job", &job_id(&window).to_string()]);
    assert_eq!((code, report["ok"].as_u64()), (0, Some(127)), "{report:#}");
    daemon.stop().await;
}

/// `mapillary-downloader verify` as a user runs it: exit code and output.
fn verify(data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BINARY)
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_json(data: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = verify(data, &all);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report)
}

/// A data dir moved elsewhere (or opened under another spelling) keeps its
/// archive: stored paths are rebased at open, so `verify` passes where it
/// once called every file missing, and a tar job packs the loose files an
/// earlier job left in the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_data_dir_verifies_clean_and_packs_what_it_holds() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("moe", 50, 25);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let settings = test_settings(fake.api_url().as_str(), &first, 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, loose) = daemon
        .post_job(json!({"username": "moe", "quality": "256"}))
        .await;
    daemon.wait_for_state(job_id(&loose), &["done"], LONG).await;
    daemon.stop().await;

    let moved = dir.path().join("moved");
    std::fs::rename(&first, &moved).unwrap();
    let (code, report) = verify_json(&moved, &[]);
    assert_eq!(
        (code, report["checked"].as_u64(), report["ok"].as_u64()),
        (0, Some(50), Some(50)),
        "{report:#}"
    );

    let settings = test_settings(fake.api_url().as_str(), &moved, 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, packed) = daemon
        .post_job(json!({"username": "moe", "quality": "256", "package": "tar"}))
        .await;
    let done = daemon
        .wait_for_state(job_id(&packed), &["done"], LONG)
        .await;
    assert_eq!(done["counts"]["done"], 50, "{done}");
    assert!(done["last_error"].is_null(), "{done}");
    daemon.stop().await;
    let moes = collection_dir(&moved.join("archive"), "moe", Quality::Q256);
    let files = files_under(&moes);
    assert!(files.iter().any(|f| f.ends_with(".tar")), "{files:?}");
    let loose: Vec<_> = files
        .iter()
        .filter(|f| f.contains('/') && f.ends_with(".jpg"))
        .collect();
    assert!(loose.is_empty(), "loose files left: {loose:?}");
    let (code, report) = verify_json(&moved, &[]);
    assert_eq!((code, report["ok"].as_u64()), (0, Some(100)), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_deleted_flipped_truncated_and_replaced_files_and_repair_heals_them() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("vera", 120, 23);
    fake.add_user("lou", 40, 24);
    let q = Quality::Q256;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let settings = test_settings(fake.api_url().as_str(), &data, 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, packed) = daemon
        .post_job(json!({"username": "vera", "quality": "256", "package": "tar"}))
        .await;
    let (_, loose) = daemon
        .post_job(json!({"username": "lou", "quality": "256"}))
        .await;
    daemon
        .wait_for_state(job_id(&packed), &["done"], LONG)
        .await;
    daemon.wait_for_state(job_id(&loose), &["done"], LONG).await;

    let (code, report) = verify_json(&data, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (report["checked"].as_u64(), report["ok"].as_u64()),
        (Some(160), Some(160))
    );
    let (code, report) = verify_json(&data, &["--job", &job_id(&loose).to_string()]);
    assert_eq!(
        (code, report["checked"].as_u64()),
        (0, Some(40)),
        "{report}"
    );

    // Images archived before checksums existed get one computed, stored
    // by `--repair` only (without it the database is read-only).
    let db = data.join("mapillary.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE images SET sha256 = NULL WHERE job_id = ?")
        .bind(job_id(&loose))
        .execute(&pool)
        .await
        .unwrap();
    let unhashed = || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM images WHERE sha256 IS NULL")
            .fetch_one(&pool)
    };
    for (args, left) in [(&[][..], 40), (&["--repair"][..], 0)] {
        let (code, report) = verify_json(&data, args);
        assert_eq!((code, report["hashed"].as_u64()), (0, Some(40)), "{report}");
        assert_eq!(unhashed().await.unwrap(), left, "after verify {args:?}");
    }

    // Damage: a deleted file, a flipped byte, a file replaced by another
    // image's, and a tar cut in half.
    let lou = fake.images("lou");
    let lous = collection_dir(&data.join("archive"), "lou", q);
    let path = |i: usize| image_path(&lous, &lou[i]);
    std::fs::remove_file(path(0)).unwrap();
    let mut flipped = std::fs::read(path(1)).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(path(1), flipped).unwrap();
    std::fs::copy(path(3), path(2)).unwrap();
    let veras = collection_dir(&data.join("archive"), "vera", q);
    let tar = files_under(&veras)
        .into_iter()
        .find(|f| f.ends_with(".tar"))
        .unwrap();
    let tar_path = veras.join(&tar);
    let whole = std::fs::read(&tar_path).unwrap();
    std::fs::write(&tar_path, &whole[..whole.len() / 2]).unwrap();
    let in_tar = tar_check::list(&{
        let copy = dir.path().join("whole.tar");
        std::fs::write(&copy, &whole).unwrap();
        copy
    })
    .len();

    let (code, out, _) = verify(&data, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("missing:") && out.contains("corrupt:"),
        "{out}"
    );
    assert!(
        out.contains(&path(0).display().to_string()),
        "the deleted file is named: {out}"
    );
    assert!(out.contains("--repair"), "{out}");
    let (code, report) = verify_json(&data, &["--repair"]);
    assert_eq!(code, 1, "{report}");
    let problems = report["problems"].as_array().unwrap();
    let find = |needle: &str| {
        problems
            .iter()
            .find(|p| p["location"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no problem at {needle}: {report:#}"))
    };
    assert_eq!(find(&path(0).display().to_string())["kind"], "missing");
    // The damaged files were moved into quarantine, not deleted.
    assert_eq!(report["quarantined"], 2, "{report:#}");
    for i in [1, 2] {
        let relative = path(i)
            .strip_prefix(data.join("archive"))
            .unwrap()
            .to_path_buf();
        assert!(
            data.join("quarantine").join(relative).is_file(),
            "image {i}"
        );
    }
    assert_eq!(find(&path(1).display().to_string())["kind"], "corrupt");
    assert_eq!(find(&path(2).display().to_string())["kind"], "corrupt");
    assert_eq!(report["corrupt"], 2, "{report:#}");
    let lost = report["missing"].as_u64().unwrap() - 1;
    assert!(
        lost >= 1 && (lost as usize) < in_tar,
        "{lost} of {in_tar} members lost in the cut tar"
    );
    assert_eq!(
        report["requeued"].as_u64(),
        Some(report["missing"].as_u64().unwrap() + 2),
        "{report:#}"
    );

    // The running daemon fetches them again; the tar job packs them anew.
    daemon.wait_for_state(job_id(&loose), &["done"], LONG).await;
    let vera_job = daemon
        .wait_for_state(job_id(&packed), &["done"], LONG)
        .await;
    assert_eq!(vera_job["counts"]["done"], 120, "{vera_job}");
    let (code, report) = verify_json(&data, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], 160);
    for image in &lou[..3] {
        assert_eq!(fake.cdn_hits(&image.id), 2, "{} fetched again", image.id);
    }
    assert!(
        veras.join(tar.replace(".tar", ".1.tar")).exists(),
        "the repaired members went into the next tar of their date"
    );
    check_collection(&data.join("archive"), "lou", q, &lou, |id| {
        fake.jpeg_marker(id, q)
    });

    // Usage errors exit 2 and change nothing.
    let (code, _, err) = verify(&data, &["--job", "999"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = verify(&dir.path().join("nowhere"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no database"), "{err}");
    pool.close().await;
    daemon.stop().await;
}

/// Flips a byte in the middle of the first `.jpg` member's data of `tar`.
fn damage_first_member(tar: &Path) {
    let mut bytes = std::fs::read(tar).unwrap();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_text = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap_or(0) as usize;
        if name.ends_with(".jpg") {
            bytes[at + 512 + size / 2] ^= 0x40;
            std::fs::write(tar, bytes).unwrap();
            return;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("no .jpg member in {}", tar.display());
}

/// Two jobs whose rows share one tar member: `verify --repair` sends both
/// back (one left done would hand the damaged member to the other as its
/// copy, for ever), and the run that follows makes verify pass. A cancelled
/// job's damaged file is reported, neither deleted nor re-queued (it would
/// wait behind its cancelled job for ever, and the next verify pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_heals_a_member_two_jobs_share_and_leaves_a_cancelled_jobs_file_alone() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("sal", 30, 26);
    fake.add_user("cyd", 10, 27);
    let q = Quality::Q256;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), &data, 4, &[]),
        DEFAULT_TOKEN,
    )
    .await;
    let (_, a) = daemon
        .post_job(json!({"username": "sal", "quality": "256", "package": "tar"}))
        .await;
    daemon.wait_for_state(job_id(&a), &["done"], LONG).await;
    let (_, b) = daemon
        .post_job(
            json!({"username": "sal", "quality": "256", "package": "tar",
                          "end_captured_at": "2100-01-01"}),
        )
        .await;
    let (_, c) = daemon
        .post_job(json!({"username": "cyd", "quality": "256"}))
        .await;
    daemon.wait_for_state(job_id(&b), &["done"], LONG).await;
    daemon.wait_for_state(job_id(&c), &["done"], LONG).await;
    let (status, _) = daemon
        .request(Method::DELETE, &format!("/jobs/{}", job_id(&c)), None)
        .await;
    assert!(status.is_success(), "{status}");
    daemon.stop().await;

    let sals = collection_dir(&data.join("archive"), "sal", q);
    let tars: Vec<String> = files_under(&sals)
        .into_iter()
        .filter(|f| f.ends_with(".tar"))
        .collect();
    damage_first_member(&sals.join(&tars[0]));
    let cyd = fake.images("cyd");
    let cyd_file = image_path(&collection_dir(&data.join("archive"), "cyd", q), &cyd[0]);
    let mut bytes = std::fs::read(&cyd_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&cyd_file, &bytes).unwrap();

    let (code, report) = verify_json(&data, &["--repair"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["corrupt"], 2, "one per damaged copy: {report:#}");
    assert_eq!(report["requeued"], 2, "both rows of the member: {report:#}");
    assert_eq!(std::fs::read(&cyd_file).unwrap(), bytes, "kept as it is");
    let cancelled = format!("not repaired: job {} is cancelled", job_id(&c));
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&cancelled)),
        "{report:#}"
    );

    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), &data, 4, &[]),
        DEFAULT_TOKEN,
    )
    .await;
    for job in [&a, &b] {
        let done = daemon.wait_for_state(job_id(job), &["done"], LONG).await;
        assert_eq!(done["counts"]["done"], 30, "{done}");
    }
    daemon.stop().await;
    for job in [&a, &b] {
        let (code, report) = verify_json(&data, &["--job", &job_id(job).to_string()]);
        assert_eq!((code, report["ok"].as_u64()), (0, Some(30)), "{report:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_while_packing_pauses_with_a_clear_reason_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mount = Tmpfs::mount(&data.join("archive"), "64m");
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("pam", 120, 25);
    let q = Quality::Original;
    let settings = test_settings(
        fake.api_url().as_str(),
        &data,
        4,
        &[("MLD__STORAGE__MIN_FREE_MIB", "0")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    // First the loose files (a plain job), then too little room for a tar.
    let (_, plain) = daemon.post_job(json!({"username": "pam"})).await;
    daemon.wait_for_state(job_id(&plain), &["done"], LONG).await;
    let (_, used) = df(&mount.0);
    mount.resize(&(used + 512 * 1024).to_string());
    let (_, job) = daemon
        .post_job(json!({"username": "pam", "package": "tar"}))
        .await;
    let id = job_id(&job);
    let job = daemon.wait_for_state(id, &["paused"], LONG).await;
    assert_eq!(job["pause_reason"], "disk_full", "{job}");
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot pack") && error.contains("No space left on device"),
        "{job}"
    );
    let collection = collection_dir(daemon.archive_dir(), "pam", q);
    assert!(
        mld_testkit::archive_check::part_files(&data).is_empty(),
        "no half tar left"
    );
    let images = fake.images("pam");
    for image in &images {
        assert!(image_path(&collection, image).exists(), "{} lost", image.id);
    }

    mount.resize("256m");
    let job = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(job["counts"]["done"], 120, "resumed by itself: {job}");
    check_packed(&collection, &images, |_| "jpg");
    assert_only_item_files(&collection);
    for image in &images {
        assert_eq!(fake.cdn_hits(&image.id), 1, "{} downloaded twice", image.id);
    }
    daemon.stop().await;
}

/// A stand-in for archive.org's metadata API: `known` items exist.
async fn fake_internet_archive(known: &'static [&'static str]) -> String {
    use axum::extract::Path as AxumPath;
    let app = axum::Router::new().route(
        "/metadata/{id}",
        axum::routing::get(move |AxumPath(id): AxumPath<String>| async move {
            if known.contains(&id.as_str()) {
                axum::Json(
                    json!({"metadata": {"identifier": id, "mediatype": "data"}, "files": []}),
                )
            } else {
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_username_job_already_on_the_internet_archive_ends_at_once() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ann", 30, 26);
    fake.add_user("ben", 30, 27);
    let ia = fake_internet_archive(&["mapillary-ann-1024-webp"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__ARCHIVE__SKIP_IF_ON_IA", "true"),
            ("MLD__ARCHIVE__IA_URL", &ia),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, ann) = daemon
        .post_job(json!({"username": "ann", "quality": "1024", "format": "webp"}))
        .await;
    let (_, ben) = daemon
        .post_job(json!({"username": "ben", "quality": "1024", "format": "webp"}))
        .await;
    let ann = daemon.wait_for_state(job_id(&ann), &["done"], LONG).await;
    assert_eq!(ann["counts"]["discovered"], 0, "{ann}");
    let note = ann["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("mapillary-ann-1024-webp is already on the Internet Archive")
            && note.contains(&format!("{ia}/details/mapillary-ann-1024-webp")),
        "{ann}"
    );
    let ben = daemon.wait_for_state(job_id(&ben), &["done"], LONG).await;
    assert_eq!(
        ben["counts"]["done"], 30,
        "not on the archive: downloaded: {ben}"
    );
    assert!(fake.images("ann").iter().all(|m| fake.cdn_hits(&m.id) == 0));
    daemon.stop().await;

    // archive.org unreachable (a closed port), or hanging (it accepts and
    // never answers): the job goes ahead, delayed by no more than the
    // check's 10 s timeout.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (hanging, accepted) = hanging_server().await;
    let mut took = Vec::new();
    for ia in [&closed, &hanging] {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(
            fake.api_url().as_str(),
            dir.path(),
            4,
            &[
                ("MLD__ARCHIVE__SKIP_IF_ON_IA", "true"),
                ("MLD__ARCHIVE__IA_URL", ia),
            ],
        );
        let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
        let started = std::time::Instant::now();
        let (_, ann) = daemon
            .post_job(json!({"username": "ann", "quality": "256"}))
            .await;
        let ann = daemon.wait_for_state(job_id(&ann), &["done"], LONG).await;
        took.push(started.elapsed());
        assert_eq!(ann["counts"]["done"], 30, "{ann}");
        assert!(ann["note"].is_null(), "{ann}");
        daemon.stop().await;
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the check reached the hanging server"
    );
    assert!(
        took[1] <= took[0] + Duration::from_secs(12),
        "a hanging archive.org held the job {:?} (a closed port: {:?})",
        took[1],
        took[0]
    );
}

/// A server that accepts connections and never answers (nor closes them);
/// its URL and how many connections it accepted.
async fn hanging_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

/// The same item in a bucket (`storage.archive_url = s3://…`, moto's S3
/// server): tars per date built in the spool and uploaded, the loose objects
/// removed once each tar is durable, `metadata.jsonl.gz`, the thumbnail and
/// `.meta/` as objects; `verify` reads the tars back from the bucket and
/// finds a damaged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tar_job_into_a_bucket_packs_the_same_item_and_verify_reads_its_tars() {
    let s3 = mld_testkit::s3::S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("tess", 60, 29);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s3_env = s3.daemon_env("ia");
    let extra: Vec<(&str, &str)> = s3_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let settings = test_settings(fake.api_url().as_str(), &data, 4, &extra);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (status, job) = daemon
        .post_job(json!({"username": "tess", "quality": "256", "format": "webp", "package": "tar"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job = daemon
        .wait_for_state(job["id"].as_i64().unwrap(), &["done"], LONG)
        .await;
    assert_eq!(job["counts"]["done"], 60, "{job}");
    daemon.stop().await;

    let mirror = dir.path().join("mirror");
    s3.mirror("ia", &mirror).await;
    let collection = mirror.join("mapillary-tess-256-webp");
    check_packed(&collection, &fake.images("tess"), |_| "webp");
    assert_only_item_files(&collection);
    assert!(collection.join("__ia_thumb__.jpg").is_file());
    assert_eq!(read_tag(&collection, "mediatype", 0), "data");
    assert!(
        !data.join("archive").exists(),
        "nothing of the archive on disk"
    );
    assert!(
        files_under(&data.join("spool")).is_empty(),
        "the spool is emptied"
    );

    let verify = |args: &[&str]| {
        let out = Command::new(BINARY)
            .arg("verify")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(s3_env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(&["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], 60, "{report}");

    // Damage one tar in the bucket: its members no longer match.
    let tar_key = s3
        .keys("ia/mapillary-tess-256-webp/")
        .await
        .into_iter()
        .find(|k| k.ends_with(".tar"))
        .unwrap();
    let mut tar = s3.get(&tar_key).await.unwrap();
    let middle = tar.len() / 2;
    tar[middle] ^= 0xFF;
    s3.put(&tar_key, tar).await;
    let (code, out) = verify(&["--json"]);
    assert_eq!(code, Some(1), "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let damaged = report["corrupt"].as_u64().unwrap_or(0) + report["missing"].as_u64().unwrap_or(0);
    assert!(damaged >= 1 && report["ok"].as_u64() < Some(60), "{report}");
    let location = report["problems"][0]["location"].as_str().unwrap();
    assert!(
        location.starts_with(&format!("s3://archive/{tar_key}:")),
        "{location}"
    );
    assert!(files_under(&data.join("spool")).is_empty());
}
