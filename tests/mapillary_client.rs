//! The Mapillary client against the fake API + CDN: paging, token hygiene,
//! batches, downloads, and the classification of every scripted fault.

use mapillary_downloader::mapillary::{
    ClientSettings, Limiter, MapillaryClient, MapillaryError, RetryDecision, strip_token,
    url_expires_at,
};
use mapillary_downloader::model::{self, Bbox, ImageMeta};
use mapillary_downloader::secret::Secret;
use mld_testkit::fake::{
    self as fake_mapillary, FakeConfig, FakeImage, FakeMapillary, Fault, Faults, Quality, Route,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What the store would keep of an image: its metadata without URLs.
fn stored(meta: &ImageMeta) -> serde_json::Value {
    serde_json::to_value(meta).unwrap()
}

fn settings(fake: &FakeMapillary, page_size: u32) -> ClientSettings {
    ClientSettings {
        api_url: fake.api_url(),
        page_size,
        calls_per_minute: 60_000,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        download_timeout: Duration::from_secs(20),
        read_idle_timeout: Duration::from_secs(10),
        max_image_bytes: 10 * 1024 * 1024,
    }
}

fn client_for(fake: &FakeMapillary, page_size: u32) -> MapillaryClient {
    MapillaryClient::new(settings(fake, page_size), Secret::new(fake.token())).unwrap()
}

async fn start(cfg: FakeConfig) -> FakeMapillary {
    FakeMapillary::start(cfg).await
}

/// Pages to the end; returns every image served (duplicates kept) and the `next` links seen.
async fn page_all(client: &MapillaryClient, first: String) -> (Vec<ImageMeta>, Vec<String>) {
    let mut images = Vec::new();
    let mut links = Vec::new();
    let mut url = Some(first);
    while let Some(u) = url {
        let page = client.fetch_page(&u).await.unwrap();
        assert_eq!(page.skipped, 0);
        images.extend(page.images.into_iter().map(|i| i.meta));
        if let Some(n) = &page.next {
            links.push(n.clone());
        }
        url = page.next;
        assert!(links.len() < 1000, "paging does not end");
    }
    (images, links)
}

fn ids(images: &[ImageMeta]) -> Vec<String> {
    images.iter().map(|m| m.id.clone()).collect()
}

fn dedupe(images: Vec<ImageMeta>) -> Vec<ImageMeta> {
    let mut seen = HashSet::new();
    images
        .into_iter()
        .filter(|m| seen.insert(m.id.clone()))
        .collect()
}

#[tokio::test]
async fn pages_through_a_large_user_and_collects_every_image_once() {
    let fake = start(FakeConfig {
        faults: Faults {
            overlapping_pages: 1.0,
            ..Faults::default()
        },
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("alice", 5000, 1);
    fake.add_user("bob", 30, 2);
    let client = client_for(&fake, 700);
    let (served, links) = page_all(&client, client.first_page_url("alice", None)).await;
    // 5000 / (700 - 3 overlap) pages, every page but the first repeats 3 ids.
    assert!(links.len() >= 7, "only {} pages", links.len() + 1);
    assert_eq!(served.len(), 5000 + 3 * links.len());
    let unique = dedupe(served);
    let truth: Vec<ImageMeta> = fake.images("alice").iter().map(FakeImage::to).collect();
    assert_eq!(ids(&unique), ids(&truth));
    // The metadata round-trips exactly (URLs aside), including oddities.
    for (got, want) in unique.iter().zip(&truth) {
        assert_eq!(stored(got), stored(want));
        assert!(got.thumb_original_url.is_some() && got.thumb_256_url.is_some());
    }
    assert!(
        truth
            .iter()
            .any(|m| m.altitude == Some(fake_mapillary::WRAPPED_ALTITUDE))
    );
    assert!(truth.iter().any(|m| m.compass_angle == Some(0.0)));
    assert!(
        truth
            .iter()
            .any(|m| m.compass_angle.is_some_and(|a| a >= 360.0))
    );
    assert!(truth.iter().any(|m| m.computed_geometry.is_none()));
    assert!(truth.iter().any(|m| m.sequence.is_none()));
    assert!(
        truth
            .iter()
            .any(|m| m.make.as_deref() == Some("Xiaomi 小米"))
    );
    assert!(truth.iter().any(|m| m.make.as_deref() == Some("")));
    assert!(truth.iter().any(|m| m.is_pano == Some(true) && m.camera_type.as_deref() == Some("equirectangular")));
    // Every API call carried the token in the header, never in the URL.
    let auth = format!("OAuth {}", fake.token());
    for r in fake.requests() {
        assert_eq!(r.authorization.as_deref(), Some(auth.as_str()));
        assert!(!r.query.contains("access_token"));
    }
}

#[tokio::test]
async fn unknown_user_gives_one_empty_page() {
    let fake = start(FakeConfig::default()).await;
    let client = client_for(&fake, 100);
    let page = client
        .fetch_page(&client.first_page_url("nobody", None))
        .await
        .unwrap();
    assert!(page.images.is_empty());
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn bbox_filters_the_listing() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("carol", 1500, 3);
    let bbox = Bbox::new(2.30, 48.82, 2.38, 48.86).unwrap();
    let client = client_for(&fake, 200);
    let (served, _) = page_all(&client, client.first_page_url("carol", Some(bbox))).await;
    let expected: Vec<ImageMeta> = fake
        .images("carol")
        .iter()
        .map(FakeImage::to)
        .filter(|m: &ImageMeta| {
            let p = m
                .computed_geometry
                .as_ref()
                .or(m.geometry.as_ref())
                .unwrap();
            let (lat, lon) = p.lat_lon().unwrap();
            bbox.contains(lat, lon)
        })
        .collect();
    assert!(!expected.is_empty() && expected.len() < 1500);
    assert_eq!(ids(&dedupe(served)), ids(&expected));
    assert!(fake.requests().iter().all(|r| r.query.contains("bbox=")));
}

#[tokio::test]
async fn next_with_a_token_comes_back_stripped_and_still_works() {
    let fake = start(FakeConfig {
        token_in_next: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("dave", 250, 4);
    let client = client_for(&fake, 100);
    let token = fake.token();
    let first = client
        .fetch_page(&client.first_page_url("dave", None))
        .await
        .unwrap();
    let next = first.next.clone().unwrap();
    assert!(!next.contains("access_token"), "{next}");
    assert!(!next.contains(&token) && !next.contains("fake0123456789"));
    let (rest, links) = page_all(&client, next).await;
    assert_eq!(first.images.len() + rest.len(), 250);
    for link in links {
        assert!(!link.to_ascii_lowercase().contains("access_token"));
    }
    // The fake put the token into `next`, yet no request ever sent it in a URL.
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.query.contains("access_token"))
    );
}

#[tokio::test]
async fn a_stored_next_on_another_origin_never_receives_the_token() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("erin", 120, 5);
    let client = client_for(&fake, 50);
    let first = client
        .fetch_page(&client.first_page_url("erin", None))
        .await
        .unwrap();
    let next = url::Url::parse(&first.next.unwrap()).unwrap();
    // A tampered cursor pointing at another origin (the fake CDN: it logs what it gets).
    let mut foreign = fake.cdn_url();
    foreign.set_path(next.path());
    foreign.set_query(next.query());
    let with_token = format!("{foreign}&access_token=stolen");
    let page = client.fetch_page(&with_token).await.unwrap();
    assert_eq!(page.images.len(), 50);
    assert_eq!(page.images[0].id, fake.images("erin")[50].id);
    assert_eq!(fake.cdn_requests(), 0, "the foreign origin was contacted");
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.route, Route::Api);
    assert!(!last.query.contains("access_token"));
}

#[tokio::test]
async fn ids_batches_refresh_urls_and_refuse_more_than_fifty() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("fay", 80, 6);
    let client = client_for(&fake, 100);
    let truth: Vec<ImageMeta> = fake.images("fay").iter().map(FakeImage::to).collect();
    let mut wanted: Vec<&str> = truth.iter().take(49).map(|m| m.id.as_str()).collect();
    // Like the Graph API, one unknown id fails the whole call (#803), naming it.
    wanted.push("999999999999");
    let err = client.fetch_images(&wanted).await.unwrap_err();
    assert!(
        matches!(&err, MapillaryError::Missing { ids, .. } if ids == &["999999999999"]),
        "{err:?}"
    );
    assert_eq!(err.decision(), RetryDecision::Gone);
    wanted.pop();
    let got = client.fetch_images(&wanted).await.unwrap().found;
    assert_eq!(got.len(), 49);
    for m in truth.iter().take(49) {
        let fresh = &got[&m.id];
        assert_eq!(stored(fresh), stored(m));
        let url = fresh.url_for(model::Quality::Q2048).unwrap();
        assert!(url_expires_at(url).unwrap() > fake_mapillary::now_secs());
    }
    let calls = fake.api_calls();
    let too_many: Vec<&str> = truth.iter().take(51).map(|m| m.id.as_str()).collect();
    assert!(matches!(
        client.fetch_images(&too_many).await,
        Err(MapillaryError::BadRequest { .. })
    ));
    assert!(client.fetch_images(&[]).await.unwrap().found.is_empty());
    assert_eq!(
        fake.api_calls(),
        calls,
        "a refused batch must not reach the API"
    );
}

#[tokio::test]
async fn downloads_the_exact_body_without_any_token() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("gus", 12, 7);
    let client = client_for(&fake, 100);
    let page = client
        .fetch_page(&client.first_page_url("gus", None))
        .await
        .unwrap();
    for (i, meta) in page.images.iter().enumerate() {
        let quality = Quality::ALL[i % 4];
        let bytes = client
            .download(meta.url_for(quality.to()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            bytes.as_ref(),
            fake.expected_body(&meta.id, quality).as_slice()
        );
        let marker = fake.jpeg_marker(&meta.id, quality);
        assert!(bytes.windows(marker.len()).any(|w| w == marker.as_slice()));
        assert_eq!(fake.cdn_hits(&meta.id), 1);
    }
    assert!(!fake.saw_token_on_cdn());
    let cdn: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Cdn)
        .collect();
    assert_eq!(cdn.len(), 12);
    assert!(
        cdn.iter()
            .all(|r| r.authorization.is_none() && r.status == 200)
    );
}

#[tokio::test]
async fn sizes_are_probed_with_head_or_a_ranged_get() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("hal", 3, 8);
    let client = client_for(&fake, 100);
    let id = fake.images("hal")[0].id.clone();
    let url = fake.thumb_url(&id, Quality::Original);
    let size = fake.expected_body(&id, Quality::Original).len() as u64;
    assert_eq!(client.probe_size(&url).await.unwrap(), Some(size));
    fake.set_head_allowed(false);
    assert_eq!(client.probe_size(&url).await.unwrap(), Some(size));
    let log = fake.requests();
    assert_eq!(log.iter().filter(|r| r.method == "HEAD").count(), 2);
    assert!(
        log.iter()
            .any(|r| r.range.as_deref() == Some("bytes=0-0") && r.status == 206)
    );
    assert_eq!(fake.cdn_hits(&id), 0, "a probe is not a download");
    assert!(!fake.saw_token_on_cdn());
}

#[tokio::test]
async fn expired_and_unknown_urls() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("ida", 3, 9);
    let client = client_for(&fake, 100);
    let id = fake.images("ida")[0].id.clone();
    // `oe` in the past: refused locally, the CDN never sees it.
    let stale = fake.thumb_url_expiring_at(&id, Quality::Q1024, fake_mapillary::now_secs() - 60);
    let err = client.download(&stale).await.unwrap_err();
    assert_eq!(err.decision(), RetryDecision::RefreshUrl);
    assert_eq!(fake.cdn_requests(), 0);
    // The CDN itself says 403 / 410.
    fake.script(Route::Cdn, vec![Fault::Expired, Fault::Gone]);
    let url = fake.thumb_url(&id, Quality::Q1024);
    assert!(matches!(
        client.download(&url).await,
        Err(MapillaryError::UrlExpired(_))
    ));
    assert!(matches!(
        client.download(&url).await,
        Err(MapillaryError::UrlExpired(_))
    ));
    // A tampered signature is refused like an expired URL.
    let tampered = url.replace("_nc_sig=", "_nc_sig=0");
    assert!(matches!(
        client.download(&tampered).await,
        Err(MapillaryError::UrlExpired(_))
    ));
    // An object the CDN no longer has (404): ask the API for a fresh URL;
    // the refresh tells a deleted image from a stale URL.
    let unknown = fake.thumb_url("999999999", Quality::Q1024);
    let err = client.download(&unknown).await.unwrap_err();
    assert!(matches!(err, MapillaryError::UrlExpired(_)), "{err:?}");
    assert_eq!(err.decision(), RetryDecision::RefreshUrl);
    assert!(matches!(
        client.probe_size(&unknown).await,
        Err(MapillaryError::UrlExpired(_))
    ));
}

#[tokio::test]
async fn oversized_images_are_refused() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("jo", 1, 10);
    let mut s = settings(&fake, 100);
    s.max_image_bytes = 1000;
    let client = MapillaryClient::new(s, Secret::new(fake.token())).unwrap();
    let id = fake.images("jo")[0].id.clone();
    let err = client
        .download(&fake.thumb_url(&id, Quality::Original))
        .await
        .unwrap_err();
    assert!(matches!(err, MapillaryError::Transient(_)), "{err:?}");
}

/// One API call against a fresh client (rate limits hold a client's limiter).
async fn api_call_with(fake: &FakeMapillary, fault: Fault) -> MapillaryError {
    fake.script(Route::Api, vec![fault]);
    let client = client_for(fake, 10);
    client
        .fetch_page(&client.first_page_url("kim", None))
        .await
        .unwrap_err()
}

async fn download_with(fake: &FakeMapillary, fault: Fault) -> MapillaryError {
    let id = fake.images("kim")[1].id.clone();
    fake.script(Route::Cdn, vec![fault]);
    client_for(fake, 10)
        .download(&fake.thumb_url(&id, Quality::Q2048))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn every_fault_is_classified_and_no_error_shows_the_token() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("kim", 30, 11);
    let token = fake.token();
    let mut errors = Vec::new();

    let e = api_call_with(&fake, Fault::Status503Html).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = api_call_with(&fake, Fault::Status500Html).await;
    assert_eq!(e.decision(), RetryDecision::Retryable);
    errors.push(e);
    let e = api_call_with(
        &fake,
        Fault::RateLimit {
            retry_after: Some(1),
        },
    )
    .await;
    assert_eq!(
        e,
        MapillaryError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    errors.push(e);
    let e = api_call_with(&fake, Fault::RateLimit { retry_after: None }).await;
    assert_eq!(e, MapillaryError::RateLimited { retry_after: None });
    assert_eq!(e.decision(), RetryDecision::RateLimited(None));
    errors.push(e);
    let e = api_call_with(&fake, Fault::RateLimitCode4).await;
    assert!(matches!(e, MapillaryError::RateLimited { .. }), "{e:?}");
    errors.push(e);
    // Rate limits without a 429: 403 with code 4, and codes 17, 32, 613.
    for (status, code) in [(403, 4), (400, 17), (400, 32), (400, 613), (403, 613)] {
        let fault = Fault::Graph {
            status,
            code,
            retry_after: None,
        };
        let e = api_call_with(&fake, fault).await;
        assert_eq!(
            e.decision(),
            RetryDecision::RateLimited(None),
            "{status}/{code}: {e:?}"
        );
        errors.push(e);
    }
    // A JSON 5xx body (which even claims `is_transient`) is transient by status.
    let e = api_call_with(&fake, Fault::Status500Json).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = api_call_with(&fake, Fault::InvalidJson).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = api_call_with(&fake, Fault::Truncated).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = api_call_with(&fake, Fault::Reset).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = api_call_with(&fake, Fault::BadParam).await;
    assert!(
        matches!(
            e,
            MapillaryError::BadRequest {
                code: Some(100),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.decision(), RetryDecision::GiveUp);
    errors.push(e);
    let e = api_call_with(&fake, Fault::BadToken).await;
    assert!(matches!(e, MapillaryError::BadToken(_)), "{e:?}");
    errors.push(e);

    // A revoked token: every API call answers 401 / code 190.
    fake.set_token("MLY|1|another");
    let client = MapillaryClient::new(settings(&fake, 10), Secret::new(token.clone())).unwrap();
    let e = client
        .fetch_page(&client.first_page_url("kim", None))
        .await
        .unwrap_err();
    assert!(matches!(e, MapillaryError::BadToken(_)), "{e:?}");
    assert_eq!(e.decision(), RetryDecision::PauseJob);
    errors.push(e);
    let e = client.fetch_images(&["1"]).await.unwrap_err();
    assert!(matches!(e, MapillaryError::BadToken(_)), "{e:?}");
    errors.push(e);
    fake.set_token(&token);

    let e = download_with(&fake, Fault::Status503Html).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = download_with(&fake, Fault::Truncated).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = download_with(&fake, Fault::Reset).await;
    assert!(matches!(e, MapillaryError::Transient(_)), "{e:?}");
    errors.push(e);
    let e = download_with(&fake, Fault::Html200).await;
    assert!(
        matches!(&e, MapillaryError::Transient(m) if m.contains("not a JPEG")),
        "{e:?}"
    );
    errors.push(e);
    let e = download_with(&fake, Fault::Expired).await;
    assert_eq!(e.decision(), RetryDecision::RefreshUrl);
    errors.push(e);
    // A CDN 429 is a rate limit with its Retry-After, not a fault of the image.
    let e = download_with(
        &fake,
        Fault::RateLimit {
            retry_after: Some(3),
        },
    )
    .await;
    assert_eq!(
        e.decision(),
        RetryDecision::RateLimited(Some(Duration::from_secs(3)))
    );
    errors.push(e);
    // A redirect is followed (to the CDN, never with a token) and a chunked
    // body without Content-Length arrives whole.
    let client = client_for(&fake, 10);
    let image = fake.images("kim")[3].id.clone();
    for fault in [Fault::Redirect, Fault::Chunked] {
        fake.script_image(&image, vec![fault.clone()]);
        let body = client
            .download(&fake.thumb_url(&image, Quality::Original))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e:?}"));
        assert_eq!(
            body.as_ref(),
            fake.expected_body(&image, Quality::Original).as_slice()
        );
    }
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.query.contains("fake_redirected=1")),
        "the redirect was followed"
    );

    for e in &errors {
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains(&token) && !shown.contains("fake0123456789"),
            "{shown}"
        );
    }
    assert!(!fake.saw_token_on_cdn());
    let statuses: Vec<(Route, u16, Option<&str>)> = fake
        .requests()
        .iter()
        .map(|r| (r.route, r.status, r.fault))
        .collect();
    assert!(statuses.contains(&(Route::Api, 0, Some("reset"))));
    assert!(statuses.contains(&(Route::Cdn, 200, Some("truncated"))));
}

#[tokio::test]
async fn random_faults_never_pass_as_success() {
    let fake = start(FakeConfig {
        faults: Faults::preset("chaos").unwrap(),
        seed: 99,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("lee", 40, 12);
    let client = client_for(&fake, 100);
    let mut ok = 0;
    for meta in fake.images("lee") {
        let url = fake.thumb_url(&meta.id, Quality::Original);
        match client.download(&url).await {
            Ok(bytes) => {
                assert_eq!(
                    bytes.as_ref(),
                    fake.expected_body(&meta.id, Quality::Original).as_slice()
                );
                ok += 1;
            }
            // A CDN 429 is a rate limit; every other random fault is transient.
            Err(e) => assert!(
                matches!(
                    e.decision(),
                    RetryDecision::Retryable | RetryDecision::RateLimited(_)
                ),
                "{e:?}"
            ),
        }
    }
    assert_eq!(ok, fake.cdn_hits_total());
    assert!(ok > 20, "only {ok} of 40 downloads succeeded");
}

#[tokio::test]
async fn a_rate_limit_holds_all_api_calls_of_the_client() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("max", 5, 13);
    let client = client_for(&fake, 10);
    fake.script(
        Route::Api,
        vec![Fault::RateLimit {
            retry_after: Some(1),
        }],
    );
    let first = client.first_page_url("max", None);
    assert!(client.fetch_page(&first).await.is_err());
    let held = client
        .limiter()
        .held_until()
        .expect("the limiter holds API calls");
    let remaining = held - tokio::time::Instant::now();
    assert!(remaining > Duration::from_millis(800) && remaining <= Duration::from_secs(1));
    // Clones share the limiter: a concurrent caller waits out the pause too.
    let other = client.clone();
    let started = std::time::Instant::now();
    let known = fake.images("max")[0].id.clone();
    let ids = [known.as_str()];
    let (a, b) = tokio::join!(client.fetch_page(&first), other.fetch_images(&ids));
    assert!(a.is_ok() && b.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(fake.api_calls(), 3);
}

#[tokio::test]
async fn api_calls_stay_under_the_configured_rate() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("ned", 5, 14);
    let mut s = settings(&fake, 10);
    s.calls_per_minute = 1200; // 20 a second, burst 2
    let client = MapillaryClient::new(s, Secret::new(fake.token())).unwrap();
    let first = client.first_page_url("ned", None);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let c = client.clone();
            let u = first.clone();
            tokio::spawn(async move { c.fetch_page(&u).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.api_calls(), 30);
    // 30 calls at 20 a second with a burst of 2 cannot take less than 28
    // intervals of 50 ms. A loaded machine only makes it slower, so this
    // bound never flakes; the exact spacing is checked in virtual time
    // (`limiter_takes_the_expected_virtual_time` and the limiter's tests).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(28 * 50),
        "30 calls in {elapsed:?} at 20/s"
    );
}

#[tokio::test(start_paused = true)]
async fn limiter_takes_the_expected_virtual_time() {
    let limiter = Limiter::new(120, 1); // one call per 500 ms
    let start = tokio::time::Instant::now();
    for _ in 0..11 {
        limiter.acquire().await;
    }
    assert!(start.elapsed() >= Duration::from_secs(5));
    let burst = Limiter::new(6000, Limiter::default_burst(6000));
    let start = tokio::time::Instant::now();
    for _ in 0..1000 {
        burst.acquire().await;
    }
    // 1000 calls at 100/s: at least (1000 - burst) intervals.
    let expected = burst.interval() * (1000 - Limiter::default_burst(6000));
    assert!(
        start.elapsed() >= expected,
        "{:?} < {expected:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_pause_holds_every_concurrent_caller() {
    let limiter = Arc::new(Limiter::new(60_000, 10));
    let start = tokio::time::Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|i| {
            let l = limiter.clone();
            tokio::spawn(async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(i * 10)).await;
                }
                l.acquire().await;
                tokio::time::Instant::now() - start
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    limiter.hold(Some(Duration::from_secs(30)));
    let mut after_pause = 0;
    for c in callers {
        let at = c.await.unwrap();
        if at >= Duration::from_secs(30) {
            after_pause += 1;
        }
    }
    // The first caller got through at t=0, before the pause; every other one waited.
    assert_eq!(after_pause, 19);
}

#[test]
fn strip_token_and_expiry_helpers() {
    assert_eq!(
        strip_token("http://h/images?after=x&access_token=MLY|1|a"),
        "http://h/images?after=x"
    );
    assert_eq!(
        url_expires_at("http://c/i.jpg?oe=6553F100&x=1"),
        Some(0x6553_F100)
    );
}

#[tokio::test]
async fn hand_made_images_with_bad_ids_are_listed_verbatim() {
    let fake = start(FakeConfig::default()).await;
    fake.add_image(
        "odd",
        FakeImage {
            id: "12/../x".into(),
            sequence: Some("../../etc".into()),
            ..FakeImage::default()
        },
    );
    fake.add_user("odd", 2, 15);
    let client = client_for(&fake, 10);
    let page = client
        .fetch_page(&client.first_page_url("odd", None))
        .await
        .unwrap();
    let got: HashMap<String, ImageMeta> = page
        .images
        .into_iter()
        .map(|m| (m.id.clone(), m.meta))
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got["12/../x"].sequence.as_deref(), Some("../../etc"));
    // The fake still serves it, with the id percent-encoded in the CDN path.
    let url = got["12/../x"]
        .url_for(model::Quality::Q256)
        .unwrap()
        .to_string();
    assert!(url.contains("12%2F..%2Fx"), "{url}");
    let bytes = client.download(&url).await.unwrap();
    assert_eq!(
        bytes.as_ref(),
        fake.expected_body("12/../x", Quality::Q256).as_slice()
    );
}

/// The fake itself: bodies are real JPEGs, most with EXIF as the CDN serves
/// it, some with malformed EXIF; the side endpoints answer like the API.
#[tokio::test]
async fn the_fake_serves_realistic_bodies_and_endpoints() {
    let fake = start(FakeConfig::default()).await;
    fake.add_user("pia", 40, 16);
    let truth = fake.images("pia");
    let (mut valid_exif, mut broken_exif) = (0, 0);
    let mut sizes = HashSet::new();
    for m in &truth {
        let mut dims = Vec::new();
        for q in Quality::ALL {
            let body = fake.expected_body(&m.id, q);
            let img = image::load_from_memory_with_format(&body, image::ImageFormat::Jpeg).unwrap();
            dims.push(img.width());
            sizes.insert(body.len());
        }
        dims.dedup();
        assert_eq!(dims.len(), 4, "every quality has its own pixel size");
        let body = fake.expected_body(&m.id, Quality::Original);
        match exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&body)) {
            Ok(e) => {
                let desc = e
                    .get_field(exif::Tag::ImageDescription, exif::In::PRIMARY)
                    .unwrap();
                let exif::Value::Ascii(text) = &desc.value else {
                    panic!("ImageDescription is not ASCII")
                };
                assert_eq!(text[0], fake_mapillary::SERVED_DESCRIPTION.as_bytes());
                valid_exif += 1;
            }
            Err(exif::Error::NotFound(_)) => {}
            Err(_) => broken_exif += 1,
        }
    }
    assert!(
        valid_exif > 20 && broken_exif > 0,
        "{valid_exif} valid, {broken_exif} malformed"
    );
    assert!(sizes.len() > 150, "sizes should vary");

    let http = reqwest::Client::new();
    let api = fake.api_url();
    let auth = format!("OAuth {}", fake.token());
    let seq = truth.iter().find_map(|m| m.sequence.clone()).unwrap();
    let body: serde_json::Value = http
        .get(api.join(&format!("image_ids?sequence_id={seq}")).unwrap())
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected: Vec<&str> = truth
        .iter()
        .filter(|m| m.sequence.as_deref() == Some(seq.as_str()))
        .map(|m| m.id.as_str())
        .collect();
    let got: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
    let one: serde_json::Value = http
        .get(
            api.join(&format!("{}?fields=make,thumb_256_url", truth[0].id))
                .unwrap(),
        )
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: HashSet<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.iter()
            .all(|k| ["id", "make", "thumb_256_url"].contains(k)),
        "{keys:?}"
    );
    let unauthorized = http
        .get(api.join("images?creator_username=pia").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let err: serde_json::Value = unauthorized.json().await.unwrap();
    assert_eq!(err["error"]["code"], 190);
    let many: Vec<String> = (0..51).map(|i| i.to_string()).collect();
    let refused = http
        .get(api.join(&format!("?ids={}", many.join(","))).unwrap())
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let err: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], 100);
}

/// When the CDN refuses most downloads (429), every download of the client
/// and its clones waits out a hold, not only the refused images; sporadic
/// 429s (the chaos tests' mix) hold nothing.
#[tokio::test]
async fn a_cdn_refusing_most_downloads_holds_every_download() {
    use mapillary_downloader::mapillary::cdn_gate::REFUSALS_TO_HOLD;
    let fake = start(FakeConfig::default()).await;
    fake.add_user("lou", 12, 12);
    let ids: Vec<String> = fake.images("lou").iter().map(|m| m.id.clone()).collect();
    let client = client_for(&fake, 10);
    let other = client.clone();
    fake.set_faults(Faults {
        cdn_429: 1.0,
        ..Faults::default()
    });
    for (n, id) in ids.iter().take(REFUSALS_TO_HOLD).enumerate() {
        assert!(client.cdn_gate().held_until().is_none(), "held after {n}");
        let refused = client
            .download(&fake.thumb_url(id, Quality::Q2048))
            .await
            .unwrap_err();
        assert!(
            matches!(refused.decision(), RetryDecision::RateLimited(_)),
            "{refused:?}"
        );
    }
    assert!(client.cdn_gate().held_until().is_some());
    fake.set_faults(Faults::default());
    let started = std::time::Instant::now();
    other
        .download(&fake.thumb_url(&ids[11], Quality::Q2048))
        .await
        .expect("the download goes through after the hold");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "fetched during the hold: {:?}",
        started.elapsed()
    );
}
