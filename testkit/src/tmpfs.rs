//! A small tmpfs of its own for full-disk tests, and free space as `df`
//! reports it.

use std::path::{Path, PathBuf};

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`"16m"`) at `at`. Needs root, as CI runs: a
    /// test that cannot mount fails and says so, it never passes untested.
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "mounting a {size} tmpfs at {} failed ({status:?}): this test needs root \
             (CI and `bash .ci/run` run as root) and the `mount` command",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    /// Changes its size (`"256m"`, or bytes); panics if the kernel refuses.
    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {} to {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Free and used bytes on the filesystem holding `path`, as `df` shows them.
pub fn df(path: &Path) -> (u64, u64) {
    let out = std::process::Command::new("df")
        .args(["--output=avail,used", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [free, used] => (free, used),
        _ => (u64::MAX, 0),
    }
}

/// Free bytes on the filesystem holding `path`.
pub fn fs_free_bytes(path: &Path) -> u64 {
    df(path).0
}
