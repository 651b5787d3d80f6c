//! Invariant 1 seen from the kernel's side: for every image, the real binary
//! writes `<final>.<pid>-<n>.part`, fsyncs that file, renames it to its final
//! path, fsyncs the directory, and only then writes the database page that
//! marks it done. A kill -9 cannot see any of this (the page cache survives
//! it), so the order of system calls, traced with strace, is the evidence.
//!
//! The same holds for tar packing: the commit that marks a tar `written` is
//! fsynced (the WAL) before the first loose file it replaced is unlinked.
//!
//! Needs `strace` (Debian package `strace`; `.ci/run` installs it). Without it
//! the test fails and says so.

use mld_testkit::env::test_env;
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary};
use mld_testkit::process;
use std::path::Path;
use std::process::Stdio;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

/// One traced system call: its line numbers where it started and where it
/// returned (the same line unless strace split it across threads).
#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: String,
    result: String,
    started: usize,
    returned: usize,
}

/// Parses `strace -f` output (with `<unfinished ...>` / `<... resumed>`
/// pairs joined back together) into calls in the order they started.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut pending: std::collections::HashMap<(String, String), usize> = Default::default();
    for (line_no, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some(index) = pending.remove(&(pid.to_string(), name.to_string())) {
                let call = &mut calls[index];
                let (more_args, result) = tail.rsplit_once(" = ").unwrap_or((tail, ""));
                call.args.push_str(more_args);
                call.result = result.trim().to_string();
                call.returned = line_no;
            }
            continue;
        }
        let Some((name, tail)) = rest.split_once('(') else {
            continue;
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(args) = tail.strip_suffix(" <unfinished ...>") {
            pending.insert((pid.to_string(), name.to_string()), calls.len());
            calls.push(Call {
                name: name.to_string(),
                args: args.to_string(),
                result: String::new(),
                started: line_no,
                returned: usize::MAX,
            });
        } else {
            let (args, result) = tail.rsplit_once(" = ").unwrap_or((tail, ""));
            calls.push(Call {
                name: name.to_string(),
                args: args.to_string(),
                result: result.trim().to_string(),
                started: line_no,
                returned: line_no,
            });
        }
    }
    calls
}

/// The first argument: the file descriptor of `write`, `fsync`, `pwrite64`.
fn fd_of(call: &Call) -> Option<&str> {
    call.args.split([',', ')']).next().map(str::trim)
}

/// Checks the order for one image whose final path is `final_path` and whose
/// done mark writes `marker` (its file name) into the WAL (`wal_fds`).
fn check_order(calls: &[Call], final_path: &str, marker: &str, wal_fds: &[String]) {
    let part_prefix = format!("\"{final_path}.");
    let open = calls
        .iter()
        .position(|c| {
            c.name == "openat"
                && c.args.contains(&part_prefix)
                && c.args.contains(".part\"")
                && c.args.contains("O_CREAT")
                // A refused open (ENOENT: the folder is made on demand,
                // then the open is tried again) is not the part's.
                && !c.result.starts_with('-')
        })
        .unwrap_or_else(|| panic!("no .part file was opened for {final_path}"));
    let part_fd = calls[open].result.clone();
    let part_path = calls[open]
        .args
        .split('"')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let after = |from: usize, what: &str, pred: &dyn Fn(&Call) -> bool| -> usize {
        calls[from + 1..]
            .iter()
            .position(pred)
            .map(|i| from + 1 + i)
            .unwrap_or_else(|| panic!("{final_path}: no {what} after call {from}"))
    };
    let write = after(open, "write to the .part file", &|c| {
        c.name == "write" && fd_of(c) == Some(part_fd.as_str())
    });
    let fsync_file = after(write, "fsync of the .part file", &|c| {
        matches!(c.name.as_str(), "fsync" | "fdatasync") && fd_of(c) == Some(part_fd.as_str())
    });
    let rename = after(fsync_file, "rename to the final path", &|c| {
        c.name.starts_with("rename")
            && c.args.contains(&format!("\"{part_path}\""))
            && c.args.contains(&format!("\"{final_path}\""))
    });
    assert!(
        calls[rename].started > calls[fsync_file].returned,
        "{final_path}: renamed before the file's fsync returned"
    );
    let dir = Path::new(final_path)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let open_dir = after(rename, "open of the directory", &|c| {
        c.name == "openat" && c.args.contains(&format!("\"{dir}\""))
    });
    let dir_fd = calls[open_dir].result.clone();
    let fsync_dir = after(open_dir, "fsync of the directory", &|c| {
        matches!(c.name.as_str(), "fsync" | "fdatasync") && fd_of(c) == Some(dir_fd.as_str())
    });
    let done_mark = calls
        .iter()
        .position(|c| {
            c.name.starts_with("pwrite")
                && fd_of(c).is_some_and(|fd| wal_fds.iter().any(|w| w == fd))
                && c.args.contains(marker)
        })
        .unwrap_or_else(|| panic!("{final_path}: no database write mentions {marker}"));
    assert!(
        calls[done_mark].started > calls[fsync_dir].returned,
        "{final_path}: marked done in the database (line {}) before the directory's fsync returned (line {})",
        calls[done_mark].started,
        calls[fsync_dir].returned
    );
}

/// Runs `download <args> --workers 1 --data-dir <dir>/data` under `strace -f`
/// tracing `trace`; returns the calls and the descriptors of the WAL.
async fn traced_download(
    fake: &FakeMapillary,
    dir: &Path,
    trace: &str,
    args: &[&str],
) -> (Vec<Call>, Vec<String>) {
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace: apt-get install -y strace (.ci/run installs it)"
    );
    let out_file = dir.join("trace.txt");
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let mut cmd = process::command("strace", &env);
    cmd.args(["-f", "-qq", "-s", "65536", "-e", trace, "-o"])
        .arg(&out_file)
        .arg(BINARY)
        .arg("download")
        .args(args)
        .args(["--workers", "1", "--data-dir"])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = parse_trace(&std::fs::read_to_string(&out_file).unwrap());
    let wal_fds: Vec<String> = calls
        .iter()
        .filter(|c| c.name == "openat" && c.args.contains("mapillary.db-wal\""))
        .map(|c| c.result.clone())
        .collect();
    assert!(!wal_fds.is_empty(), "the database's WAL was never opened");
    (calls, wal_fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_image_is_fsynced_renamed_and_its_directory_fsynced_before_it_is_marked_done() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("olive", 4, 81);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (calls, wal_fds) = traced_download(
        &fake,
        dir.path(),
        "trace=openat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2",
        &["olive"],
    )
    .await;
    let archive = data.join("archive");
    for image in fake.images("olive") {
        let final_path = mld_testkit::archive_check::image_path(
            &mld_testkit::archive_check::collection_dir(
                &archive,
                "olive",
                mld_testkit::fake::Quality::Original,
            ),
            &image,
        );
        assert!(final_path.exists(), "{} is missing", final_path.display());
        let marker = format!("{}.jpg", image.id);
        check_order(&calls, &final_path.display().to_string(), &marker, &wal_fds);
    }
}

/// Packing deletes loose files on the strength of the `written` commit, so
/// that commit must be durable against a power loss, not only a crash: the
/// last WAL write before the first unlink of a loose image is followed by an
/// fsync of the WAL, and that fsync returns before the unlink starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_is_marked_written_durably_before_its_loose_files_are_removed() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("pia", 6, 82);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (calls, wal_fds) = traced_download(
        &fake,
        dir.path(),
        "trace=openat,pwrite64,fsync,fdatasync,unlink,unlinkat",
        &["pia", "--tar"],
    )
    .await;
    let on_wal = |c: &Call| fd_of(c).is_some_and(|fd| wal_fds.iter().any(|w| w == fd));
    let unlink = calls
        .iter()
        .position(|c| c.name.starts_with("unlink") && c.args.contains(".jpg\""))
        .expect("no loose image was removed after packing");
    let last_write = calls[..unlink]
        .iter()
        .rposition(|c| c.name.starts_with("pwrite") && on_wal(c))
        .expect("no WAL write before the first unlink");
    let sync = calls[last_write + 1..unlink]
        .iter()
        .position(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && on_wal(c))
        .map(|i| last_write + 1 + i)
        .unwrap_or_else(|| {
            panic!(
                "the commit before the first unlink (line {}) was never fsynced before it (line {})",
                calls[last_write].started, calls[unlink].started
            )
        });
    assert!(
        calls[unlink].started > calls[sync].returned,
        "unlinked (line {}) before the WAL fsync returned (line {})",
        calls[unlink].started,
        calls[sync].returned
    );
    let tars: Vec<_> = walk_tars(&data.join("archive"));
    assert!(!tars.is_empty(), "no tar was written");
}

fn walk_tars(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_tars(&path));
        } else if path.extension().is_some_and(|e| e == "tar") {
            out.push(path);
        }
    }
    out
}
