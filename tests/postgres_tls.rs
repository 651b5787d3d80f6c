//! Issue 23: PostgreSQL URLs honour `sslmode` and `sslrootcert` (rustls),
//! against a throwaway cluster serving TLS with a certificate signed by a
//! CA made for the test: every mode connects as it promises (encrypted or
//! not, as the server itself reports), a wrong root certificate is refused
//! with a clear error that never holds the URL's password.

use mapillary_downloader::store::{PgClock, Store};
use mld_testkit::postgres::PgCluster;

const PASSWORD: &str = "hunter2-tls-password";

/// Whether the store's pooled connection to `database` is encrypted, as the
/// server sees it (psql's own session left out).
fn store_sessions_encrypted(cluster: &PgCluster, database: &str) -> bool {
    let answer = cluster
        .psql(
            database,
            "SELECT coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
        )
        .unwrap();
    answer == "t"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_connects_as_it_promises_and_a_wrong_root_is_refused() {
    let (cluster, tls) = tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start();
        let tls = cluster.enable_tls();
        (cluster, tls)
    })
    .await
    .unwrap();
    let url = cluster
        .fresh_database()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let database = url.rsplit('/').next().unwrap().to_string();
    let ca = tls.ca.display().to_string();
    let modes = [
        ("sslmode=disable".to_string(), false),
        ("sslmode=prefer".to_string(), true),
        ("sslmode=require".to_string(), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
    ];
    for (query, encrypted) in modes {
        let store = Store::open_postgres(&format!("{url}?{query}"), PgClock::Database)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        store.ping().await.unwrap();
        assert_eq!(
            store_sessions_encrypted(&cluster, &database),
            encrypted,
            "{query}"
        );
        store.close().await;
    }
    let wrong = tls.wrong_ca.display().to_string();
    for mode in ["verify-ca", "verify-full"] {
        let err = Store::open_postgres(
            &format!("{url}?sslmode={mode}&sslrootcert={wrong}"),
            PgClock::Database,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{mode} with a wrong root certificate connected"))
        .to_string();
        assert!(err.contains("TLS") && err.contains(mode), "{err}");
        assert!(err.contains("sslrootcert"), "{err}");
        assert!(!err.contains(PASSWORD) && !err.contains("hunter2"), "{err}");
    }
    let err = Store::open_postgres(&format!("{url}?sslmode=sometimes"), PgClock::Database)
        .await
        .err()
        .expect("an unknown sslmode is refused")
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}
