//! The daemon's environment against the fake: one list for every test and
//! bench, as `(name, value)` pairs (what `Command::envs` and
//! `Settings::load_from` take).

/// The settings that make a daemon quick to test: retries after 20-200 ms
/// instead of seconds, 50 ms idle polling, no API rate ceiling worth the
/// name, 10 s timeouts and shutdown grace, and 100-image pages so even a
/// small user spans several pages.
pub const FAST_SETTINGS: &[(&str, &str)] = &[
    ("MLD__RETRY__BACKOFF_BASE_MS", "20"),
    ("MLD__RETRY__BACKOFF_CAP_MS", "200"),
    ("MLD__WORKERS__POLL_INTERVAL_MS", "50"),
    ("MLD__WORKERS__SHUTDOWN_GRACE_SECS", "10"),
    ("MLD__MAPILLARY__PAGE_SIZE", "100"),
    ("MLD__MAPILLARY__CALLS_PER_MINUTE", "600000"),
    ("MLD__MAPILLARY__REQUEST_TIMEOUT_SECS", "10"),
    ("MLD__MAPILLARY__DOWNLOAD_TIMEOUT_SECS", "10"),
];

/// What any daemon needs to run against the fake at `api_url`: the URL, the
/// token, and info-level logs (the child's port is read from one). Every
/// other setting is the default: the benchmark measures those.
pub fn daemon_env(api_url: &str, token: &str) -> Vec<(String, String)> {
    pairs(&[
        ("MAPILLARY_TOKEN", token),
        ("MAPILLARY_API_URL", api_url),
        ("MLD__LOG__LEVEL", "info"),
        ("RUST_LOG", "info"),
    ])
}

/// [`daemon_env`] plus [`FAST_SETTINGS`]: what tests run the daemon with.
pub fn test_env(api_url: &str, token: &str) -> Vec<(String, String)> {
    let mut env = daemon_env(api_url, token);
    for (key, value) in FAST_SETTINGS {
        set(&mut env, key, value);
    }
    env
}

/// Sets `key` to `value`, replacing an earlier value of `key`.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// `env` without `key`.
pub fn without(env: &[(String, String)], key: &str) -> Vec<(String, String)> {
    env.iter().filter(|(k, _)| k != key).cloned().collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_env_is_daemon_env_plus_the_fast_settings_once_each() {
        let env = test_env("http://127.0.0.1:1/", "MLY|1|x");
        assert_eq!(env.len(), 4 + FAST_SETTINGS.len());
        let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), env.len(), "no name twice");
        let mut env = env;
        set(&mut env, "MLD__MAPILLARY__PAGE_SIZE", "250");
        assert!(env.contains(&("MLD__MAPILLARY__PAGE_SIZE".into(), "250".into())));
        assert!(!env.contains(&("MLD__MAPILLARY__PAGE_SIZE".into(), "100".into())));
        assert!(
            without(&env, "MAPILLARY_TOKEN")
                .iter()
                .all(|(k, _)| k != "MAPILLARY_TOKEN")
        );
    }
}
