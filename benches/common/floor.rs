//! The disk's floor: what a bare durable write costs on the same disk, so a
//! daemon figure that misses on ext4 can be set beside what no engine could
//! go under (issue 24: "needs its measured floor beside it").
//!
//! Each file is what invariant 1 demands and nothing more: create a `.part`,
//! write it, fsync it, rename it over the final name, fsync the folder.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the loop cost.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub files: usize,
    pub threads: usize,
    /// User CPU of the writing threads, per file.
    pub user_ms_per_file: f64,
    /// System CPU of the writing threads, per file.
    pub sys_ms_per_file: f64,
    /// Wall time of the whole loop.
    pub wall: Duration,
}

impl Floor {
    /// User + system CPU per file.
    pub fn cpu_ms_per_file(&self) -> f64 {
        self.user_ms_per_file + self.sys_ms_per_file
    }
}

/// The calling thread's user and system CPU so far.
fn thread_cpu() -> io::Result<(Duration, Duration)> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `usage` points to writable memory of the right type, which
    // getrusage fills on success.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok((time(usage.ru_utime), time(usage.ru_stime)))
}

/// Writes one file durably, the bare way.
fn durable_write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let part = dir.join(format!("{name}.part"));
    let mut file = File::create(&part)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&part, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Writes one file of each size in `sizes` under `root` (in 16 folders),
/// from `threads` threads at once, and measures the writing threads' CPU.
/// Removes what it wrote.
pub fn measure(root: &Path, sizes: &[usize], threads: usize) -> anyhow::Result<Floor> {
    let threads = threads.clamp(1, sizes.len().max(1));
    let base = tempfile::Builder::new()
        .prefix("mld-bench-floor-")
        .tempdir_in(root)?;
    for folder in 0..16 {
        fs::create_dir_all(base.path().join(folder.to_string()))?;
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    // Bytes that do not compress or dedupe, like JPEG bodies.
    let bytes: Vec<u8> = (0..largest as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let started = Instant::now();
    let totals = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (base, bytes) = (base.path(), &bytes);
                scope.spawn(move || -> io::Result<(Duration, Duration)> {
                    let before = thread_cpu()?;
                    for (i, size) in sizes.iter().enumerate().skip(t).step_by(threads) {
                        let dir = base.join((i % 16).to_string());
                        durable_write(&dir, &format!("{i}.jpg"), &bytes[..*size])?;
                    }
                    let after = thread_cpu()?;
                    Ok((after.0 - before.0, after.1 - before.1))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| io::Error::other("a floor thread panicked"))?
            })
            .collect::<io::Result<Vec<_>>>()
    })?;
    let wall = started.elapsed();
    let (user, sys) = totals
        .iter()
        .fold((Duration::ZERO, Duration::ZERO), |(u, s), (tu, ts)| {
            (u + *tu, s + *ts)
        });
    let files = sizes.len().max(1) as f64;
    Ok(Floor {
        files: sizes.len(),
        threads,
        user_ms_per_file: user.as_secs_f64() * 1e3 / files,
        sys_ms_per_file: sys.as_secs_f64() * 1e3 / files,
        wall,
    })
}

/// What the filesystem holding `path` is: "tmpfs", "ext4", or its magic.
pub fn filesystem(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is writable memory of
    // the right type, which statfs fills on success.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return "unknown".into();
    }
    // SAFETY: statfs returned 0, so it initialised the struct.
    let kind = unsafe { stat.assume_init() }.f_type;
    // The field's type differs between libc targets.
    #[allow(clippy::unnecessary_cast)]
    match kind as i64 {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x9123_683E => "btrfs".into(),
        0x5846_5342 => "xfs".into(),
        other => format!("fs 0x{other:x}"),
    }
}
