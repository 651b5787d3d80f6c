//! Glue for each subcommand: load settings, check the token, run the library
//! piece, and map the result to the documented exit codes (0 success, 1 runtime
//! failure or images failed for good, 2 usage, config or token error,
//! 130 interrupted).

use super::{estimate, progress};
use crate::cli::oneshot::{self, DownloadRequest, RunEnd};
use crate::cli::{
    Cli, Command, DownloadArgs, FailuresArgs, ServeArgs, StatusArgs, StorageArgs, UploadArgs,
    VerifyArgs,
};
use crate::config::{self, FlagOverrides, Settings};
use crate::model::Packaging;
use crate::selection::{Filters, JobSpec};
use crate::store::StoreError;
use crate::verify::{self, VerifyOptions};
use crate::{app, status, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

/// A usage/config/token problem (exit 2), as opposed to a runtime failure (exit 1).
fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

/// Runs the parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Serve(args) => serve(cli.config, args).await,
        Command::Download(args) => download(cli.config, args).await,
        Command::Healthcheck(args) => {
            let flags = FlagOverrides {
                config_file: cli.config,
                ..FlagOverrides::default()
            };
            match load(&flags) {
                Ok(settings) => Ok(healthcheck(&settings, args.url).await),
                Err(code) => Err(code),
            }
        }
        Command::Status(args) => status(cli.config, args).await,
        Command::Failures(args) => failures(cli.config, args).await,
        Command::Verify(args) => verify(cli.config, args).await,
        Command::Upload(args) => upload(cli.config, args).await,
    };
    outcome.unwrap_or_else(|code| code)
}

/// The settings, or exit 2 naming what is wrong. Every subcommand starts here.
fn load(flags: &FlagOverrides) -> Result<Settings, ExitCode> {
    Settings::load(flags).map_err(usage_error)
}

/// The settings' overrides that the storage flags and `--config` make.
fn storage_flags(config_file: Option<PathBuf>, storage: StorageArgs) -> FlagOverrides {
    FlagOverrides {
        config_file,
        data_dir: storage.data_dir,
        archive_url: storage.archive_url,
        database_url: storage.database_url,
        ..FlagOverrides::default()
    }
}

/// The Mapillary token, or exit 2 naming the variable.
fn token() -> Result<config::Secret, ExitCode> {
    config::token_from_env().map_err(usage_error)
}

/// `serve`: the daemon until SIGTERM/SIGINT.
async fn serve(config_file: Option<PathBuf>, args: ServeArgs) -> Result<ExitCode, ExitCode> {
    let settings = load(&FlagOverrides {
        listen: args.listen,
        workers: args.workers,
        ..storage_flags(config_file, args.storage)
    })?;
    let token = token()?;
    telemetry::init(&settings.log);
    let application = app::Application::build(&settings, token)
        .await
        .map_err(runtime_error)?;
    let address = application.local_addr();
    tracing::info!(%address, "listening on http://{address}");
    application
        .run_until(app::shutdown_signal())
        .await
        .map_err(runtime_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `download`: the engine in-process until the named users are archived.
async fn download(config_file: Option<PathBuf>, args: DownloadArgs) -> Result<ExitCode, ExitCode> {
    let mut settings = load(&FlagOverrides {
        workers: args.workers,
        ..storage_flags(config_file, args.storage)
    })?;
    let request = DownloadRequest {
        usernames: args.usernames,
        organizations: args.organizations,
        sequences: args.sequences,
        images: args.images,
        quality: args.quality,
        format: args.format,
        package: if args.tar || args.upload_ia {
            Packaging::Tar
        } else {
            Packaging::None
        },
        upload: args.upload_ia.then_some(crate::model::UploadTarget::Ia),
        filters: Filters {
            bbox: args.bbox,
            start_captured_at: args.since,
            end_captured_at: args.until,
            pano: args.pano.unwrap_or_default(),
        },
    };
    let specs = request.specs().map_err(usage_error)?;
    let token = token()?;
    if args.upload_ia {
        // Missing keys are said now, not after hours of downloading.
        crate::upload::credentials::IaCredentials::from_env().map_err(usage_error)?;
    }
    // Bars and info logs fight over a terminal; keep logs to warnings there.
    if std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("RUST_LOG").is_none()
    {
        settings.log.level = "warn".into();
    }
    telemetry::init(&settings.log);
    if args.dry_run {
        return Ok(dry_run(&settings, token, &specs).await);
    }
    let end = oneshot::download(&settings, token, &specs, app::shutdown_signal())
        .await
        .map_err(print_error)?;
    Ok(exit_code(end))
}

/// The exit code README documents for how a download ended, with the line
/// that says what to do when there is something to do.
fn exit_code(end: RunEnd) -> ExitCode {
    match end {
        RunEnd::Archived => ExitCode::SUCCESS,
        RunEnd::SomeFailed | RunEnd::Stalled => ExitCode::from(1),
        RunEnd::TokenRejected => {
            eprintln!(
                "error: Mapillary rejected the access token: set a valid {}",
                config::TOKEN_ENV
            );
            ExitCode::from(2)
        }
        RunEnd::Interrupted => {
            eprintln!("interrupted: run the same command again to resume");
            ExitCode::from(130)
        }
    }
}

/// `status`: the jobs table (or `GET /status`'s JSON) from the database.
async fn status(config_file: Option<PathBuf>, args: StatusArgs) -> Result<ExitCode, ExitCode> {
    let settings = load(&storage_flags(config_file, args.storage))?;
    status::print_status(&settings, args.json)
        .await
        .map_err(print_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `failures`: the failed images and why, from the database; exit 0 when
/// listed (even when there are some), 2 for a job that does not exist.
async fn failures(config_file: Option<PathBuf>, args: FailuresArgs) -> Result<ExitCode, ExitCode> {
    let settings = load(&storage_flags(config_file, args.storage))?;
    let store = status::open_reader(&settings).await.map_err(print_error)?;
    let options = crate::cli::failures::FailuresOptions {
        job: args.job,
        reason: args.reason,
        json: args.json,
    };
    let written =
        crate::cli::failures::write_failures(&store, options, &mut std::io::stdout().lock()).await;
    store.close().await;
    match written {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::NoSuchJob(_))) => Err(usage_error(e)),
        Err(e) => Err(print_error(e)),
    }
}

/// `verify`: re-reads every archived image; exit 0 clean, 1 problems.
async fn verify(config_file: Option<PathBuf>, args: VerifyArgs) -> Result<ExitCode, ExitCode> {
    let settings = load(&storage_flags(config_file, args.storage))?;
    let database = settings.database_path();
    let on_postgres = settings.database_url().map_err(usage_error)?.is_some();
    if !on_postgres && !database.exists() {
        return Err(usage_error(format!(
            "no database at {}: is --data-dir right?",
            database.display()
        )));
    }
    let archive = app::open_archive(&settings)
        .await
        .map_err(|e| usage_error(format!("{e:#}")))?;
    let store = open_for_verify(&settings, args.repair)
        .await
        .map(std::sync::Arc::new)
        .map_err(|e| usage_error(format!("{e:#}")))?;
    // Stored paths are mapped in memory, never rebased: a daemon beside us
    // (perhaps seeing the archive under another path) keeps its root.
    let recorded = store
        .recorded_archive_root()
        .await
        .map_err(|e| runtime_error(e.into()))?;
    let paths = verify::PathMap::new(&settings.archive_dir(), recorded);
    let total = match store.done_rows(args.job).await {
        Ok(total) => total,
        Err(e @ StoreError::NoSuchJob(_)) => return Err(usage_error(e)),
        Err(e) => return Err(runtime_error(e.into())),
    };
    let bar = progress::count_bar(total, "verifying", args.json);
    let options = VerifyOptions {
        job: args.job,
        repair: args.repair,
        threads: 0,
    };
    let target = verify::Target {
        archive: &archive,
        paths: &paths,
    };
    let report = verify::verify(&store, &target, &options, &|n| bar.set_position(n))
        .await
        .map_err(print_error)?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", verify::render(&report, args.repair));
    }
    store.close().await;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The store for `verify`: read-only (no migration, no rebase, no write)
/// unless it is to repair.
async fn open_for_verify(settings: &Settings, repair: bool) -> anyhow::Result<crate::store::Store> {
    use anyhow::Context;
    if repair {
        return app::open_store(settings).await;
    }
    match settings.database_url().map_err(anyhow::Error::msg)? {
        Some(url) => crate::store::Store::open_postgres_existing(url.expose().trim())
            .await
            .context("cannot read the PostgreSQL queue (storage.database_url)"),
        None => crate::store::Store::open_read_only(&settings.database_path())
            .await
            .with_context(|| {
                format!(
                    "cannot read the database {}",
                    settings.database_path().display()
                )
            }),
    }
}

/// A failure while running (exit 1) of a command without a log (status,
/// failures, verify, upload, a one-shot's end): said on stderr in full.
fn print_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(1)
}

/// A failure while running (exit 1), logged in full.
fn runtime_error(error: anyhow::Error) -> ExitCode {
    tracing::error!("{error:#}");
    ExitCode::from(1)
}

/// `healthcheck`: GET /healthz on the local daemon, exit 0 on 200.
async fn healthcheck(settings: &Settings, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match settings.listen_addr() {
            Ok(mut addr) => {
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}/healthz")
            }
            Err(e) => return usage_error(e),
        },
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(4))
        .build();
    match client.map(|c| c.get(&url)) {
        Ok(request) => match request.send().await {
            Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
            Ok(response) => {
                eprintln!("unhealthy: {url} answered {}", response.status());
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("unhealthy: {url}: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `download --dry-run`: count and size estimate, nothing written.
async fn dry_run(settings: &Settings, token: config::Secret, specs: &[JobSpec]) -> ExitCode {
    let client = match app::client_settings(settings)
        .and_then(|cs| Ok(crate::mapillary::MapillaryClient::new(cs, token)?))
    {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    for spec in specs {
        match estimate::estimate(&client, settings, spec).await {
            Ok(found) => println!("{}", estimate::estimate_line(&found, spec.quality)),
            Err(e) if e.decision() == crate::mapillary::RetryDecision::PauseJob => {
                return usage_error(format!(
                    "Mapillary rejected the access token ({e}): set a valid {}",
                    config::TOKEN_ENV
                ));
            }
            Err(e) => {
                eprintln!("error: enumerating {} failed: {e}", spec.selection);
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `upload`: each job's upload track until confirmed, paused, failed or
/// interrupted; `--dry-run` prints what it would send.
async fn upload(config_file: Option<PathBuf>, args: UploadArgs) -> Result<ExitCode, ExitCode> {
    use crate::upload::{command, run::UploadEnd};
    let settings = load(&FlagOverrides {
        config_file,
        data_dir: args.data_dir,
        database_url: args.database_url,
        ..FlagOverrides::default()
    })?;
    telemetry::init(&settings.log);
    let _lock = app::lock_data_dir(&settings).map_err(print_error)?;
    let store = std::sync::Arc::new(app::open_store(&settings).await.map_err(print_error)?);
    let uploader = command::uploader(&settings, store.clone()).map_err(usage_error)?;
    let jobs = command::jobs_to_upload(&store, args.job)
        .await
        .map_err(usage_error)?;
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        command::dry_run(&uploader, &jobs, &mut out)
            .await
            .map_err(print_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        cancel.cancel();
    });
    let end = command::run_tracks(&uploader, &jobs, &shutdown)
        .await
        .map_err(print_error)?;
    store.close().await;
    Ok(match end {
        UploadEnd::Confirmed => ExitCode::SUCCESS,
        UploadEnd::Paused(m) | UploadEnd::Failed(m) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        UploadEnd::Interrupted => {
            eprintln!("interrupted: run the same command again to resume");
            ExitCode::from(130)
        }
    })
}
