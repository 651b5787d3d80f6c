//! Typed, layered settings.
//!
//! Layers, last wins: `config/default.toml` (embedded in the binary so it runs
//! from any directory), an optional `--config FILE`, environment variables
//! `MLD__<SECTION>__<KEY>`, `MAPILLARY_API_URL`, then command-line flags.
//! Every key of a file or an `MLD__` variable must be one the defaults know: a
//! misspelt setting is an error naming it, its source and the closest known
//! key, never a silent default. Values are checked after merging, and an
//! error names the key and the layer that set it.
//!
//! Secrets may come from files (`MAPILLARY_TOKEN_FILE`, `api.token_file`), the
//! convention of Docker and Kubernetes secrets; a variable and its file both
//! set is an error, so nobody wonders which one won.

pub use crate::secret::Secret;

pub mod errors;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults file, compiled in.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");
/// Environment variable holding the Mapillary access token.
pub const TOKEN_ENV: &str = "MAPILLARY_TOKEN";
/// Environment variable naming a file that holds the Mapillary access token.
pub const TOKEN_FILE_ENV: &str = "MAPILLARY_TOKEN_FILE";
/// Environment variable overriding the API base URL.
pub const API_URL_ENV: &str = "MAPILLARY_API_URL";
/// `api.allowed_hosts` as a variable: `nas.lan,192.168.1.20`.
const ALLOWED_HOSTS_ENV: &str = "MLD__API__ALLOWED_HOSTS";
const ENV_PREFIX: &str = "MLD";
const ENV_SEPARATOR: &str = "__";

/// Debug shows what Display shows: the `config` crate's own Debug holds
/// the value that failed.
#[derive(thiserror::Error)]
pub enum ConfigError {
    /// Shown without the value that failed (see [`crate::config::errors`]).
    #[error("{}", crate::config::errors::describe(.0))]
    Load(#[from] config::ConfigError),
    /// A config file that is not TOML: where, never the line's text.
    #[error("{0}")]
    Syntax(#[from] crate::config::errors::SyntaxError),
    /// A value that breaks its rule, named with the layer that set it.
    #[error("invalid value for `{key}` (set by {layer}): {reason}")]
    Invalid {
        /// `section.key`.
        key: &'static str,
        /// The defaults, a file, a variable or a flag.
        layer: String,
        /// The rule it breaks (never the value).
        reason: String,
    },
    #[error("unknown setting `{key}` in {origin}{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    /// A setting no default knows (a misspelling), with the closest known one.
    UnknownKey {
        /// The key as written.
        key: String,
        /// The file or variable that named it.
        origin: String,
        /// The nearest known key, when one is near.
        suggestion: Option<String>,
    },
    /// No Mapillary token: nothing can be listed or downloaded.
    #[error(
        "{TOKEN_ENV} is not set: export your Mapillary access token (it looks like MLY|<app id>|<hex>) as {TOKEN_ENV}, or put it in a file named by {TOKEN_FILE_ENV}"
    )]
    MissingToken,
    /// A secret set both directly and by a file, or a file that cannot be read.
    #[error("{0}")]
    Secret(String),
}

impl std::fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigError({self})")
    }
}

/// Every setting, merged from its layers and checked: what the daemon and the commands run by.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// `[mapillary]`: the API, its pace and timeouts.
    pub mapillary: MapillarySettings,
    /// `[retry]`: attempts and backoff per image.
    pub retry: RetrySettings,
    /// `[workers]`: concurrency, leases, shutdown grace.
    pub workers: WorkerSettings,
    /// `[jobs]`: stall detection and default re-sync.
    pub jobs: JobSettings,
    /// `[storage]`: data dir, archive and queue locations, free-space reserve.
    pub storage: StorageSettings,
    /// `[output]`: WebP quality and encoders.
    pub output: OutputSettings,
    /// `[archive]`: the Internet Archive check.
    pub archive: ArchiveSettings,
    /// `[api]`: the HTTP server.
    pub api: ApiSettings,
    /// `[log]`: level and format.
    pub log: LogSettings,
    /// `[cluster]`: daemons sharing a PostgreSQL queue.
    pub cluster: ClusterSettings,
    /// `[ia]`: the upload to the Internet Archive (endpoint, item limits, confirmation).
    pub ia: IaSettings,
}

/// `[ia]`: the Internet Archive upload.
#[derive(Debug, Clone, Deserialize)]
pub struct IaSettings {
    /// IA's S3-like API (`https://s3.us.archive.org`; a fake in tests).
    pub endpoint: String,
    /// Most bytes of tars in one item.
    pub max_item_bytes: u64,
    /// Most files in one item, its own files included.
    pub max_item_files: u64,
    /// How long a sent file may wait to appear in the item's metadata.
    pub confirm_timeout_secs: u64,
    /// First wait between two looks at the item's metadata (doubles).
    pub confirm_poll_ms: u64,
    /// Longest wait after a `503 SlowDown` without Retry-After.
    pub slowdown_max_secs: u64,
    /// Remove a local tar once confirmed: its images are then held on the
    /// Internet Archive only (`verify` says so; `--repair` leaves them).
    pub delete_after_confirm: bool,
}

impl IaSettings {
    /// Checks every value, naming the key and never echoing a value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_http_url("ia.endpoint", &self.endpoint)?;
        check_ranges(&[
            ("ia.max_item_bytes", self.max_item_bytes, 1, 1 << 40),
            ("ia.max_item_files", self.max_item_files, 3, 100_000),
            (
                "ia.confirm_timeout_secs",
                self.confirm_timeout_secs,
                1,
                30 * 86_400,
            ),
            ("ia.confirm_poll_ms", self.confirm_poll_ms, 1, 3_600_000),
            ("ia.slowdown_max_secs", self.slowdown_max_secs, 1, 86_400),
        ])
    }

    /// `ia.confirm_timeout_secs`.
    pub fn confirm_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.confirm_timeout_secs)
    }
}

/// Daemons sharing a PostgreSQL queue.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// A daemon silent (no heartbeat, by the database's clock) for this
    /// long is dead: the others hand its leases and tasks back at once
    /// rather than wait for them to expire. Daemons beat at least four
    /// times within it.
    pub dead_after_secs: u64,
}

/// `[output]`: how WebP jobs encode.
#[derive(Debug, Clone, Deserialize)]
pub struct OutputSettings {
    /// Lossy WebP quality, 0-100 (75 is cwebp's default).
    pub webp_quality: u32,
    /// 0: one per core.
    pub encode_threads: u32,
}

impl OutputSettings {
    /// How many images may be re-encoded at once.
    pub fn encode_threads(&self) -> usize {
        match self.encode_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        }
    }
}

/// `[archive]`: whether username jobs first ask the Internet Archive.
#[derive(Debug, Clone, Deserialize)]
pub struct ArchiveSettings {
    /// End a username job at once when its collection is already an Internet Archive item.
    pub skip_if_on_ia: bool,
    /// Base URL of the Internet Archive (tests point it at a fake).
    pub ia_url: String,
}

/// `[mapillary]`: where the Graph API is and how hard we may use it.
#[derive(Debug, Clone, Deserialize)]
pub struct MapillarySettings {
    /// Base URL of the Graph API (`MAPILLARY_API_URL` overrides it).
    pub url: String,
    /// Images per `GET /images` page (1..=2000).
    pub page_size: u32,
    /// Ceiling on API calls per minute, shared by every job and worker.
    pub calls_per_minute: u32,
    /// Seconds to wait for a connection before the attempt fails.
    pub connect_timeout_secs: u64,
    /// Seconds a whole API call may take.
    pub request_timeout_secs: u64,
    /// Seconds one image download may take, request to last byte.
    pub download_timeout_secs: u64,
    /// Seconds without a byte after which a transfer counts as stalled.
    pub read_idle_timeout_secs: u64,
    /// Largest image body accepted; a larger one is a transient fault.
    pub max_image_bytes: u64,
    /// A stored URL expiring within this many seconds is refreshed first.
    pub url_refresh_margin_secs: u64,
}

/// `[retry]`: how often an image is tried and how far apart.
#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    /// Attempts per image before it fails for good (rate limits and the like cost none).
    pub max_attempts: u32,
    /// First retry delay; each further attempt doubles it, with jitter.
    pub backoff_base_ms: u64,
    /// Upper bound of a retry delay.
    pub backoff_cap_ms: u64,
}

/// `[workers]`: how many images at once and how long a claim holds.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Concurrent image downloads.
    pub count: u32,
    /// Seconds a claimed image stays leased before another worker may reclaim it.
    pub lease_secs: u64,
    /// Pause between checks for due work while the queue is idle.
    pub poll_interval_ms: u64,
    /// Seconds in-flight images may take to finish after a stop signal.
    pub shutdown_grace_secs: u64,
}

/// `[jobs]`: how jobs are watched and re-synced by default.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Seconds with work and no progress after which a job is marked stalled.
    pub stall_after_secs: u64,
    /// Default re-sync interval of new jobs ("" = none).
    pub resync_every: String,
}

/// `[storage]`: where the database, the archive and the queue live.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    /// Where the SQLite database, the local archive and the spool live.
    pub data_dir: PathBuf,
    /// MiB kept free on the data dir's filesystem (0: no check), so the database can record a pause.
    pub min_free_mib: u64,
    /// Where the archive goes: empty = `<data_dir>/archive`; `s3://bucket/prefix`
    /// = an S3-compatible bucket configured by the `AWS_*` variables.
    pub archive_url: String,
    /// Where the job queue lives: empty = SQLite at `<data_dir>/mapillary.db`;
    /// `postgres://…` = a PostgreSQL database several daemons share. A
    /// secret: it may hold a password.
    pub database_url: Secret,
    /// With PostgreSQL and a local-disk archive: `true` says `data_dir` is
    /// one filesystem every daemon shares (NFS, CephFS...). Without it such a
    /// setup would split one archive across machines, so it is refused.
    pub shared_filesystem: bool,
    /// The `AWS_*` variables seen at load (for an `s3://` archive). Never
    /// printed: Debug shows the names only.
    #[serde(skip)]
    pub aws: crate::archive::bucket::AwsEnvironment,
}

/// `[api]`: where the HTTP server listens, its limits and its token.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    /// Address the HTTP API binds.
    pub listen: String,
    /// Seconds a client may take to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Seconds a whole request may take.
    pub request_timeout_secs: u64,
    /// Seconds an answer may wait unread before the connection closes.
    pub write_timeout_secs: u64,
    /// Seconds a connection may live.
    pub max_connection_age_secs: u64,
    /// Connections held at once.
    pub max_connections: u64,
    /// Connections one address may hold at once.
    pub max_connections_per_ip: u64,
    /// Host names (no port) trusted besides the loopback names and the
    /// listen address when no token is set.
    pub allowed_hosts: Vec<String>,
    /// The bearer token the API requires (empty: none, loopback hosts only).
    pub token: Secret,
    /// A file holding the token instead (read once at load; then `token`).
    pub token_file: PathBuf,
}

/// The HTTP server's limits, from `[api]`. A settings type, so it lives
/// here, below `api::server` which reads it (config imports nothing from
/// `api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A client that has not sent its headers by then is cut.
    pub header_read_timeout: Duration,
    /// A request still running by then is answered 408.
    pub request_timeout: Duration,
    /// An answer the client leaves unread this long closes the connection.
    pub write_timeout: Duration,
    /// A connection is closed (after its request in flight) at this age.
    pub max_connection_age: Duration,
    /// Connections held at once (the longest idle goes when all are held).
    pub max_connections: usize,
    /// Connections one address may hold, so one client cannot take them all.
    pub max_connections_per_ip: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(600),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

/// Shortest `api.token` accepted: a short token falls to guessing.
pub const MIN_API_TOKEN_CHARS: usize = 16;

/// `[log]`: what tracing prints and how.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// A tracing filter (`info`, `mapillary_downloader=debug`, ...).
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `--config`: a TOML file over the defaults.
    pub config_file: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--archive-url`.
    pub archive_url: Option<String>,
    /// `--database-url` (a secret once loaded).
    pub database_url: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--workers`.
    pub workers: Option<u32>,
}

/// The `MLD__SECTION__KEY` variable of a `section.key` setting.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

/// Where a key's final value came from, for error messages.
fn layer_of(key: &str, flags: &FlagOverrides, vars: &HashMap<String, String>) -> String {
    let flag = match key {
        "storage.data_dir" => flags.data_dir.is_some().then_some("--data-dir"),
        "storage.archive_url" => flags.archive_url.is_some().then_some("--archive-url"),
        "storage.database_url" => flags.database_url.is_some().then_some("--database-url"),
        "api.listen" => flags.listen.is_some().then_some("--listen"),
        "workers.count" => flags.workers.is_some().then_some("--workers"),
        _ => None,
    };
    if let Some(flag) = flag {
        return format!("the {flag} flag");
    }
    if key == "mapillary.url" && vars.contains_key(API_URL_ENV) {
        return format!("the {API_URL_ENV} environment variable");
    }
    let env = env_name(key);
    if vars.contains_key(&env) {
        return format!("the {env} environment variable");
    }
    if let Some(path) = &flags.config_file
        && file_keys(path).is_ok_and(|keys| keys.contains(key))
    {
        return format!("the config file {}", path.display());
    }
    "the defaults (config/default.toml)".to_string()
}

/// Every `section.key` a TOML source defines.
fn keys_of(source: config::Config) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let Ok(table) = source.try_deserialize::<HashMap<String, config::Value>>() else {
        return keys;
    };
    for (section, value) in table {
        match value.into_table() {
            Ok(inner) => keys.extend(inner.into_keys().map(|key| format!("{section}.{key}"))),
            // A top-level value: every setting lives in a section.
            Err(_) => {
                keys.insert(section);
            }
        }
    }
    keys
}

fn known_keys() -> BTreeSet<String> {
    keys_of(
        config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap_or_default(),
    )
}

fn file_keys(path: &Path) -> Result<BTreeSet<String>, config::ConfigError> {
    Ok(keys_of(
        config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()?,
    ))
}

/// Refuses any key of the config file or of an `MLD__` variable that the
/// defaults do not define, naming the closest known key.
fn check_known_keys(
    flags: &FlagOverrides,
    vars: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let known = known_keys();
    let unknown = |key: String, origin: String| ConfigError::UnknownKey {
        suggestion: closest(&key, &known),
        key,
        origin,
    };
    if let Some(path) = &flags.config_file
        && let Some(key) = file_keys(path)?.into_iter().find(|k| !known.contains(k))
    {
        return Err(unknown(key, format!("the config file {}", path.display())));
    }
    let mut names: Vec<&String> = vars
        .keys()
        .filter(|name| name.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
        .collect();
    names.sort();
    for name in names {
        let key = name[ENV_PREFIX.len() + ENV_SEPARATOR.len()..]
            .to_lowercase()
            .replace(ENV_SEPARATOR, ".");
        if !known.contains(&key) {
            return Err(unknown(key, format!("the {name} environment variable")));
        }
    }
    Ok(())
}

/// The known key nearest to `key` by edit distance, if it is near enough to
/// be a likely typo.
fn closest(key: &str, known: &BTreeSet<String>) -> Option<String> {
    let (best, distance) = known
        .iter()
        .map(|k| (k, edit_distance(key, k)))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (key.len() / 3).max(2)).then(|| best.clone())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Settings {
    /// Loads every layer from the real environment.
    pub fn load(flags: &FlagOverrides) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Settings::load_from(flags, &vars)
    }

    /// Loads every layer with an explicit environment, so tests need not touch
    /// the process environment.
    pub fn load_from(
        flags: &FlagOverrides,
        vars: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        if let Some(path) = &flags.config_file
            && !path.is_file()
        {
            return Err(ConfigError::Invalid {
                key: "--config",
                layer: "the --config flag".into(),
                reason: format!("{} is not a readable file", path.display()),
            });
        }
        if let Some(path) = &flags.config_file {
            crate::config::errors::check_syntax(path)?;
        }
        check_known_keys(flags, vars)?;
        let mut settings: Settings = merged_layers(flags, vars)?.try_deserialize()?;
        let invalid = |(key, reason): (&'static str, String)| ConfigError::Invalid {
            key,
            layer: layer_of(key, flags, vars),
            reason,
        };
        settings.validate().map_err(invalid)?;
        // Every image row stores its full path: one spelling per directory
        // (`./d`, `d/`, `/home/u/d` and a symlink to it alike) keeps those
        // paths comparable; see `Store::rebase_archive`.
        let absolute = std::path::absolute(&settings.storage.data_dir)
            .map_err(|e| invalid(("storage.data_dir", format!("cannot make it absolute: {e}"))))?;
        settings.storage.data_dir = std::fs::canonicalize(&absolute).unwrap_or(absolute);
        settings.api.token = settings.api_token_from_file().map_err(invalid)?;
        settings.check_api_token().map_err(invalid)?;
        settings.storage.aws = crate::archive::bucket::AwsEnvironment::from_vars(vars);
        Ok(settings)
    }

    /// Checks serde cannot express, one function per section so a new
    /// section adds one line here. Returns the offending key and why.
    fn validate(&self) -> Result<(), Invalid> {
        self.validate_mapillary()?;
        self.validate_api()?;
        self.validate_output()?;
        self.validate_retry()?;
        self.validate_workers()?;
        self.validate_jobs()?;
        self.validate_storage()?;
        self.validate_cluster()?;
        self.validate_archive()?;
        self.ia.validate()?;
        self.validate_log()
    }

    /// `[mapillary]`: the API's URL and the client's limits and timeouts.
    fn validate_mapillary(&self) -> Result<(), Invalid> {
        let m = &self.mapillary;
        check_http_url("mapillary.url", &m.url)?;
        check_ranges(&[
            ("mapillary.page_size", m.page_size.into(), 1, 2000),
            (
                "mapillary.calls_per_minute",
                m.calls_per_minute.into(),
                1,
                1_000_000,
            ),
            (
                "mapillary.connect_timeout_secs",
                m.connect_timeout_secs,
                1,
                3600,
            ),
            (
                "mapillary.request_timeout_secs",
                m.request_timeout_secs,
                1,
                3600,
            ),
            (
                "mapillary.download_timeout_secs",
                m.download_timeout_secs,
                1,
                86_400,
            ),
            (
                "mapillary.read_idle_timeout_secs",
                m.read_idle_timeout_secs,
                1,
                3600,
            ),
            (
                "mapillary.max_image_bytes",
                m.max_image_bytes,
                1024,
                1 << 34,
            ),
            (
                "mapillary.url_refresh_margin_secs",
                m.url_refresh_margin_secs,
                0,
                86_400,
            ),
        ])
    }

    /// `[api]`: the server's timeouts and connection caps, and the extra
    /// host names it trusts.
    fn validate_api(&self) -> Result<(), Invalid> {
        let a = &self.api;
        check_ranges(&[
            (
                "api.header_read_timeout_secs",
                a.header_read_timeout_secs,
                1,
                3600,
            ),
            ("api.request_timeout_secs", a.request_timeout_secs, 1, 3600),
            ("api.write_timeout_secs", a.write_timeout_secs, 1, 3600),
            (
                "api.max_connection_age_secs",
                a.max_connection_age_secs,
                1,
                7 * 86_400,
            ),
            ("api.max_connections", a.max_connections, 2048, 1_000_000),
            (
                "api.max_connections_per_ip",
                a.max_connections_per_ip,
                1,
                1_000_000,
            ),
        ])?;
        self.listen_addr()
            .map_err(|reason| ("api.listen", reason))?;
        for host in a.allowed_hosts.iter().filter(|h| !h.trim().is_empty()) {
            check_host_name(host).map_err(|reason| ("api.allowed_hosts", reason))?;
        }
        Ok(())
    }

    /// `[output]`: WebP quality and how many encoders run at once.
    fn validate_output(&self) -> Result<(), Invalid> {
        let o = &self.output;
        check_ranges(&[
            ("output.webp_quality", o.webp_quality.into(), 0, 100),
            ("output.encode_threads", o.encode_threads.into(), 0, 256),
        ])
    }

    /// `[retry]`: attempts and a backoff whose cap is not below its base.
    fn validate_retry(&self) -> Result<(), Invalid> {
        let r = &self.retry;
        check_ranges(&[
            ("retry.max_attempts", r.max_attempts.into(), 1, 1000),
            ("retry.backoff_base_ms", r.backoff_base_ms, 1, 86_400_000),
            (
                "retry.backoff_cap_ms",
                r.backoff_cap_ms,
                r.backoff_base_ms,
                86_400_000,
            ),
        ])
    }

    /// `[workers]`: a lease that expires mid-download lets a second worker
    /// take the image, so it outlasts the download timeout by a minute.
    fn validate_workers(&self) -> Result<(), Invalid> {
        let w = &self.workers;
        let min_lease = self.mapillary.download_timeout_secs + 60;
        check_ranges(&[
            ("workers.count", w.count.into(), 1, 1024),
            ("workers.lease_secs", w.lease_secs, min_lease, 86_400),
            ("workers.poll_interval_ms", w.poll_interval_ms, 1, 60_000),
            (
                "workers.shutdown_grace_secs",
                w.shutdown_grace_secs,
                0,
                3600,
            ),
        ])
    }

    /// `[jobs]`: the stall mark and the default re-sync interval.
    fn validate_jobs(&self) -> Result<(), Invalid> {
        let stall = self.jobs.stall_after_secs;
        check_ranges(&[("jobs.stall_after_secs", stall, 1, 30 * 86_400)])?;
        // The parser's message quotes the value: said without it here.
        self.default_resync().map_err(|_| {
            let reason = "is not an interval like \"90m\", \"6h\" or \"7d\" (at least 10 minutes)";
            ("jobs.resync_every", reason.to_string())
        })?;
        Ok(())
    }

    /// `[storage]`: the data dir, the free-space reserve, the archive and
    /// queue URLs, and a shared queue never split over local disks.
    fn validate_storage(&self) -> Result<(), Invalid> {
        let s = &self.storage;
        check_ranges(&[("storage.min_free_mib", s.min_free_mib, 0, 1 << 20)])?;
        if s.data_dir.as_os_str().is_empty() {
            return Err(("storage.data_dir", "must not be empty".into()));
        }
        // `ArchiveUrl::parse` says what is wrong without the value.
        self.archive_url()
            .map_err(|reason| ("storage.archive_url", reason))?;
        let shared_queue = self
            .database_url()
            .map_err(|reason| ("storage.database_url", reason))?
            .is_some();
        if shared_queue && s.archive_url.trim().is_empty() && !s.shared_filesystem {
            let reason = "storage.database_url is a shared PostgreSQL queue but the archive is on this \
                          machine's disk: every daemon would keep part of one archive. Set \
                          storage.archive_url to an s3:// bucket, or set shared_filesystem = true if \
                          storage.data_dir is one filesystem all daemons share"
                .to_string();
            return Err(("storage.shared_filesystem", reason));
        }
        Ok(())
    }

    /// `[cluster]`: a dead mark daemons can beat four times within.
    fn validate_cluster(&self) -> Result<(), Invalid> {
        let dead_after = self.cluster.dead_after_secs;
        if !(4..=3600).contains(&dead_after) {
            let reason = format!("{dead_after} is out of range 4..=3600");
            return Err(("cluster.dead_after_secs", reason));
        }
        Ok(())
    }

    /// `[archive]`: where the Internet Archive is asked about items.
    fn validate_archive(&self) -> Result<(), Invalid> {
        check_http_url("archive.ia_url", &self.archive.ia_url)
    }

    /// `[log]`: a known format and a filter `tracing` accepts.
    fn validate_log(&self) -> Result<(), Invalid> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(("log.format", "must be \"text\" or \"json\"".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|_| {
            let reason = "is not a log filter (e.g. \"info\" or \"mapillary_downloader=debug\")";
            ("log.level", reason.to_string())
        })?;
        Ok(())
    }

    /// `api.token` (from the setting or its file) is empty or long enough.
    fn check_api_token(&self) -> Result<(), (&'static str, String)> {
        let chars = self.api.token.expose().chars().count();
        if chars == 0 || chars >= MIN_API_TOKEN_CHARS {
            return Ok(());
        }
        let key = if self.api.token_file.as_os_str().is_empty() {
            "api.token"
        } else {
            "api.token_file"
        };
        let reason = format!(
            "the API token is shorter than {MIN_API_TOKEN_CHARS} characters; use a long random one \
             (e.g. `openssl rand -hex 24`), or none to serve loopback only"
        );
        Err((key, reason))
    }

    /// `api.token`, or the contents of `api.token_file`; both set is an error.
    fn api_token_from_file(&self) -> Result<Secret, (&'static str, String)> {
        let file = &self.api.token_file;
        if file.as_os_str().is_empty() {
            // Trimmed like every other secret: a stray space from a shell or
            // a compose file must not make every request a 401.
            return Ok(Secret::new(self.api.token.expose().trim()));
        }
        if !self.api.token.is_empty() {
            let reason = "both api.token and api.token_file are set; set only one".to_string();
            return Err(("api.token_file", reason));
        }
        read_secret_file(file).map_err(|reason| ("api.token_file", reason))
    }

    /// `jobs.resync_every`: the re-sync interval a new job gets when its
    /// post does not say (`None`: never).
    pub fn default_resync(&self) -> Result<Option<Duration>, String> {
        let text = self.jobs.resync_every.trim();
        if text.is_empty() {
            return Ok(None);
        }
        crate::selection::parse_interval(text).map(Some)
    }

    /// The HTTP server's limits from `[api]`.
    pub fn api_limits(&self) -> HttpLimits {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        HttpLimits {
            header_read_timeout: Duration::from_secs(self.api.header_read_timeout_secs),
            request_timeout: Duration::from_secs(self.api.request_timeout_secs),
            write_timeout: Duration::from_secs(self.api.write_timeout_secs),
            max_connection_age: Duration::from_secs(self.api.max_connection_age_secs),
            max_connections: count(self.api.max_connections),
            max_connections_per_ip: count(self.api.max_connections_per_ip),
        }
    }

    /// The host names a request may name without a token besides the
    /// loopback names: the listen address's IP and `api.allowed_hosts`,
    /// lower-case, IPv6 in brackets (as a `Host` header spells them).
    pub fn trusted_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .api
            .allowed_hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        // An unspecified listen address (`0.0.0.0`, `[::]`, as in the Docker
        // image) names no host: a page at `http://0.0.0.0/` reaches loopback
        // on some systems, so it is not trusted.
        if let Ok(addr) = self.listen_addr().map(|a| a.ip())
            && !addr.is_unspecified()
        {
            hosts.push(match addr {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        hosts
    }

    /// The address `api.listen` names, or why it is not one.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.api
            .listen
            .parse()
            .map_err(|_| "is not an address like 127.0.0.1:8080".to_string())
    }

    /// The bearer token the HTTP API demands, if one is configured.
    pub fn api_token(&self) -> Option<&Secret> {
        (!self.api.token.is_empty()).then_some(&self.api.token)
    }

    /// The PostgreSQL URL `storage.database_url` gives; `None` for SQLite.
    /// Never shown in an error: it may hold a password.
    pub fn database_url(&self) -> Result<Option<&Secret>, String> {
        let url = self.storage.database_url.expose().trim();
        if url.is_empty() {
            return Ok(None);
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            return Err(format!(
                "must be empty (SQLite under storage.data_dir) or a postgres:// URL, not a {:?} URL",
                scheme.chars().take(20).collect::<String>()
            ));
        }
        Ok(Some(&self.storage.database_url))
    }

    /// The SQLite database under the data dir (used when no `database_url` is set).
    pub fn database_path(&self) -> PathBuf {
        self.storage.data_dir.join("mapillary.db")
    }

    /// The archive's root as a path: `<data_dir>/archive`, or the bucket
    /// URL (`s3://bucket/prefix`) whose keys mirror that layout.
    pub fn archive_dir(&self) -> PathBuf {
        match self.archive_url() {
            Ok(Some(url)) => url.root(),
            _ => self.storage.data_dir.join("archive"),
        }
    }

    /// The bucket `storage.archive_url` names; `None` for the local disk.
    pub fn archive_url(&self) -> Result<Option<crate::archive::bucket::ArchiveUrl>, String> {
        let url = self.storage.archive_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        crate::archive::bucket::ArchiveUrl::parse(url).map(Some)
    }

    /// How long a claim holds an image (`workers.lease_secs`).
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.workers.lease_secs)
    }
}

/// A setting that failed a check: its key and why (never its value).
type Invalid = (&'static str, String);

/// Each `(key, value, min, max)` in order; the first value outside
/// `min..=max` is the error. The value is not echoed: a misplaced secret
/// must not print.
fn check_ranges(ranges: &[(&'static str, u64, u64, u64)]) -> Result<(), Invalid> {
    for &(key, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            return Err((key, format!("the value is out of range {min}..={max}")));
        }
    }
    Ok(())
}

/// An http(s) URL with a host; the error does not echo it (it may hold
/// credentials).
fn check_http_url(key: &'static str, text: &str) -> Result<(), (&'static str, String)> {
    let url = url::Url::parse(text).map_err(|e| (key, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err((key, "must be an http(s) URL".into()));
    }
    Ok(())
}

/// A name as a `Host` header carries it, without the port: a DNS name or an
/// IPv4 address, or an IPv6 address in brackets.
fn check_host_name(host: &str) -> Result<(), String> {
    let host = host.trim();
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if plain || ipv6 {
        Ok(())
    } else {
        Err(
            "each entry must be a host name or address without scheme or port \
             (e.g. \"nas.lan\", \"192.168.1.20\", \"[fd00::1]\")"
                .into(),
        )
    }
}

/// Defaults, the config file, `MLD__` variables, `MAPILLARY_API_URL` and
/// flags, merged in that order.
fn merged_layers(
    flags: &FlagOverrides,
    vars: &HashMap<String, String>,
) -> Result<config::Config, ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULTS_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(path) = &flags.config_file {
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(
                vars.iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && *k != ALLOWED_HOSTS_ENV)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
    );
    // A list: comma-separated in its variable (config's own list parsing
    // would also turn every other variable into numbers and booleans).
    if let Some(hosts) = vars.get(ALLOWED_HOSTS_ENV) {
        let hosts: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        builder = builder.set_override("api.allowed_hosts", hosts)?;
    }
    if let Some(url) = vars.get(API_URL_ENV).filter(|v| !v.trim().is_empty()) {
        builder = builder.set_override("mapillary.url", url.trim())?;
    }
    if let Some(dir) = &flags.data_dir {
        builder = builder.set_override("storage.data_dir", dir.to_string_lossy().to_string())?;
    }
    if let Some(url) = &flags.archive_url {
        builder = builder.set_override("storage.archive_url", url.as_str())?;
    }
    if let Some(url) = &flags.database_url {
        builder = builder.set_override("storage.database_url", url.as_str())?;
    }
    if let Some(listen) = &flags.listen {
        builder = builder.set_override("api.listen", listen.as_str())?;
    }
    if let Some(workers) = flags.workers {
        builder = builder.set_override("workers.count", workers)?;
    }
    Ok(builder.build()?)
}

/// Reads a secret from a file, trimmed. The error names the file, never the
/// contents.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    let secret = Secret::new(text.trim());
    if secret.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    Ok(secret)
}

/// The Mapillary token from `MAPILLARY_TOKEN` or the file `MAPILLARY_TOKEN_FILE`
/// names. An empty variable (as a compose `.env` leaves it) counts as unset;
/// both set is an error, as is neither.
pub fn token_from(vars: &HashMap<String, String>) -> Result<Secret, ConfigError> {
    let set = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    match (set(TOKEN_ENV), set(TOKEN_FILE_ENV)) {
        (Some(_), Some(_)) => Err(ConfigError::Secret(format!(
            "both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set: set only one"
        ))),
        (Some(token), None) => Ok(Secret::new(token)),
        (None, Some(file)) => read_secret_file(Path::new(file))
            .map_err(|reason| ConfigError::Secret(format!("{TOKEN_FILE_ENV}: {reason}"))),
        (None, None) => Err(ConfigError::MissingToken),
    }
}

/// The Mapillary token from the process environment ([`token_from`]).
pub fn token_from_env() -> Result<Secret, ConfigError> {
    let vars = std::env::vars().collect();
    token_from(&vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("workers.conut", "workers.count"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn every_known_key_is_section_dot_key() {
        let known = known_keys();
        assert!(known.contains("workers.count"), "{known:?}");
        assert!(known.contains("api.token_file"), "{known:?}");
        assert!(
            known.iter().all(|k| k.matches('.').count() == 1),
            "{known:?}"
        );
    }
}
