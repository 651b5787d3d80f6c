//! Packed archives read back with GNU `tar` and `gzip`, independent readers
//! of what the daemon's own tar and gzip code wrote.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// One member as `tar --list --verbose --full-time` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// `-rw-r--r--`: the type letter and mode.
    pub mode: String,
    /// `uid/gid` when the header holds no user or group name (as GNU tar
    /// prints it then), else `user/group`.
    pub owner: String,
    pub size: u64,
    /// Unix seconds (UTC).
    pub mtime: i64,
    pub name: String,
}

/// The members of `tar`, in archive order. Panics if GNU tar cannot list it.
pub fn list(tar: &Path) -> Vec<TarEntry> {
    let out = Command::new("tar")
        .args(["--list", "--verbose", "--full-time", "--file"])
        .arg(tar)
        .env("TZ", "UTC")
        .output()
        .expect("GNU tar is installed");
    assert!(
        out.status.success(),
        "tar --list {}: {}",
        tar.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() == 6, "unexpected tar listing line {line:?}");
            let time = chrono::NaiveDateTime::parse_from_str(
                &format!("{} {}", fields[3], fields[4]),
                "%Y-%m-%d %H:%M:%S",
            )
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            TarEntry {
                mode: fields[0].to_string(),
                owner: fields[1].to_string(),
                size: fields[2].parse().unwrap(),
                mtime: time.and_utc().timestamp(),
                name: fields[5].to_string(),
            }
        })
        .collect()
}

/// Every member's bytes, by name, extracted by GNU tar into a temp folder.
pub fn extract(tar: &Path) -> HashMap<String, Vec<u8>> {
    let into = tempfile_dir();
    let status = Command::new("tar")
        .args(["--extract", "--file"])
        .arg(tar)
        .arg("--directory")
        .arg(&into)
        .status()
        .expect("GNU tar is installed");
    assert!(status.success(), "tar --extract {}", tar.display());
    let mut files = HashMap::new();
    let mut stack = vec![into.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(&into)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&into);
    files
}

fn tempfile_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mld-tar-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of a gzip file, decompressed by `gzip -dc`.
pub fn gunzip(path: &Path) -> String {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip is installed");
    assert!(out.status.success(), "gzip -dc {}", path.display());
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Lower-case hex SHA-256 of `bytes`, by `sha256sum`.
pub fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum is installed (coreutils)");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir`, recursively, as paths relative to it.
pub fn files_under(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found
}

/// Every file of every `*.tar` directly in `dir`, by tar name, with the
/// tar's bytes: what two packings of the same input must share exactly.
pub fn tars_in(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(".tar") && !f.contains('/'))
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}
