//! Entry point: parse the command line, start the runtime, and hand over to
//! [`mapillary_downloader::cli::commands`], which loads settings, sets up tracing
//! and maps outcomes to exit codes.

use clap::Parser;
use mapillary_downloader::cli::Cli;
use std::process::ExitCode;
use std::time::Duration;

/// How long the exit waits for blocking work still running (see `main`).
const BLOCKING_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    tune_allocator();
    raise_open_files_limit();
    let cli = Cli::parse();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => {
            let code = runtime.block_on(mapillary_downloader::cli::commands::run(cli));
            // A blocking write abandoned at shutdown (a tar on a stuck disk)
            // must not keep the process alive: everything it does is
            // crash-safe, so give it a moment, then leave.
            runtime.shutdown_timeout(BLOCKING_GRACE);
            code
        }
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8 per
/// core), and the blocking pool's write threads leave freed ~100 KB image
/// buffers stranded in each: ~25 MB of RSS holding no live data. Two arenas,
/// and a fixed 64 KiB mmap threshold so image-sized buffers go back to the OS
/// when freed, keep a 32-worker daemon within the 64 MB memory target
/// (`cargo bench --bench daemon`). Runs before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters, and no other thread
    // is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// The API serves up to `api.max_connections` (4,096) connections, and
/// workers, SQLite and the CDN need descriptors too: the usual soft limit of
/// 1,024 would make a connection flood fail accepts (and writes). Raise the
/// soft limit to the hard one, as far as the kernel allows.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
