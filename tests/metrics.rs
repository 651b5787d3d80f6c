//! `GET /metrics` after a run with faults, parsed by the Prometheus
//! project's own Python client (`prometheus_client.parser`, in the venv
//! `bash scripts/test` makes): every family well-formed and typed, counters
//! and histograms consistent with what the fake saw and the job's counts.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Fault, Route};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The venv's Python with `prometheus_client`.
fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    assert!(
        path.exists(),
        "no Python venv at {}: run `bash scripts/test` (it makes it with `pip install prometheus-client`)",
        path.display()
    );
    path
}

/// The families of an exposition as the reference parser reads them:
/// name -> (type, [(sample name, labels, value)]).
type Families = HashMap<String, (String, Vec<(String, HashMap<String, String>, f64)>)>;

fn parse(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = [family.type, [[s.name, s.labels, s.value] for s in family.samples]]
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn total(families: &Families, family: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, samples) = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .filter(|(_, l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .filter(|(name, _, _)| !name.ends_with("_created"))
        .map(|(_, _, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_happened_and_parse_as_prometheus_text() {
    // URLs live 120 s, under the 300 s refresh margin: each claimed image
    // has its URL refreshed with `?ids=` first.
    let fake = FakeMapillary::start(FakeConfig {
        url_ttl_secs: 120,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("mira", 120, 71);
    let images = fake.images("mira");
    // The first API call is rate-limited, the next fails once; three images
    // fail one download each; one is gone for good.
    fake.script(
        Route::Api,
        vec![
            Fault::RateLimit {
                retry_after: Some(1),
            },
            Fault::Status500Html,
        ],
    );
    for image in &images[10..13] {
        fake.script_image(&image.id, vec![Fault::Status503Html]);
    }
    fake.fail_image_always(&images[20].id, Some(Fault::Status503Html));
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[("MLD__RETRY__MAX_ATTEMPTS", "3")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": "mira", "quality": "256"}))
        .await;
    let job = daemon
        .wait_for_state(
            job["id"].as_i64().unwrap(),
            &["done"],
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        (
            job["counts"]["done"].as_u64(),
            job["counts"]["failed"].as_u64()
        ),
        (Some(119), Some(1)),
        "{job}"
    );

    let (status, text) = daemon
        .try_request(reqwest::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::OK);
    let families = parse(&text);
    for (family, kind) in [
        ("mapillary_images_completed", "counter"),
        ("mapillary_images_failed", "counter"),
        ("mapillary_images_deleted", "counter"),
        ("mapillary_written_bytes", "counter"),
        ("mapillary_api_calls", "counter"),
        ("mapillary_cdn_fetches", "counter"),
        ("mapillary_retries", "counter"),
        ("mapillary_url_refreshes", "counter"),
        ("mapillary_rate_limit_holds", "counter"),
        ("mapillary_image_download_seconds", "histogram"),
        ("mapillary_api_call_seconds", "histogram"),
        // The gauges from before stay.
        ("mapillary_job_images", "gauge"),
        ("mapillary_images", "gauge"),
        ("mapillary_uptime_seconds", "gauge"),
    ] {
        let found = families.get(family).map(|(t, _)| t.as_str());
        assert_eq!(found, Some(kind), "{family}");
    }
    assert_eq!(total(&families, "mapillary_images_completed", &[]), 119.0);
    assert_eq!(total(&families, "mapillary_images_failed", &[]), 1.0);
    assert_eq!(total(&families, "mapillary_images_deleted", &[]), 0.0);
    assert_eq!(
        total(&families, "mapillary_written_bytes", &[]),
        job["bytes_done"].as_f64().unwrap()
    );
    // 3 + 3: one failed try each for three images, two for the one that fails for good.
    assert_eq!(total(&families, "mapillary_retries", &[]), 5.0);
    assert_eq!(
        total(&families, "mapillary_cdn_fetches", &[("outcome", "ok")]),
        119.0
    );
    assert_eq!(
        total(
            &families,
            "mapillary_cdn_fetches",
            &[("outcome", "transient")]
        ),
        6.0
    );
    assert!(
        total(
            &families,
            "mapillary_api_calls",
            &[("outcome", "rate_limited")]
        ) >= 1.0
    );
    assert!(
        total(
            &families,
            "mapillary_api_calls",
            &[("outcome", "transient")]
        ) >= 1.0
    );
    assert!(total(&families, "mapillary_api_calls", &[("outcome", "ok")]) >= 1.0);
    assert!(total(&families, "mapillary_rate_limit_holds", &[]) >= 1.0);
    let refreshed = fake.urls_refreshed();
    assert!(refreshed >= 120, "{refreshed} URLs refreshed");
    assert_eq!(
        total(&families, "mapillary_url_refreshes", &[]),
        refreshed as f64,
        "every URL refresh the fake answered is counted"
    );
    let api_calls: f64 = ["ok", "rate_limited", "transient", "fatal"]
        .iter()
        .map(|o| total(&families, "mapillary_api_calls", &[("outcome", o)]))
        .sum();
    assert_eq!(
        api_calls as usize,
        fake.api_calls(),
        "every API call the fake answered is counted"
    );
    // Histograms: cumulative buckets ending in +Inf = _count.
    for (family, count) in [
        ("mapillary_image_download_seconds", 119.0),
        ("mapillary_api_call_seconds", api_calls),
    ] {
        let (_, samples) = &families[family];
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(name, _, _)| name.ends_with("_bucket"))
            .map(|(_, labels, v)| (labels["le"].parse::<f64>().unwrap(), *v))
            .collect();
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: {buckets:?}"
        );
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
        assert_eq!(buckets.last().map(|b| b.1), Some(count), "{family}");
        let counted = samples
            .iter()
            .find(|(n, _, _)| n.ends_with("_count"))
            .map(|s| s.2);
        assert_eq!(counted, Some(count), "{family}");
    }
    let value: Value = serde_json::to_value(&families["mapillary_job_images"].1).unwrap();
    assert!(value.to_string().contains("\"job_id\":\"1\""), "{value}");
    daemon.stop().await;
}
