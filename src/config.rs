//! Typed, layered settings.
//!
//! Layers, last wins: `config/default.toml` (embedded in the binary so it runs
//! from any directory), an optional `--config FILE`, environment variables
//! `MLD__<SECTION>__<KEY>`, `MAPILLARY_API_URL`, then command-line flags.
//! Values are checked after merging, and an error names the key and the layer
//! that set it, so a user knows which file or variable to fix.

pub use crate::secret::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults file, compiled in.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");
/// Environment variable holding the Mapillary access token.
pub const TOKEN_ENV: &str = "MAPILLARY_TOKEN";
/// Environment variable overriding the API base URL.
pub const API_URL_ENV: &str = "MAPILLARY_API_URL";
const ENV_PREFIX: &str = "MLD";
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid value for `{key}` (set by {layer}): {reason}")]
    Invalid {
        key: &'static str,
        layer: String,
        reason: String,
    },
    #[error(
        "{TOKEN_ENV} is not set: export your Mapillary access token (it looks like MLY|<app id>|<hex>) as {TOKEN_ENV}"
    )]
    MissingToken,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub mapillary: MapillarySettings,
    pub retry: RetrySettings,
    pub workers: WorkerSettings,
    pub storage: StorageSettings,
    pub api: ApiSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MapillarySettings {
    pub url: String,
    pub page_size: u32,
    pub calls_per_minute: u32,
    pub connect_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub download_timeout_secs: u64,
    pub max_image_bytes: u64,
    pub url_refresh_margin_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub count: u32,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub min_free_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: String,
    pub token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub level: String,
    pub format: String,
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub workers: Option<u32>,
}

/// Where a key's final value came from, for error messages.
fn layer_of(
    key: &str,
    flags: &FlagOverrides,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> bool,
) -> String {
    let flag = match key {
        "storage.data_dir" => flags.data_dir.is_some().then_some("--data-dir"),
        "api.listen" => flags.listen.is_some().then_some("--listen"),
        "workers.count" => flags.workers.is_some().then_some("--workers"),
        _ => None,
    };
    if let Some(flag) = flag {
        return format!("the {flag} flag");
    }
    if key == "mapillary.url" && env(API_URL_ENV) {
        return format!("the {API_URL_ENV} environment variable");
    }
    let env_name = format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    );
    if env(&env_name) {
        return format!("the {env_name} environment variable");
    }
    if let Some(path) = file {
        let defines = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()
            .is_ok_and(|c| c.get::<config::Value>(key).is_ok());
        if defines {
            return format!("the config file {}", path.display());
        }
    }
    "the defaults (config/default.toml)".to_string()
}

impl Settings {
    /// Loads every layer from the real environment.
    pub fn load(flags: &FlagOverrides) -> Result<Settings, ConfigError> {
        let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
        Settings::load_from(flags, &vars)
    }

    /// Loads every layer with an explicit environment, so tests need not touch
    /// the process environment.
    pub fn load_from(
        flags: &FlagOverrides,
        vars: &std::collections::HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = &flags.config_file {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    layer: "the --config flag".into(),
                    reason: format!("{} is not a readable file", path.display()),
                });
            }
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(
                vars.iter()
                    .filter(|(k, _)| k.starts_with("MLD__"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        builder = builder.add_source(env_source);
        if let Some(url) = vars.get(API_URL_ENV).filter(|v| !v.trim().is_empty()) {
            builder = builder.set_override("mapillary.url", url.trim())?;
        }
        if let Some(dir) = &flags.data_dir {
            builder =
                builder.set_override("storage.data_dir", dir.to_string_lossy().to_string())?;
        }
        if let Some(listen) = &flags.listen {
            builder = builder.set_override("api.listen", listen.as_str())?;
        }
        if let Some(workers) = flags.workers {
            builder = builder.set_override("workers.count", workers)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        let has_env = |name: &str| vars.contains_key(name);
        settings
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                key,
                layer: layer_of(key, flags, flags.config_file.as_deref(), &has_env),
                reason,
            })?;
        Ok(settings)
    }

    /// Range checks that serde cannot express. Returns the offending key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let m = &self.mapillary;
        let url = url::Url::parse(&m.url)
            .map_err(|e| ("mapillary.url", format!("{:?} is not a URL: {e}", m.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err((
                "mapillary.url",
                format!("{:?} must be an http(s) URL", m.url),
            ));
        }
        check_range("mapillary.page_size", m.page_size.into(), 1, 2000)?;
        check_range(
            "mapillary.calls_per_minute",
            m.calls_per_minute.into(),
            1,
            1_000_000,
        )?;
        check_range(
            "mapillary.connect_timeout_secs",
            m.connect_timeout_secs,
            1,
            3600,
        )?;
        check_range(
            "mapillary.request_timeout_secs",
            m.request_timeout_secs,
            1,
            3600,
        )?;
        check_range(
            "mapillary.download_timeout_secs",
            m.download_timeout_secs,
            1,
            86_400,
        )?;
        check_range(
            "mapillary.max_image_bytes",
            m.max_image_bytes,
            1024,
            1 << 34,
        )?;
        check_range(
            "mapillary.url_refresh_margin_secs",
            m.url_refresh_margin_secs,
            0,
            86_400,
        )?;
        let r = &self.retry;
        check_range("retry.max_attempts", r.max_attempts.into(), 1, 1000)?;
        check_range("retry.backoff_base_ms", r.backoff_base_ms, 1, 86_400_000)?;
        check_range(
            "retry.backoff_cap_ms",
            r.backoff_cap_ms,
            r.backoff_base_ms,
            86_400_000,
        )?;
        let w = &self.workers;
        check_range("workers.count", w.count.into(), 1, 1024)?;
        // A lease that expires mid-download lets a second worker take the image.
        let min_lease = self.mapillary.download_timeout_secs + 60;
        check_range("workers.lease_secs", w.lease_secs, min_lease, 86_400)?;
        check_range("workers.poll_interval_ms", w.poll_interval_ms, 1, 60_000)?;
        check_range(
            "workers.shutdown_grace_secs",
            w.shutdown_grace_secs,
            0,
            3600,
        )?;
        check_range(
            "storage.min_free_mib",
            self.storage.min_free_mib,
            0,
            1 << 20,
        )?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(("storage.data_dir", "must not be empty".into()));
        }
        self.listen_addr()
            .map_err(|reason| ("api.listen", reason))?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err((
                "log.format",
                format!("{:?} must be \"text\" or \"json\"", self.log.format),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            (
                "log.level",
                format!("{:?} is not a log filter: {e}", self.log.level),
            )
        })?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.api.listen.parse().map_err(|_| {
            format!(
                "{:?} is not an address like 127.0.0.1:8080",
                self.api.listen
            )
        })
    }

    /// The bearer token the HTTP API demands, if one is configured.
    pub fn api_token(&self) -> Option<&Secret> {
        (!self.api.token.is_empty()).then_some(&self.api.token)
    }

    pub fn database_path(&self) -> PathBuf {
        self.storage.data_dir.join("mapillary.db")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.storage.data_dir.join("archive")
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.workers.lease_secs)
    }
}

fn check_range(
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), (&'static str, String)> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err((key, format!("{value} is out of range {min}..={max}")))
    }
}

/// Reads `MAPILLARY_TOKEN`; a missing or blank one is the error users see first.
pub fn token_from(vars: &std::collections::HashMap<String, String>) -> Result<Secret, ConfigError> {
    vars.get(TOKEN_ENV)
        .map(|t| Secret::new(t.trim()))
        .filter(|t| !t.is_empty())
        .ok_or(ConfigError::MissingToken)
}

/// Reads `MAPILLARY_TOKEN` from the process environment.
pub fn token_from_env() -> Result<Secret, ConfigError> {
    let vars = std::env::vars().collect();
    token_from(&vars)
}
