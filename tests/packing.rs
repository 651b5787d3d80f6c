//! Packing driven one step at a time over a real SQLite file and real
//! files, with a "crash" (the store dropped and reopened, nothing else kept)
//! between every two steps: after planning, after the tar is durable, and
//! half-way through removing the loose files. The result is byte for byte
//! what an uninterrupted packing of the same input writes. Also: loose
//! files missing or not matching their checksum are left out and queued
//! again, and a copy completed by another job after packing joins the tar.

use mapillary_downloader::archive::Archive;
use mapillary_downloader::archive::checksum::sha256_hex;
use mapillary_downloader::archive::{ArchivedFile, FileKind, collection_path, image_path};
use mapillary_downloader::model::{ImageMeta, Packaging, Quality};
use mapillary_downloader::package::{self, PackStep};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::{
    CollectionTask, Completion, ImageState, JobState, PackingState, Store,
};
use mld_testkit::tar_check::{self, tars_in};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const COLLECTION: &str = "mapillary-pia-1024";
/// 2024-01-02T00:00:00Z.
const DAY: i64 = 1_704_153_600_000;

fn meta(i: u64) -> ImageMeta {
    ImageMeta {
        id: (1000 + i).to_string(),
        // Two dates, 20 images each; three sequences.
        captured_at: Some(DAY + (i / 20) as i64 * 86_400_000 + i as i64 * 1000 + 7),
        sequence: Some(format!("seq{}", i % 3)),
        thumb_1024_url: Some(format!("https://cdn.example/{i}.jpg")),
        ..Default::default()
    }
}

/// A fresh lease on the collection, as a new packer takes it: each take
/// comes after the one before has expired.
async fn lease(store: &Store) -> CollectionTask {
    static TAKES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let at = (1 << 50) + TAKES.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
    store
        .take_collection_task(
            COLLECTION,
            &Arc::from("test-packer"),
            Duration::from_millis(1),
            at,
        )
        .await
        .unwrap()
        .expect("the collection's lease")
}

/// One packing step on the local disk, by the holder of `task`.
async fn step(
    store: &Arc<Store>,
    archive: &Path,
    task: &CollectionTask,
) -> Result<PackStep, package::PackError> {
    package::step(store, &Archive::disk(archive, 0), task).await
}

/// Packs the collection on the local disk, by the holder of `task`.
async fn pack_as(store: &Arc<Store>, archive: &Path, task: &CollectionTask) -> package::PackReport {
    package::pack_collection(store, &Archive::disk(archive, 0), task)
        .await
        .unwrap()
}

/// Packs the collection as a new packer would (a fresh lease).
async fn pack(store: &Arc<Store>, archive: &Path) -> package::PackReport {
    pack_as(store, archive, &lease(store).await).await
}

async fn open(data: &Path) -> Arc<Store> {
    Arc::new(Store::open(&data.join("mapillary.db")).await.unwrap())
}

/// A tar job for `pia` whose 40 images are done, each a loose file of its
/// own bytes. Returns the job id.
async fn archived_job(store: &Store, archive: &Path) -> i64 {
    let mut spec = JobSpec::user("pia", Quality::Q1024);
    spec.package = Packaging::Tar;
    let id = store.submit_job(&spec, 1).await.unwrap().job().id;
    let images: Vec<ImageMeta> = (0..40).map(meta).collect();
    store.insert_page(id, &images, None, 2).await.unwrap();
    downloading(store, id).await;
    complete_all(store, archive, 3).await;
    id
}

/// The job as the engine has it once its listing is stored.
async fn downloading(store: &Store, id: i64) {
    store
        .transition_job(id, &[JobState::Queued], JobState::Downloading, 2)
        .await
        .unwrap();
}

/// Claims and completes every pending image, writing its file first.
async fn complete_all(store: &Store, archive: &Path, now: i64) {
    let owner: Arc<str> = "test".into();
    let folder = collection_path(archive, COLLECTION).unwrap();
    loop {
        let claimed = store
            .claim(&owner, 100, Duration::from_secs(60), now, 0)
            .await
            .unwrap();
        if claimed.is_empty() {
            return;
        }
        for image in claimed {
            let path = image_path(&folder, &image.meta, FileKind::Jpeg).unwrap();
            let bytes = format!("image {} bytes", image.image_id)
                .repeat(50)
                .into_bytes();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let file = ArchivedFile::loose(&path, bytes.len() as u64, Some(sha256_hex(&bytes)));
            assert!(store.complete(&image.lease, &file, now).await.unwrap());
        }
    }
}

fn loose_files(collection: &Path) -> Vec<String> {
    tar_check::files_under(collection)
        .into_iter()
        .filter(|f| f.ends_with(".jpg"))
        .collect()
}

#[tokio::test]
async fn a_crash_between_any_two_steps_ends_with_the_same_tars() {
    // The reference: packed in one go.
    let reference = tempfile::tempdir().unwrap();
    let archive = reference.path().join("archive");
    let store = open(reference.path()).await;
    archived_job(&store, &archive).await;
    let report = pack(&store, &archive).await;
    assert_eq!(report.tars, ["2024-01-02.tar", "2024-01-03.tar"]);
    assert_eq!((report.members, report.requeued), (40, 0));
    let want = tars_in(&archive.join(COLLECTION));
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let collection = archive.join(COLLECTION);
    let store = open(dir.path()).await;
    archived_job(&store, &archive).await;
    let planned = match step(&store, &archive, &lease(&store).await).await.unwrap() {
        PackStep::Planned(p) => p,
        other => panic!("expected a plan, got {other:?}"),
    };
    assert_eq!(
        (planned.tar_name.as_str(), planned.members),
        ("2024-01-02.tar", 20)
    );
    // Crash after the plan, with a half-written temp tar left behind.
    store.close().await;
    std::fs::write(collection.join("2024-01-02.tar.999-0.part"), b"half a tar").unwrap();
    let store = open(dir.path()).await;
    assert_eq!(loose_files(&collection).len(), 40, "planning moves nothing");
    match step(&store, &archive, &lease(&store).await).await.unwrap() {
        PackStep::Written(p, written) => {
            assert_eq!((p.id, written.members), (planned.id, 20));
        }
        other => panic!("expected the tar, got {other:?}"),
    }
    assert_eq!(
        loose_files(&collection).len(),
        40,
        "nothing removed before `written` commits"
    );
    // Crash after the tar, and again half-way through the cleaning.
    store.close().await;
    for file in loose_files(&collection).iter().take(7) {
        std::fs::remove_file(collection.join(file)).unwrap();
    }
    let store = open(dir.path()).await;
    match step(&store, &archive, &lease(&store).await).await.unwrap() {
        PackStep::Cleaned(p) => assert_eq!(p.state, PackingState::Cleaned),
        other => panic!("expected the cleaning, got {other:?}"),
    }
    assert_eq!(
        loose_files(&collection).len(),
        20,
        "the first date's files are gone"
    );
    assert!(!collection.join("2024-01-02").exists(), "and its folder");
    let report = pack(&store, &archive).await;
    assert_eq!(report.tars, ["2024-01-03.tar"]);
    assert!(matches!(
        step(&store, &archive, &lease(&store).await).await.unwrap(),
        PackStep::Idle
    ));
    assert!(loose_files(&collection).is_empty());
    // The startup sweep takes the stale temp file; the tars are the reference's.
    mapillary_downloader::archive::remove_part_files(&archive).unwrap();
    assert_eq!(tars_in(&collection), want, "byte for byte");
    store.close().await;
}

#[tokio::test]
async fn missing_or_mismatched_loose_files_stay_out_of_the_tar_and_are_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let collection = archive.join(COLLECTION);
    let store = open(dir.path()).await;
    let job = archived_job(&store, &archive).await;
    let folder = collection_path(&archive, COLLECTION).unwrap();
    let gone = image_path(&folder, &meta(3), FileKind::Jpeg).unwrap();
    let damaged = image_path(&folder, &meta(4), FileKind::Jpeg).unwrap();
    std::fs::remove_file(&gone).unwrap();
    std::fs::write(&damaged, b"not what was archived").unwrap();

    let report = pack(&store, &archive).await;
    assert_eq!((report.members, report.requeued), (38, 2));
    assert!(
        !damaged.exists(),
        "a corrupt loose file leaves its path so nothing adopts it"
    );
    // ... but is never deleted: it may be the only copy left.
    let quarantined = dir
        .path()
        .join("quarantine")
        .join(damaged.strip_prefix(&archive).unwrap());
    assert_eq!(
        std::fs::read(&quarantined).unwrap(),
        b"not what was archived",
        "moved to <data-dir>/quarantine/<its path in the archive>"
    );
    let members: Vec<String> = tar_check::list(&collection.join("2024-01-02.tar"))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(members.len(), 18);
    for (i, why) in [(3, "was gone"), (4, "did not match its SHA-256")] {
        let row = store.image_by_id(job, &meta(i).id).await.unwrap().unwrap();
        assert_eq!(row.state, ImageState::Pending, "image {i}");
        assert!(row.packing_id.is_none() && row.path.is_none());
        assert!(
            row.last_error.as_deref().unwrap_or_default().contains(why),
            "{row:?}"
        );
    }
    let job_row = store.find_job(job).await.unwrap().unwrap();
    assert_eq!((job_row.counts.done, job_row.counts.pending), (38, 2));

    // Fetched again, they go into the next tar of their date.
    complete_all(&store, &archive, mapillary_downloader::clock::now_ms() + 1).await;
    let report = pack(&store, &archive).await;
    assert_eq!(report.tars, ["2024-01-02.1.tar"]);
    assert_eq!(report.members, 2);
    assert!(quarantined.exists(), "still in quarantine");
    store.close().await;
}

/// A stored path that climbs out of its collection through `..` is never
/// removed: cleaning a written tar refuses it, and the file it names stays.
#[tokio::test]
async fn cleaning_refuses_a_stored_path_that_climbs_out_of_its_collection() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = open(dir.path()).await;
    let job = archived_job(&store, &archive).await;
    let folder = collection_path(&archive, COLLECTION).unwrap();
    let victim = dir.path().join("victim.jpg");
    std::fs::write(&victim, b"not the archive's").unwrap();
    let task = lease(&store).await;
    // Planned and written as usual; then a row is pointed out of the
    // collection before the clean step.
    while !matches!(
        step(&store, &archive, &task).await.unwrap(),
        PackStep::Written(..)
    ) {}
    let climbing = format!("{}/2024-01-02/../../../victim.jpg", folder.display());
    let moved = image_path(&folder, &meta(0), FileKind::Jpeg).unwrap();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("mapillary.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE images SET path = ?1 WHERE path = ?2 AND job_id = ?3")
        .bind(&climbing)
        .bind(moved.to_str().unwrap())
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let files = FileSet::of(dir.path());
    let err = step(&store, &archive, &task).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"not the archive's",
        "the file the row climbs to is left"
    );
    assert!(moved.exists());
    assert_eq!(FileSet::of(dir.path()), files, "nothing removed");
    store.close().await;
}

/// Every file under a folder, for "nothing removed" checks.
#[derive(Debug, PartialEq, Eq)]
struct FileSet(Vec<String>);

impl FileSet {
    fn of(dir: &Path) -> FileSet {
        let mut files: Vec<String> = tar_check::files_under(dir)
            .into_iter()
            .filter(|f| !f.starts_with("mapillary.db"))
            .collect();
        files.sort();
        FileSet(files)
    }
}

/// A date whose loose files are all gone gets no tar (not an empty one):
/// its images are queued again, and once fetched they take the date's
/// first tar name.
#[tokio::test]
async fn a_date_whose_files_all_vanished_gets_no_empty_tar() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let collection = archive.join(COLLECTION);
    let store = open(dir.path()).await;
    let job = archived_job(&store, &archive).await;
    std::fs::remove_dir_all(collection.join("2024-01-03")).unwrap();

    let report = pack(&store, &archive).await;
    assert_eq!(report.tars, ["2024-01-02.tar"]);
    assert_eq!((report.members, report.requeued), (20, 20));
    assert!(!collection.join("2024-01-03.tar").exists());
    let job_row = store.find_job(job).await.unwrap().unwrap();
    assert_eq!((job_row.counts.done, job_row.counts.pending), (20, 20));
    assert_eq!(store.tar_names(COLLECTION).await.unwrap().len(), 1);

    complete_all(&store, &archive, mapillary_downloader::clock::now_ms() + 1).await;
    let report = pack(&store, &archive).await;
    assert_eq!(report.tars, ["2024-01-03.tar"]);
    assert_eq!(report.members, 20);
    assert!(loose_files(&collection).is_empty());
    store.close().await;
}

#[tokio::test]
async fn a_copy_completed_after_its_date_was_packed_joins_the_tar() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = open(dir.path()).await;
    archived_job(&store, &archive).await;
    // A second job over the same collection (a date window of the same user).
    let mut spec = JobSpec::user("pia", Quality::Q1024);
    spec.selection.filters.start_captured_at = Some(DAY);
    let second = store.submit_job(&spec, 20).await.unwrap().job().id;
    store
        .insert_page(second, &[meta(5)], None, 21)
        .await
        .unwrap();
    downloading(&store, second).await;
    let owner: Arc<str> = "other".into();
    let claimed = store
        .claim(&owner, 1, Duration::from_secs(60), 22, 0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // Its worker adopted the loose file, then packing ran before it completed.
    let folder = collection_path(&archive, COLLECTION).unwrap();
    let path = image_path(&folder, &meta(5), FileKind::Jpeg).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    pack(&store, &archive).await;
    assert!(!path.exists());
    // Or it found no file and downloaded the image again, bytes that differ
    // from the member's (the CDN re-encoded it, say): the row still joins
    // the tar, with the member's checksum and size, and the caller is told
    // to remove the loose file (nothing else ever would).
    let fresh = b"a fresh download of the same image".repeat(9);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &fresh).unwrap();
    let file = ArchivedFile::loose(&path, fresh.len() as u64, Some(sha256_hex(&fresh)));
    assert_eq!(
        store
            .complete_image(&claimed[0].lease, &file, 23)
            .await
            .unwrap(),
        Completion::JoinedTar
    );
    let row = store
        .image_by_id(second, &meta(5).id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    assert_eq!(row.bytes, Some(bytes.len() as i64));
    let copy = store
        .archived_copy(COLLECTION, &meta(5).id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.packing_id.is_some(),
        "it points at the tar, not the removed file"
    );
    assert_eq!(row.packing_id, copy.packing_id);
    // Nothing is left to pack.
    let report = pack(&store, &archive).await;
    assert!(report.tars.is_empty(), "{report:?}");
    store.close().await;
}

/// What `verify` asks before calling a loose file missing: is the row still
/// loose? Yes while its packing is only planned, no once the tar is written
/// (beside a running daemon the file goes then, and the tar is checked).
#[tokio::test]
async fn a_row_is_loose_until_its_tar_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = open(dir.path()).await;
    let job = archived_job(&store, &archive).await;
    let listed = store.loose_copies(Some(job), 0, 1).await.unwrap().remove(0);
    assert!(
        store
            .is_still_loose(listed.row_id, &listed.path)
            .await
            .unwrap()
    );
    assert!(matches!(
        step(&store, &archive, &lease(&store).await).await.unwrap(),
        PackStep::Planned(_)
    ));
    assert!(
        store
            .is_still_loose(listed.row_id, &listed.path)
            .await
            .unwrap()
    );
    pack(&store, &archive).await;
    assert!(
        !store
            .is_still_loose(listed.row_id, &listed.path)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_still_loose(listed.row_id, "/elsewhere.jpg")
            .await
            .unwrap()
    );
    store.close().await;
}

/// A tar takes its name only if the name is free, and only while its packer
/// holds the collection: a packer that lost its lease publishes nothing; our
/// very bytes already under the name (a crash before the packing was
/// recorded) are adopted; any other file stops packing, with the file left
/// alone and a message saying what to do.
#[tokio::test]
async fn a_tar_takes_its_name_only_while_its_packer_holds_the_collection_and_the_name_is_free() {
    let reference = tempfile::tempdir().unwrap();
    let archive = reference.path().join("archive");
    let store = open(reference.path()).await;
    archived_job(&store, &archive).await;
    pack(&store, &archive).await;
    let want = tars_in(&archive.join(COLLECTION));
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let collection = archive.join(COLLECTION);
    let store = open(dir.path()).await;
    archived_job(&store, &archive).await;
    let stale = lease(&store).await;
    let planned = match step(&store, &archive, &stale).await.unwrap() {
        PackStep::Planned(p) => p,
        other => panic!("expected a plan, got {other:?}"),
    };
    // Another packer takes the collection over; the first one's write of
    // the planned tar is refused before the tar takes its name.
    let holder = lease(&store).await;
    let err = step(&store, &archive, &stale).await.unwrap_err();
    assert!(err.to_string().contains("lost the lease"), "{err}");
    assert!(tars_in(&collection).is_empty());
    assert!(
        !tar_check::files_under(&collection)
            .iter()
            .any(|f| f.ends_with(".part")),
        "no part file left"
    );
    assert_eq!(loose_files(&collection).len(), 40);
    // The same tar under its name already (a crash after it took it): adopted.
    let first = "2024-01-02.tar";
    std::fs::write(collection.join(first), &want[first]).unwrap();
    match step(&store, &archive, &holder).await.unwrap() {
        PackStep::Written(p, written) => assert_eq!((p.id, written.members), (planned.id, 20)),
        other => panic!("expected the tar, got {other:?}"),
    }
    // A stale packer cannot clean either.
    let err = step(&store, &archive, &stale).await.unwrap_err();
    assert!(err.to_string().contains("lost the lease"), "{err}");
    assert_eq!(loose_files(&collection).len(), 40);
    assert!(matches!(
        step(&store, &archive, &holder).await.unwrap(),
        PackStep::Cleaned(_)
    ));
    // The next date is planned; then a file that is not its tar appears
    // under the name: packing stops and says so, and touches nothing.
    let next = match step(&store, &archive, &holder).await.unwrap() {
        PackStep::Planned(p) => p,
        other => panic!("expected a plan, got {other:?}"),
    };
    assert_eq!(next.tar_name, "2024-01-03.tar");
    std::fs::write(collection.join(&next.tar_name), b"someone else's file").unwrap();
    let err = step(&store, &archive, &holder).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("is already there") && message.contains("move it out"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(collection.join(&next.tar_name)).unwrap(),
        b"someone else's file"
    );
    assert_eq!(loose_files(&collection).len(), 20);
    assert_eq!(
        store.packing(next.id).await.unwrap().unwrap().state,
        PackingState::Planned
    );
    // Moved away: packing goes on, and ends with the reference's tars.
    std::fs::remove_file(collection.join(&next.tar_name)).unwrap();
    let report = pack_as(&store, &archive, &holder).await;
    assert_eq!(report.tars, ["2024-01-03.tar"]);
    assert!(loose_files(&collection).is_empty());
    assert_eq!(tars_in(&collection), want, "byte for byte");
    store.close().await;
}
