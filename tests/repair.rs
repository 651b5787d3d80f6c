//! `verify --repair` never destroys (SPEC Part 3, "Nothing lost, nothing
//! stuck"): on an archive holding every kind of doubt at once it moves
//! only the proven-damaged file, into `<data-dir>/quarantine/`, and reports
//! each kind apart; and `verify` without `--repair` leaves the database
//! byte for byte as it was, even when its stored paths use another root.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::archive_check::{collection_dir, image_path};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Quality};
use mld_testkit::tar_check::files_under;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
const LONG: Duration = Duration::from_secs(180);
/// `nobody`: root reads anything, so an unreadable file needs another user.
const NOBODY: u32 = 65534;

/// `verify --json` with `args` over `data`, as `nobody` when `as_nobody`:
/// exit code and report.
fn verify(data: &Path, args: &[&str], as_nobody: bool) -> (i32, Value) {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            BINARY,
        ]);
        c
    } else {
        Command::new(BINARY)
    };
    let out = command
        .args(["verify", "--json", "--data-dir"])
        .arg(data)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// A loose (untarred) job of `user`'s `count` images, done, daemon stopped.
async fn archived(fake: &FakeMapillary, data: &Path, user: &str) {
    let settings = test_settings(fake.api_url().as_str(), data, 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": user, "quality": "256"}))
        .await;
    let id = job["id"].as_i64().unwrap();
    daemon.wait_for_state(id, &["done"], LONG).await;
    daemon.stop().await;
}

async fn sqlite(data: &Path) -> sqlx::SqlitePool {
    let db = data.join("mapillary.db");
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// Every file under `dir` with its bytes' length, for "nothing deleted".
fn inventory(dir: &Path) -> BTreeSet<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| !f.starts_with("mapillary.db") && !f.starts_with("quarantine/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_quarantines_only_the_truncated_file_and_reports_each_doubt_apart() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("rhea", 12, 31);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    archived(&fake, &data, "rhea").await;
    let archive = data.join("archive");
    let rheas = collection_dir(&archive, "rhea", Quality::Q256);
    let images = fake.images("rhea");
    let path = |i: usize| image_path(&rheas, &images[i]);

    // A directory where image 0's file should be (holding a file of its own).
    std::fs::remove_file(path(0)).unwrap();
    std::fs::create_dir(path(0)).unwrap();
    std::fs::write(path(0).join("keep"), b"someone's").unwrap();
    // Image 1 truncated: proven damaged.
    let whole = std::fs::read(path(1)).unwrap();
    std::fs::write(path(1), &whole[..whole.len() / 2]).unwrap();
    // Image 2 does not decode, but its row records exactly these bytes.
    let garbage = b"not an image, but what was archived".to_vec();
    std::fs::write(path(2), &garbage).unwrap();
    let pool = sqlite(&data).await;
    sqlx::query("UPDATE images SET sha256 = ?1, bytes = ?2 WHERE image_id = ?3")
        .bind(mapillary_downloader::archive::checksum::sha256_hex(
            &garbage,
        ))
        .bind(garbage.len() as i64)
        .bind(&images[2].id)
        .execute(&pool)
        .await
        .unwrap();
    // Image 3's row climbs out of its collection to a file that is not ours.
    let victim = archive.join("victim.jpg");
    std::fs::write(&victim, b"not the archive's").unwrap();
    let climbing = format!("{}/2024-01-01/../../victim.jpg", rheas.display());
    sqlx::query("UPDATE images SET path = ?1 WHERE image_id = ?2")
        .bind(&climbing)
        .bind(&images[3].id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Everything belongs to `nobody` but image 4's file, which it may not read.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&data, NOBODY);
    std::os::unix::fs::chown(path(4), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(path(4), std::fs::Permissions::from_mode(0o600)).unwrap();
    let unreadable = std::fs::read(path(4)).unwrap();
    let before = inventory(&data);

    let (code, report) = verify(&data, &["--repair"], true);
    assert_eq!(code, 1, "{report:#}");
    let counts: Vec<u64> = [
        "missing",
        "corrupt",
        "unreadable",
        "not_a_file",
        "undecodable",
        "outside",
        "quarantined",
        "requeued",
        "ok",
    ]
    .iter()
    .map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {report:#}"))
    })
    .collect();
    assert_eq!(counts, [0, 1, 1, 1, 1, 1, 1, 1, 7], "{report:#}");
    let kind_of = |i: usize| {
        let found: Vec<&Value> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["image_id"] == images[i].id.as_str())
            .collect();
        assert_eq!(found.len(), 1, "image {i}: {report:#}");
        found[0]["kind"].as_str().unwrap().to_string()
    };
    let kinds: Vec<String> = (0..5).map(kind_of).collect();
    assert_eq!(
        kinds,
        [
            "not_a_file",
            "corrupt",
            "undecodable",
            "outside",
            "unreadable"
        ],
        "{report:#}"
    );

    // Only the truncated file moved, into quarantine, whole as it was.
    let quarantined = data
        .join("quarantine")
        .join(path(1).strip_prefix(&archive).unwrap());
    assert_eq!(
        std::fs::read(&quarantined).unwrap(),
        &whole[..whole.len() / 2]
    );
    let mut expected = before.clone();
    expected.remove(path(1).strip_prefix(&data).unwrap().to_str().unwrap());
    assert_eq!(inventory(&data), expected, "nothing else moved or deleted");
    assert_eq!(std::fs::read(path(0).join("keep")).unwrap(), b"someone's");
    assert_eq!(std::fs::read(path(2)).unwrap(), garbage);
    assert_eq!(std::fs::read(path(4)).unwrap(), unreadable);
    assert_eq!(std::fs::read(&victim).unwrap(), b"not the archive's");
    assert!(path(3).exists(), "image 3's own file is untouched");

    // Only the truncated image went back to the queue.
    let pool = sqlite(&data).await;
    let pending: Vec<String> =
        sqlx::query_scalar("SELECT image_id FROM images WHERE state <> 'done' ORDER BY image_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(pending, [images[1].id.clone()]);
    pool.close().await;
}

/// SHA-256 of a file's bytes, to prove it unchanged.
fn digest(path: &Path) -> String {
    mapillary_downloader::archive::checksum::sha256_hex(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_without_repair_never_writes_the_database_even_under_another_root() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ira", 10, 32);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    archived(&fake, &first, "ira").await;
    // Some rows without a checksum: verify computes one, and must not store it.
    let pool = sqlite(&first).await;
    sqlx::query("UPDATE images SET sha256 = NULL WHERE rowid % 2 = 0")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // The data dir seen under another path, as from a host beside a daemon
    // in a container: every stored path (and the recorded root) names
    // `first`, which is no longer there.
    let moved: PathBuf = dir.path().join("moved");
    std::fs::rename(&first, &moved).unwrap();
    let db = moved.join("mapillary.db");
    assert!(!moved.join("mapillary.db-wal").exists());
    let before = (digest(&db), std::fs::metadata(&db).unwrap().mtime());

    let (code, report) = verify(&moved, &[], false);
    assert_eq!(
        (code, report["checked"].as_u64(), report["ok"].as_u64()),
        (0, Some(10), Some(10)),
        "stored paths are mapped onto this run's root: {report:#}"
    );
    assert_eq!(report["hashed"].as_u64(), Some(5), "{report:#}");
    // Damage makes no difference: still nothing written.
    let ira = collection_dir(&moved.join("archive"), "ira", Quality::Q256);
    let image = &fake.images("ira")[0];
    std::fs::write(image_path(&ira, image), b"damaged").unwrap();
    let (code, report) = verify(&moved, &[], false);
    assert_eq!(
        (code, report["corrupt"].as_u64()),
        (1, Some(1)),
        "{report:#}"
    );
    assert!(
        image_path(&ira, image).exists(),
        "verify alone moves nothing"
    );
    assert_eq!(
        (digest(&db), std::fs::metadata(&db).unwrap().mtime()),
        before,
        "the database file is byte for byte unchanged"
    );
    let pool = sqlite(&moved).await;
    let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM images WHERE path LIKE ?1")
        .bind(format!("{}/%", first.display()))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stale, 10, "no stored path rewritten");
    pool.close().await;
}
