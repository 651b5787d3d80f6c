//! Glue for each subcommand: load settings, check the token, run the library
//! piece, and map the result to SPEC's exit codes (0 success, 1 runtime
//! failure or images failed for good, 2 usage, config or token error,
//! 130 interrupted).

use crate::cli::{Cli, Command};
use crate::config::{self, FlagOverrides, Settings};
use crate::oneshot::{self, DownloadRequest, RunEnd};
use crate::{app, status, telemetry};
use std::process::ExitCode;

/// A usage/config/token problem (exit 2), as opposed to a runtime failure (exit 1).
fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

/// Runs the parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            let flags = FlagOverrides {
                config_file: cli.config,
                data_dir: args.data_dir,
                listen: args.listen,
                workers: args.workers,
            };
            let settings = match Settings::load(&flags) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            let token = match config::token_from_env() {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            telemetry::init(&settings.log);
            let application = match app::Application::build(&settings, token).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("{e:#}");
                    return ExitCode::from(1);
                }
            };
            tracing::info!(address = %application.local_addr(), "listening on http://{}", application.local_addr());
            match application.run_until(app::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Download(args) => {
            let flags = FlagOverrides {
                config_file: cli.config,
                data_dir: args.data_dir,
                listen: None,
                workers: args.workers,
            };
            let mut settings = match Settings::load(&flags) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            let request = DownloadRequest {
                usernames: args.usernames,
                quality: args.quality,
                bbox: args.bbox,
            };
            if let Err(e) = oneshot::validate_request(&request) {
                return usage_error(e);
            }
            let token = match config::token_from_env() {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            // Bars and info logs fight over a terminal; keep logs to warnings there.
            if std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("RUST_LOG").is_none()
            {
                settings.log.level = "warn".into();
            }
            telemetry::init(&settings.log);
            if args.dry_run {
                return dry_run(&settings, token, &request).await;
            }
            match oneshot::download(&settings, token, &request, app::shutdown_signal()).await {
                Ok(RunEnd::Archived) => ExitCode::SUCCESS,
                Ok(RunEnd::SomeFailed | RunEnd::Stalled) => ExitCode::from(1),
                Ok(RunEnd::TokenRejected) => {
                    eprintln!(
                        "error: Mapillary rejected the access token: set a valid {}",
                        config::TOKEN_ENV
                    );
                    ExitCode::from(2)
                }
                Ok(RunEnd::Interrupted) => {
                    eprintln!("interrupted: run the same command again to resume");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Healthcheck(args) => {
            let settings = match Settings::load(&FlagOverrides {
                config_file: cli.config,
                ..FlagOverrides::default()
            }) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            healthcheck(&settings, args.url).await
        }
        Command::Status(args) => {
            let flags = FlagOverrides {
                config_file: cli.config,
                data_dir: args.data_dir,
                ..FlagOverrides::default()
            };
            let settings = match Settings::load(&flags) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            match status::print_status(&settings.database_path(), args.json).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
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
async fn dry_run(
    settings: &Settings,
    token: config::Secret,
    request: &DownloadRequest,
) -> ExitCode {
    let client = match app::client_settings(settings)
        .and_then(|cs| Ok(crate::mapillary::MapillaryClient::new(cs, token)?))
    {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    for username in &request.usernames {
        match oneshot::estimate(&client, settings, username, request.quality, request.bbox).await {
            Ok(estimate) => println!("{}", oneshot::estimate_line(&estimate, request.quality)),
            Err(e) if e.decision() == crate::mapillary::RetryDecision::PauseJob => {
                return usage_error(format!(
                    "Mapillary rejected the access token ({e}): set a valid {}",
                    config::TOKEN_ENV
                ));
            }
            Err(e) => {
                eprintln!("error: listing {username}'s images failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
