//! The one piece of test setup that needs the daemon's own types, so it
//! cannot live in `mld-testkit` (which must not depend on this crate): the
//! daemon running in the test's process, on `127.0.0.1:0`, with a real
//! SQLite file (or a PostgreSQL queue, see [`postgres_queue_for`]),
//! configured from the kit's test environment.
//!
//! Used as `mod common;` by the tests that run the daemon in-process
//! (`daemon.rs`, `crash_resume.rs`); everything else comes from the kit.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use mapillary_downloader::app::{Application, RunningApplication};
use mapillary_downloader::config::{API_URL_ENV, FlagOverrides, Settings};
use mapillary_downloader::secret::Secret;
use mld_testkit::api_client::ApiClient;
use mld_testkit::env;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Settings for an in-process daemon: the kit's [`env::FAST_SETTINGS`], the
/// fake's URL, then `extra`. Two differences from a child's environment
/// ([`env::test_env`]): 250-image pages (these tests archive thousands of
/// images) and warn-level logs (they print straight into the test's output).
/// The token is no setting: [`TestDaemon::start`] takes it.
pub fn test_settings(
    api_url: &str,
    data_dir: &Path,
    workers: u32,
    extra: &[(&str, &str)],
) -> Settings {
    let mut vars: HashMap<String, String> = env::FAST_SETTINGS
        .iter()
        .copied()
        .chain([
            (API_URL_ENV, api_url),
            ("MLD__MAPILLARY__PAGE_SIZE", "250"),
            ("MLD__LOG__LEVEL", "warn"),
        ])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(url) = postgres_queue_for(data_dir) {
        vars.insert("MLD__STORAGE__DATABASE_URL".into(), url);
        vars.insert("MLD__STORAGE__SHARED_FILESYSTEM".into(), "true".into());
    }
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let flags = FlagOverrides {
        config_file: None,
        data_dir: Some(data_dir.to_path_buf()),
        archive_url: None,
        database_url: None,
        listen: Some("127.0.0.1:0".into()),
        workers: Some(workers),
    };
    Settings::load_from(&flags, &vars).expect("test settings")
}

/// With `MLD_TEST_QUEUE=postgres`, the daemon tests that make sense there
/// run on a PostgreSQL queue: a fresh database of the test binary's cluster
/// per data dir (the same one when a test restarts on it), the archive on the
/// local disk, marked shared. `scripts/test` runs its list of those tests a
/// second time so. Any other value is refused rather than ignored.
fn postgres_queue_for(data_dir: &Path) -> Option<String> {
    static DATABASES: std::sync::LazyLock<std::sync::Mutex<HashMap<PathBuf, String>>> =
        std::sync::LazyLock::new(Default::default);
    match std::env::var("MLD_TEST_QUEUE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => {
            let mut databases = DATABASES.lock().unwrap();
            let url = databases
                .entry(data_dir.to_path_buf())
                .or_insert_with(|| mld_testkit::postgres::PgCluster::shared().fresh_database());
            Some(url.clone())
        }
        Ok(other) => panic!("MLD_TEST_QUEUE={other}: use postgres, or leave it unset for SQLite"),
    }
}

/// The daemon in this process; its API client is reachable through `Deref`
/// (`daemon.post_job(..)`). Dropping it aborts the daemon; `stop` is graceful.
pub struct TestDaemon {
    api: ApiClient,
    archive_dir: PathBuf,
    app: RunningApplication,
}

impl TestDaemon {
    pub async fn start(settings: Settings, token: &str) -> TestDaemon {
        mapillary_downloader::telemetry::init(&settings.log);
        let app = Application::build(&settings, Secret::new(token))
            .await
            .expect("daemon starts")
            .spawn();
        if std::env::var("MLD_TEST_QUEUE").as_deref() == Ok("postgres") {
            assert!(
                !settings.database_path().exists(),
                "MLD_TEST_QUEUE=postgres, yet the daemon made a SQLite file"
            );
        }
        TestDaemon {
            api: ApiClient::new(format!("http://{}", app.local_addr())),
            archive_dir: settings.archive_dir(),
            app,
        }
    }

    /// Graceful shutdown, as SIGTERM would do.
    pub async fn stop(self) {
        self.app.stop().await.expect("daemon shut down cleanly");
    }

    pub fn archive_dir(&self) -> &Path {
        &self.archive_dir
    }
}

impl std::ops::Deref for TestDaemon {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// Image ids the database calls done in job `job`, read the way the daemon
/// would.
pub async fn done_ids(db: &Path, job: i64) -> std::collections::HashSet<String> {
    let store = mapillary_downloader::store::Store::open(db).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let page = store.finished_images(job, after, 2000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.row_id);
        ids.extend(page.into_iter().map(|i| i.meta.id));
    }
    store.close().await;
    ids
}

/// States of the packings not yet cleaned, read beside a running daemon.
pub async fn unfinished_packings(db: &Path) -> Vec<String> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return Vec::new();
    };
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM packings WHERE state <> 'cleaned'")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    pool.close().await;
    states
}
