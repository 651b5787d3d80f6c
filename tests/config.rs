//! Layered configuration: defaults, file, env, flags; errors that name the key
//! and the layer; the token is never printable.

use mapillary_downloader::config::{ConfigError, FlagOverrides, Settings, token_from};
use std::collections::HashMap;
use std::path::PathBuf;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_without_any_file_on_disk() {
    let s = Settings::load_from(&FlagOverrides::default(), &env(&[])).unwrap();
    assert_eq!(s.mapillary.url, "https://graph.mapillary.com");
    assert_eq!(s.mapillary.page_size, 2000);
    // `./mapillary-data`, made absolute: stored image paths need one spelling.
    assert_eq!(
        s.storage.data_dir,
        std::env::current_dir().unwrap().join("mapillary-data")
    );
    assert_eq!(s.api.listen, "127.0.0.1:8080");
    assert!(s.api_token().is_none());
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[workers]\ncount = 3\n[mapillary]\npage_size = 500\ncalls_per_minute = 100\n",
    )
    .unwrap();
    let flags = FlagOverrides {
        config_file: Some(file.clone()),
        ..Default::default()
    };
    let vars = env(&[
        ("MLD__MAPILLARY__PAGE_SIZE", "700"),
        ("MAPILLARY_API_URL", "http://127.0.0.1:9/"),
    ]);
    let s = Settings::load_from(&flags, &vars).unwrap();
    assert_eq!(s.workers.count, 3, "file beats defaults");
    assert_eq!(s.mapillary.calls_per_minute, 100);
    assert_eq!(s.mapillary.page_size, 700, "env beats file");
    assert_eq!(s.mapillary.url, "http://127.0.0.1:9/");

    let flags = FlagOverrides {
        config_file: Some(file),
        workers: Some(9),
        data_dir: Some("/tmp/x".into()),
        archive_url: None,
        database_url: None,
        listen: Some("127.0.0.1:0".into()),
    };
    let s = Settings::load_from(&flags, &env(&[("MLD__WORKERS__COUNT", "5")])).unwrap();
    assert_eq!(s.workers.count, 9, "flags beat env");
    assert_eq!(s.storage.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(s.api.listen, "127.0.0.1:0");
}

#[test]
fn invalid_values_name_the_key_and_the_layer() {
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__MAPILLARY__PAGE_SIZE", "0")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mapillary.page_size"), "{err}");
    assert!(err.contains("MLD__MAPILLARY__PAGE_SIZE"), "{err}");

    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__WORKERS__COUNT", "many")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("workers.count"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[api]\nlisten = \"not an address\"\n").unwrap();
    let flags = FlagOverrides {
        config_file: Some(file.clone()),
        ..Default::default()
    };
    let err = Settings::load_from(&flags, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api.listen") && err.contains(&file.display().to_string()),
        "{err}"
    );

    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MAPILLARY_API_URL", "ftp://x")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("mapillary.url") && err.contains("MAPILLARY_API_URL"),
        "{err}"
    );

    let flags = FlagOverrides {
        config_file: Some(dir.path().join("missing.toml")),
        ..Default::default()
    };
    assert!(
        Settings::load_from(&flags, &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("missing.toml")
    );
}

#[test]
fn tokens_are_redacted_everywhere_they_could_print() {
    let vars = env(&[
        ("MAPILLARY_TOKEN", "MLY|123|deadbeef"),
        ("MLD__API__TOKEN", "bearer-secret-0123456789"),
    ]);
    let token = token_from(&vars).unwrap();
    assert_eq!(token.expose(), "MLY|123|deadbeef");
    assert_eq!(format!("{token} {token:?}"), "[redacted] [redacted]");
    let s = Settings::load_from(&FlagOverrides::default(), &vars).unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("bearer-secret-0123456789"), "{debug}");
    assert_eq!(
        s.api_token().map(|t| t.expose()),
        Some("bearer-secret-0123456789")
    );
}

#[test]
fn a_missing_token_names_the_variable() {
    for vars in [env(&[]), env(&[("MAPILLARY_TOKEN", "  ")])] {
        let err = token_from(&vars).unwrap_err();
        assert!(matches!(err, ConfigError::MissingToken));
        assert!(err.to_string().contains("MAPILLARY_TOKEN"));
    }
}

#[test]
fn every_default_key_has_a_comment() {
    let text = mapillary_downloader::config::DEFAULTS_TOML;
    let mut previous = "";
    for line in text.lines() {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && !trimmed.starts_with('[') {
            assert!(
                previous.starts_with('#'),
                "key without a comment above it: {trimmed}"
            );
        }
        previous = trimmed;
    }
}

#[test]
fn unknown_keys_name_the_key_the_source_and_the_nearest_known_key() {
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__WORKERS__CONUT", "32")]),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`workers.conut`")
            && text.contains("MLD__WORKERS__CONUT")
            && text.contains("did you mean `workers.count`"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[mapillary]\npage_sise = 10\n[workers]\ncount = 2\n").unwrap();
    let flags = FlagOverrides {
        config_file: Some(file.clone()),
        ..Default::default()
    };
    let text = Settings::load_from(&flags, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("`mapillary.page_sise`")
            && text.contains(&file.display().to_string())
            && text.contains("mapillary.page_size"),
        "{text}"
    );
    // A section with no keys, and every known key, are fine.
    std::fs::write(&file, "[jobs]\n[workers]\ncount = 2\n").unwrap();
    assert_eq!(
        Settings::load_from(&flags, &env(&[]))
            .unwrap()
            .workers
            .count,
        2
    );
    // A setting outside any section is unknown too.
    std::fs::write(&file, "count = 2\n").unwrap();
    assert!(
        Settings::load_from(&flags, &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("`count`")
    );
}

#[test]
fn tokens_come_from_a_variable_or_a_file_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "MLY|9|fromfile\n").unwrap();
    let path = file.to_str().unwrap();
    let token = token_from(&env(&[("MAPILLARY_TOKEN_FILE", path)])).unwrap();
    assert_eq!(token.expose(), "MLY|9|fromfile", "read and trimmed");
    // An empty variable beside the file counts as unset.
    let token = token_from(&env(&[
        ("MAPILLARY_TOKEN", ""),
        ("MAPILLARY_TOKEN_FILE", path),
    ]))
    .unwrap();
    assert_eq!(token.expose(), "MLY|9|fromfile");
    let err = token_from(&env(&[
        ("MAPILLARY_TOKEN", "MLY|1|x"),
        ("MAPILLARY_TOKEN_FILE", path),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("both"), "{err}");
    assert!(
        !err.contains("fromfile") && !err.contains("MLY|1|x"),
        "{err}"
    );

    let api_file = dir.path().join("api");
    std::fs::write(&api_file, " bearer-from-file \n").unwrap();
    let api_path = api_file.to_str().unwrap();
    let s = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN_FILE", api_path), ("MLD__API__TOKEN", "")]),
    )
    .unwrap();
    assert_eq!(s.api_token().map(|t| t.expose()), Some("bearer-from-file"));
    assert!(!format!("{s:?}").contains("bearer-from-file"));
    // The variable is trimmed too; one of spaces only is no token.
    let s = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN", " bearer-from-env-0123 ")]),
    )
    .unwrap();
    assert_eq!(
        s.api_token().map(|t| t.expose()),
        Some("bearer-from-env-0123")
    );
    let s = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN", "  ")]),
    )
    .unwrap();
    assert!(s.api_token().is_none());
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN_FILE", api_path), ("MLD__API__TOKEN", "b")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("api.token_file") && err.contains("api.token"),
        "{err}"
    );
}

#[test]
fn a_shared_queue_with_a_local_archive_needs_a_shared_filesystem_and_urls_stay_secret() {
    let queue = "postgres://mld:hunter2-secret@db.example:5432/mapillary";
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__STORAGE__DATABASE_URL", queue)]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("storage.shared_filesystem"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password reached an error: {err}"
    );
    let ok = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[
            ("MLD__STORAGE__DATABASE_URL", queue),
            ("MLD__STORAGE__SHARED_FILESYSTEM", "true"),
        ]),
    )
    .unwrap();
    assert!(ok.database_url().unwrap().is_some());
    assert!(
        !format!("{ok:?}").contains("hunter2"),
        "Debug shows the password"
    );
    let err = Settings::load_from(
        &FlagOverrides {
            database_url: Some("mysql://root:hunter2-secret@db/x".into()),
            ..Default::default()
        },
        &env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("storage.database_url") && err.contains("--database-url"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the password reached an error: {err}"
    );
}

/// Issue 23: a syntax error on the token's line names the file, line,
/// column and key, and prints no part of the token (the `config` crate's
/// own message quotes the line).
#[test]
fn a_syntax_error_names_the_place_but_never_the_line() {
    let secret = "Zq9xW7vT3kL5mN8p";
    let dir = tempfile::tempdir().unwrap();
    let broken_lines = [
        format!("token = \"{secret}\n"),
        format!("token = {secret}\n"),
        format!("token = \"{secret}\" trailing\n"),
        format!("token = '''{secret}\n"),
    ];
    for broken in broken_lines {
        let file = dir.path().join("secret.toml");
        std::fs::write(
            &file,
            format!("[api]\nlisten = \"127.0.0.1:8080\"\n{broken}"),
        )
        .unwrap();
        let flags = FlagOverrides {
            config_file: Some(file.clone()),
            ..Default::default()
        };
        let err = Settings::load_from(&flags, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("line 3") || err.contains("line 4"), "{err}");
        assert!(err.contains("column"), "{err}");
        assert!(err.contains("api.token"), "{err}");
        for window in secret.as_bytes().windows(4) {
            let part = std::str::from_utf8(window).unwrap();
            assert!(!err.contains(part), "{part:?} of the token in: {err}");
        }
    }
}

/// Type errors and invalid values name the key, never the value: a password
/// or token put under the wrong key must not print.
#[test]
fn value_errors_do_not_echo_the_value() {
    let secret = "hunter2-Zq9xW7vT3kL5";
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        format!("[api]\nmax_connections = \"{secret}\"\n"),
        format!("[api]\nlisten = \"{secret}\"\n"),
        format!("[mapillary]\nurl = \"https://u:{secret}@[bad\"\n"),
        format!("[log]\nlevel = \"{secret}=??\"\n"),
        format!("[api]\nallowed_hosts = [\"{secret}/x\"]\n"),
        format!("[storage]\narchive_url = \"https://k:{secret}@x\"\n"),
        format!("[jobs]\nresync_every = \"{secret}\"\n"),
    ];
    for case in cases {
        let file = dir.path().join("values.toml");
        std::fs::write(&file, &case).unwrap();
        let flags = FlagOverrides {
            config_file: Some(file.clone()),
            ..Default::default()
        };
        let err = Settings::load_from(&flags, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{case}: {err}");
        assert!(!err.contains("Zq9x"), "{case}: {err}");
    }
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__WORKERS__COUNT", secret)]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("workers.count") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn an_api_token_shorter_than_16_characters_is_refused() {
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN", "short-token-15c")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("api.token") && err.contains("16"), "{err}");
    assert!(!err.contains("short-token"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api_token");
    std::fs::write(&file, "tiny\n").unwrap();
    let err = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN_FILE", file.to_str().unwrap())]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("api.token_file") && !err.contains("tiny"),
        "{err}"
    );
    let s = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__TOKEN", "sixteen-chars-ok")]),
    )
    .unwrap();
    assert_eq!(s.api_token().map(|t| t.expose()), Some("sixteen-chars-ok"));
}

#[test]
fn allowed_hosts_come_from_a_file_or_a_comma_list_and_are_checked() {
    let s = Settings::load_from(
        &FlagOverrides::default(),
        &env(&[("MLD__API__ALLOWED_HOSTS", "NAS.lan, 192.168.1.20,[fd00::1]")]),
    )
    .unwrap();
    let hosts = s.trusted_hosts();
    for host in ["nas.lan", "192.168.1.20", "[fd00::1]", "127.0.0.1"] {
        assert!(hosts.iter().any(|h| h == host), "{host} in {hosts:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.toml");
    std::fs::write(&file, "[api]\nallowed_hosts = [\"box.example\"]\n").unwrap();
    let flags = FlagOverrides {
        config_file: Some(file),
        ..Default::default()
    };
    let s = Settings::load_from(&flags, &env(&[])).unwrap();
    assert!(s.trusted_hosts().contains(&"box.example".to_string()));
    for bad in ["http://nas.lan", "nas.lan:8080", "a b"] {
        let err = Settings::load_from(
            &FlagOverrides::default(),
            &env(&[("MLD__API__ALLOWED_HOSTS", bad)]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api.allowed_hosts"), "{bad}: {err}");
    }
    let limits = Settings::load_from(&FlagOverrides::default(), &env(&[]))
        .unwrap()
        .api_limits();
    assert_eq!(limits.write_timeout, std::time::Duration::from_secs(30));
    assert_eq!(
        limits.max_connection_age,
        std::time::Duration::from_secs(600)
    );
    assert_eq!(limits.max_connections_per_ip, 256);
    // The listen address is trusted, unless it is unspecified (0.0.0.0).
    let flags = FlagOverrides {
        listen: Some("192.168.1.5:8080".into()),
        ..Default::default()
    };
    let s = Settings::load_from(&flags, &env(&[])).unwrap();
    assert_eq!(s.trusted_hosts(), vec!["192.168.1.5".to_string()]);
    let flags = FlagOverrides {
        listen: Some("0.0.0.0:8080".into()),
        ..Default::default()
    };
    let s = Settings::load_from(&flags, &env(&[])).unwrap();
    assert!(s.trusted_hosts().is_empty());
}

/// `ia.delete_after_confirm` loads (it was refused while `verify` did not
/// know images held on archive.org only); it stays off by default. Its
/// effect is tested end to end in `tests/upload.rs`.
#[test]
fn deleting_tars_after_the_upload_can_be_turned_on_and_is_off_by_default() {
    let defaults = Settings::load_from(&FlagOverrides::default(), &env(&[])).unwrap();
    assert!(!defaults.ia.delete_after_confirm);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ia.toml");
    std::fs::write(&file, "[ia]\ndelete_after_confirm = true\n").unwrap();
    let flags = FlagOverrides {
        config_file: Some(file),
        ..Default::default()
    };
    let settings = Settings::load_from(&flags, &env(&[])).unwrap();
    assert!(settings.ia.delete_after_confirm);
}
