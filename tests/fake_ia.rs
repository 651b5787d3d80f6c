//! The fake Internet Archive (`mld_testkit::fake_ia`) behaves as IA-S3 and
//! the metadata API do (`docs/ia-s3.md`), so upload tests can trust it:
//! auth, Content-Length, Content-MD5, item creation, metadata headers,
//! throttling, `check_limit`, refusals, the listing delay, dropped and held
//! connections, the bandwidth cap. Also: the headers `upload::headers`
//! builds come back from the fake as the `.meta` tags they were built from.

use mapillary_downloader::secret::Secret;
use mapillary_downloader::upload::credentials::{CredentialSource, IaCredentials};
use mapillary_downloader::upload::headers::item_headers;
use mld_testkit::fake_ia::{
    DEFAULT_ACCESS, DEFAULT_SECRET, FakeIa, FakeIaOptions, SPAM_MARKER, md5_base64, md5_hex,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const ITEM: &str = "mapillary-alice-2048";

fn auth() -> String {
    format!("LOW {DEFAULT_ACCESS}:{DEFAULT_SECRET}")
}

/// A `PUT` as the uploader sends it: auth, auto-make-bucket, Content-MD5
/// (hex, unless `extra` gives one); `extra` headers on top.
async fn put(
    fake: &FakeIa,
    file: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut request = reqwest::Client::new()
        .put(format!("{}/{ITEM}/{file}", fake.base_url()))
        .header("authorization", auth())
        .header("x-archive-auto-make-bucket", "1");
    if !extra.iter().any(|(name, _)| *name == "content-md5") {
        request = request.header("content-md5", md5_hex(&body));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(body).send().await
}

async fn metadata(fake: &FakeIa, identifier: &str) -> Value {
    reqwest::get(format!("{}/metadata/{identifier}", fake.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The entry of `name` in a `/metadata` answer's `files`.
fn listed<'a>(metadata: &'a Value, name: &str) -> Option<&'a Value> {
    metadata["files"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
}

#[tokio::test]
async fn a_put_stores_the_bytes_and_headers_and_lists_the_file() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    assert_eq!(metadata(&fake, ITEM).await, serde_json::json!({}));
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let answer = put(
        &fake,
        "2024-05-01.tar",
        body.clone(),
        &[("x-archive-meta-title", "A")],
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let etag = answer.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&body)));
    assert_eq!(fake.file_bytes(ITEM, "2024-05-01.tar").unwrap(), body);
    let stored = fake.stored(ITEM, "2024-05-01.tar").unwrap();
    assert!(
        stored
            .headers
            .contains(&("x-archive-meta-title".into(), "A".into()))
    );
    let meta = metadata(&fake, ITEM).await;
    assert_eq!(meta["metadata"]["title"], "A");
    assert_eq!(meta["metadata"]["identifier"], ITEM);
    let file = listed(&meta, "2024-05-01.tar").expect("listed");
    assert_eq!(file["md5"], md5_hex(&body));
    // archive.org gives sizes as strings.
    assert_eq!(file["size"], body.len().to_string());
    assert!(listed(&meta, &format!("{ITEM}_meta.xml")).is_some());
    assert_eq!(fake.put_attempts(ITEM, "2024-05-01.tar"), 1);
    assert_eq!(fake.puts_stored(ITEM, "2024-05-01.tar"), 1);
}

#[tokio::test]
async fn content_md5_is_checked_in_hex_and_base64() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    let body = b"tar bytes".to_vec();
    let b64 = md5_base64(&body);
    let answer = put(&fake, "a.tar", body.clone(), &[("content-md5", &b64)])
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let wrong = md5_hex(b"other bytes");
    let answer = put(&fake, "b.tar", body.clone(), &[("content-md5", &wrong)])
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("<Code>BadDigest</Code>")
    );
    let answer = put(&fake, "c.tar", body, &[("content-md5", "not-a-digest")])
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(answer.text().await.unwrap().contains("InvalidDigest"));
    assert!(fake.stored(ITEM, "a.tar").is_some());
    assert!(fake.stored(ITEM, "b.tar").is_none());
    assert!(fake.stored(ITEM, "c.tar").is_none());
}

#[tokio::test]
async fn auth_is_checked_and_refusals_store_nothing() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    let url = format!("{}/{ITEM}/a.tar", fake.base_url());
    let client = reqwest::Client::new();
    let anonymous = client
        .put(&url)
        .header("x-archive-auto-make-bucket", "1")
        .body("x");
    assert_eq!(
        anonymous.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let wrong = client
        .put(&url)
        .header("authorization", format!("LOW {DEFAULT_ACCESS}:wrong"))
        .header("x-archive-auto-make-bucket", "1")
        .body("x");
    let answer = wrong.send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("InvalidAccessKeyId"));
    fake.forbid_item(ITEM);
    let answer = put(&fake, "a.tar", b"x".to_vec(), &[]).await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("AccessDenied"));
    assert_eq!(fake.put_attempts(ITEM, "a.tar"), 3);
    assert_eq!(fake.puts_stored(ITEM, "a.tar"), 0);
    assert!(fake.items().is_empty());
}

#[tokio::test]
async fn a_chunked_body_is_refused_and_a_new_item_needs_auto_make_bucket() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(vec![1u8; 1000])]);
    let answer = reqwest::Client::new()
        .put(format!("{}/{ITEM}/a.tar", fake.base_url()))
        .header("authorization", auth())
        .header("x-archive-auto-make-bucket", "1")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::LENGTH_REQUIRED);
    assert!(fake.stored(ITEM, "a.tar").is_none());
    let no_bucket = reqwest::Client::new()
        .put(format!("{}/{ITEM}/a.tar", fake.base_url()))
        .header("authorization", auth())
        .body("x");
    assert_eq!(
        no_bucket.send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert!(fake.items().is_empty());
    // Once the item exists, later files need no auto-make-bucket.
    assert_eq!(
        put(&fake, "a.tar", b"x".to_vec(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let later = reqwest::Client::new()
        .put(format!("{}/{ITEM}/b.tar", fake.base_url()))
        .header("authorization", auth())
        .body("y");
    assert_eq!(later.send().await.unwrap().status(), StatusCode::OK);
    let bad = reqwest::Client::new()
        .put(format!("{}/-bad/a.tar", fake.base_url()))
        .header("authorization", auth())
        .header("x-archive-auto-make-bucket", "1")
        .body("x");
    assert_eq!(bad.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn slow_down_answers_then_lets_through_and_check_limit_reports() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    fake.slow_down_next(2, Some(7));
    for _ in 0..2 {
        let answer = put(&fake, "a.tar", b"x".to_vec(), &[]).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()["retry-after"], "7");
        assert!(
            answer
                .text()
                .await
                .unwrap()
                .contains("<Code>SlowDown</Code>")
        );
    }
    assert_eq!(
        put(&fake, "a.tar", b"x".to_vec(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    fake.slow_down_fraction(0.5, None);
    let mut slowed = 0;
    for i in 0..40 {
        let answer = put(&fake, &format!("f{i}.tar"), b"x".to_vec(), &[])
            .await
            .unwrap();
        if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(answer.headers().get("retry-after").is_none());
            slowed += 1;
        }
    }
    assert!((8..=32).contains(&slowed), "{slowed} of 40 slowed at 0.5");
    let check = format!(
        "{}/?check_limit=1&accesskey={DEFAULT_ACCESS}&bucket={ITEM}",
        fake.base_url()
    );
    let limit: Value = reqwest::get(&check).await.unwrap().json().await.unwrap();
    assert_eq!(limit["over_limit"], 0);
    assert_eq!(limit["bucket"], ITEM);
    assert_eq!(limit["accesskey"], DEFAULT_ACCESS);
    assert!(limit["detail"]["rationing_level"].is_number());
    fake.set_over_limit(1);
    let limit: Value = reqwest::get(&check).await.unwrap().json().await.unwrap();
    assert_eq!(limit["over_limit"], 1);
}

#[tokio::test]
async fn the_spam_refusal_is_a_503_that_says_so() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    fake.refuse_as_spam(true);
    let answer = put(&fake, "a.tar", b"x".to_vec(), &[]).await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = answer.text().await.unwrap();
    assert!(body.contains(SPAM_MARKER) && body.contains(ITEM), "{body}");
    fake.refuse_as_spam(false);
    assert_eq!(
        put(&fake, "a.tar", b"x".to_vec(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn files_are_listed_only_after_the_task_queue_ran() {
    let fake = FakeIa::start(FakeIaOptions {
        listing_delay: Duration::from_secs(3600),
        ..FakeIaOptions::default()
    })
    .await;
    fake.preload(ITEM, "old.tar", b"old");
    assert_eq!(
        put(&fake, "new.tar", b"new".to_vec(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let meta = metadata(&fake, ITEM).await;
    assert_eq!(listed(&meta, "old.tar").unwrap()["md5"], md5_hex(b"old"));
    assert!(listed(&meta, "new.tar").is_none(), "{meta}");
    fake.run_tasks();
    assert!(listed(&metadata(&fake, ITEM).await, "new.tar").is_some());
    // And by the clock: a short delay passes on its own.
    fake.set_listing_delay(Duration::from_millis(300));
    assert_eq!(
        put(&fake, "next.tar", b"n".to_vec(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(listed(&metadata(&fake, ITEM).await, "next.tar").is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(listed(&metadata(&fake, ITEM).await, "next.tar").is_some());
}

#[tokio::test]
async fn a_dropped_connection_stores_nothing_and_the_next_put_succeeds() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    fake.drop_connection_after(100_000);
    let body = vec![5u8; 2_000_000];
    let error = put(&fake, "a.tar", body.clone(), &[]).await;
    assert!(error.is_err(), "{error:?}");
    assert!(fake.stored(ITEM, "a.tar").is_none());
    assert_eq!(
        put(&fake, "a.tar", body.clone(), &[])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(fake.put_attempts(ITEM, "a.tar"), 2);
    assert_eq!(fake.puts_stored(ITEM, "a.tar"), 1);
    assert_eq!(fake.file_bytes(ITEM, "a.tar").unwrap(), body);
}

#[tokio::test]
async fn a_held_put_waits_for_release() {
    let fake = std::sync::Arc::new(FakeIa::start(FakeIaOptions::default()).await);
    fake.hold_after(64 * 1024);
    let sender = fake.clone();
    let upload =
        tokio::spawn(async move { put(&sender, "a.tar", vec![1u8; 1_000_000], &[]).await });
    let held = tokio::time::timeout(Duration::from_secs(10), fake.wait_held())
        .await
        .expect("a PUT is held");
    assert_eq!(held, (ITEM.to_string(), "a.tar".to_string()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!upload.is_finished());
    assert!(fake.stored(ITEM, "a.tar").is_none());
    fake.release_held();
    assert_eq!(upload.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(fake.stored(ITEM, "a.tar").unwrap().size, 1_000_000);
}

#[tokio::test]
async fn the_bandwidth_cap_paces_bodies() {
    let fake = FakeIa::start(FakeIaOptions {
        bandwidth: Some(4_000_000),
        ..FakeIaOptions::default()
    })
    .await;
    let started = Instant::now();
    let answer = put(&fake, "a.tar", vec![9u8; 2_000_000], &[])
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "2 MB at 4 MB/s took {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "2 MB at 4 MB/s took {took:?}"
    );
    let receive = fake.stored(ITEM, "a.tar").unwrap().receive_time;
    assert!(receive >= Duration::from_millis(400), "{receive:?}");
}

#[tokio::test]
async fn a_killed_fake_refuses_connections_and_multipart_is_not_modelled() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    let multipart = reqwest::Client::new()
        .post(format!("{}/{ITEM}/a.tar?uploads", fake.base_url()))
        .header("authorization", auth());
    assert_eq!(
        multipart.send().await.unwrap().status(),
        StatusCode::NOT_IMPLEMENTED
    );
    fake.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(put(&fake, "a.tar", b"x".to_vec(), &[]).await.is_err());
}

#[tokio::test]
async fn headers_built_from_meta_tags_come_back_as_the_same_metadata() {
    let fake = FakeIa::start(FakeIaOptions::default()).await;
    let credentials = IaCredentials {
        access: DEFAULT_ACCESS.into(),
        secret: Secret::new(DEFAULT_SECRET),
        source: CredentialSource::Environment,
    };
    let tags: Vec<(String, Vec<String>)> = vec![
        ("title".into(), vec!["Mapillary images by Zoë".into()]),
        (
            "subject".into(),
            vec!["mapillary".into(), "street-view".into(), "géo".into()],
        ),
        ("mapillary_downloader".into(), vec!["0.1.0".into()]),
        (
            "description".into(),
            vec!["Line one.\n\nLine two: 100% (ok)".into()],
        ),
    ];
    let headers = item_headers(&credentials, &tags, 12_345).unwrap();
    let mut request = reqwest::Client::new()
        .put(format!("{}/{ITEM}/a.tar", fake.base_url()))
        .header("authorization", headers.authorization().expose());
    for (name, value) in headers.archive() {
        request = request.header(name, value);
    }
    let answer = request.body("x").send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let metadata = fake.item_metadata(ITEM).unwrap();
    for (key, values) in &tags {
        assert_eq!(&metadata[key], values, "{key}");
    }
    let stored = fake.stored(ITEM, "a.tar").unwrap();
    let header = |name: &str| {
        stored
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-archive-size-hint").as_deref(), Some("12345"));
    assert_eq!(header("x-archive-queue-derive").as_deref(), Some("0"));
    assert_eq!(
        header("x-archive-meta-mapillary--downloader").as_deref(),
        Some("0.1.0")
    );
    assert_eq!(
        header("x-archive-meta03-subject").as_deref(),
        Some("uri(g%C3%A9o)")
    );
}
