//! Entry point: parse the command line, start the runtime, and hand over to
//! [`mapillary_downloader::commands`], which loads settings, sets up tracing
//! and maps outcomes to exit codes.

use clap::Parser;
use mapillary_downloader::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(mapillary_downloader::commands::run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
