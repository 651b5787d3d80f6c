//! The fake's own tests for the ways of choosing images: organizations,
//! sequences across creators, filters honoured or ignored, capped bbox
//! searches and query timeouts, driven over HTTP as the daemon drives it.

use super::*;
use chrono::SecondsFormat;
use std::collections::HashSet;

/// `GET` on the API with `Authorization: OAuth <token>`: `url` is absolute
/// (a `next` link) or relative to the API base. The body as JSON (`Null`
/// when it is not JSON).
async fn get(fake: &FakeMapillary, url: &str) -> (u16, Value) {
    let url = if url.starts_with("http") {
        url.to_string()
    } else {
        fake.api_url().join(url).unwrap().to_string()
    };
    let response = reqwest::Client::new()
        .get(&url)
        .header("Authorization", format!("OAuth {}", fake.token()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn next_of(body: &Value) -> Option<String> {
    body["paging"]["next"].as_str().map(str::to_string)
}

/// Follows `next` from `first`: every id served, in order, and every `next`.
async fn page_all(fake: &FakeMapillary, first: &str) -> (Vec<String>, Vec<String>) {
    let (mut served, mut links) = (Vec::new(), Vec::new());
    let mut url = first.to_string();
    for _ in 0..1000 {
        let (status, body) = get(fake, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        served.extend(ids(&body));
        match next_of(&body) {
            Some(next) => {
                links.push(next.clone());
                url = next;
            }
            None => return (served, links),
        }
    }
    panic!("more than 1000 pages from {first}");
}

fn ids_of(images: &[FakeImage]) -> Vec<String> {
    images.iter().map(|m| m.id.clone()).collect()
}

fn creator(m: &Value) -> String {
    m["creator"]["username"].as_str().unwrap_or("-").to_string()
}

#[tokio::test]
async fn an_organization_lists_its_members_in_join_order_with_paging() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("alice", 23, 1);
    fake.add_user("bob", 17, 2);
    fake.add_user("carol", 9, 3);
    fake.add_user_to_org("bob", "1001");
    fake.add_user_to_org("alice", "1001");
    fake.add_user_to_org("bob", "1001");
    fake.add_user_to_org("carol", "2002");
    fake.add_user_to_org("bob", "2002");
    let want: Vec<String> = ids_of(&fake.images("bob"))
        .into_iter()
        .chain(ids_of(&fake.images("alice")))
        .collect();
    let (got, links) = page_all(&fake, "images?organization_id=1001&fields=id&limit=6").await;
    assert_eq!(got, want);
    assert_eq!(links.len(), 40usize.div_ceil(6) - 1);
    for link in &links {
        assert!(link.contains("organization_id=1001") && link.contains("limit=6"));
    }
    // Another organization, with a member in common; creators on every image.
    let (_, body) = get(&fake, "images?organization_id=2002&fields=creator").await;
    let creators: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(creator)
        .collect();
    let mut want = vec!["carol".to_string(); 9];
    want.extend(vec!["bob".to_string(); 17]);
    assert_eq!(creators, want);
}

#[tokio::test]
async fn organization_paging_has_the_faults_of_a_user_listing() {
    let fake = FakeMapillary::start(FakeConfig {
        token_in_next: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("dan", 10, 4);
    fake.add_user("eve", 10, 5);
    fake.add_user_to_org("dan", "7");
    fake.add_user_to_org("eve", "7");
    let (dan, eve) = (fake.images("dan"), fake.images("eve"));
    fake.delete_images([dan[3].id.clone(), eve[5].id.clone()]);
    fake.script(Route::Api, vec![Fault::Pass, Fault::OverlapPage]);
    let (served, links) = page_all(&fake, "images?organization_id=7&limit=4").await;
    let want: Vec<String> = ids_of(&dan)
        .into_iter()
        .chain(ids_of(&eve))
        .filter(|id| *id != dan[3].id && *id != eve[5].id)
        .collect();
    // The second page repeats the last three of the first.
    assert_eq!(served.len(), want.len() + OVERLAP);
    assert_eq!(served[4..7], served[1..4]);
    let mut unique = served.clone();
    let mut seen = HashSet::new();
    unique.retain(|id| seen.insert(id.clone()));
    assert_eq!(unique, want);
    assert!(links.iter().all(|l| l.contains("access_token=")));

    // A looping listing: past the end, an empty page linking to itself.
    fake.set_looping_next(true);
    let last = links.last().unwrap().clone();
    let (_, body) = get(&fake, &last).await;
    let empty = next_of(&body).expect("a looping next");
    let (_, body) = get(&fake, &empty).await;
    assert_eq!(ids(&body), Vec::<String>::new());
    assert_eq!(next_of(&body), Some(empty));
}

#[tokio::test]
async fn unknown_organizations_are_empty_and_a_creator_narrows_one() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("fay", 5, 6);
    fake.add_user("gus", 4, 7);
    fake.add_user_to_org("fay", "31");
    fake.add_user_to_org("gus", "31");
    fake.add_user_to_org("gus", "32");
    let empty = json!({"data": []});
    assert_eq!(
        get(&fake, "images?organization_id=999").await,
        (200, empty.clone())
    );
    let (_, body) = get(&fake, "images?organization_id=31&creator_username=gus").await;
    assert_eq!(ids(&body), ids_of(&fake.images("gus")));
    let (_, body) = get(&fake, "images?organization_id=32&creator_username=gus").await;
    assert_eq!(ids(&body), ids_of(&fake.images("gus")));
    for query in [
        "images?organization_id=32&creator_username=fay",
        "images?organization_id=32&creator_username=nobody",
        "images?creator_username=nobody",
        "images?fields=id",
    ] {
        assert_eq!(get(&fake, query).await, (200, empty.clone()), "{query}");
    }
}

#[tokio::test]
async fn hand_made_images_get_their_creator() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("hal", 1, 8);
    let plain = FakeImage {
        id: "5550001".into(),
        ..FakeImage::default()
    };
    fake.add_image("hal", plain.clone());
    let mut other = plain.clone();
    other.id = "5550002".into();
    other
        .extra
        .insert("creator".into(), json!({"username": "x", "id": "1"}));
    fake.add_image("hal", other);
    let mut none = plain;
    none.id = "5550003".into();
    none.extra.insert("creator".into(), Value::Null);
    fake.add_image("hal", none);

    let images = fake.images("hal");
    assert_eq!(images[1].extra["creator"], images[0].extra["creator"]);
    assert_eq!(images[1].extra["creator"]["username"], "hal");
    let (_, body) = get(&fake, "?ids=5550001,5550002,5550003&fields=creator").await;
    assert_eq!(creator(&body["5550001"]), "hal");
    assert_eq!(creator(&body["5550002"]), "x");
    assert_eq!(body["5550003"], json!({"id": "5550003"}));
}

#[tokio::test]
async fn a_sequence_spans_two_creators() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ida", 12, 9);
    fake.add_user("jon", 5, 10);
    let seq = "SeqAcrossTwoCreators01";
    fake.add_sequence(seq, &[("ida", 6), ("jon", 4), ("kim", 3)]);
    let ida = fake.images("ida");
    assert_eq!(ida.len(), 18);
    assert!(ida[..12].iter().all(|m| m.sequence.as_deref() != Some(seq)));
    assert!(ida[12..].iter().all(|m| m.sequence.as_deref() == Some(seq)));
    assert_eq!(fake.images("jon").len(), 9);
    assert_eq!(fake.images("kim").len(), 3);

    let (_, body) = get(&fake, &format!("image_ids?sequence_id={seq}")).await;
    let listed = ids(&body);
    assert_eq!(listed.len(), 13);
    let images: Vec<FakeImage> = listed.iter().map(|id| fake.image(id).unwrap()).collect();
    let times: Vec<i64> = images
        .iter()
        .map(|m| m.captured_at.unwrap_or(i64::MAX))
        .collect();
    assert!(times.is_sorted(), "capture order: {times:?}");
    let by = |name: &str| {
        images
            .iter()
            .filter(|m| m.extra["creator"]["username"] == name)
            .count()
    };
    assert_eq!((by("ida"), by("jon"), by("kim")), (6, 4, 3));

    // Deleted images leave every listing.
    let gone = fake.images("jon")[6].id.clone();
    fake.delete_images([gone.clone()]);
    let (_, body) = get(&fake, &format!("image_ids?sequence_id={seq}")).await;
    assert_eq!(ids(&body).len(), 12);
    assert!(!ids(&body).contains(&gone));
    // The `sequence_ids` filter, alone (a search of every user) or with a creator.
    let (all, _) = page_all(&fake, &format!("images?sequence_ids={seq},Other&limit=5")).await;
    assert_eq!(all.len(), 12);
    assert!(all.iter().all(|id| listed.contains(id)));
    let (_, body) = get(
        &fake,
        &format!("images?sequence_ids={seq}&creator_username=jon"),
    )
    .await;
    assert_eq!(ids(&body).len(), 3);
    let (_, body) = get(&fake, "image_ids?sequence_id=NoSuchSequence").await;
    assert_eq!(body, json!({"data": []}));
}

/// The same filtered request against a server that applies its filters and
/// one that ignores them.
#[tokio::test]
async fn filters_are_honoured_or_ignored_with_the_same_request() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("lea", 400, 11);
    // Undated, in the box, not a panorama: never passes a date filter.
    let undated = FakeImage {
        id: "7770001".into(),
        geometry: Some(GeoPoint {
            kind: Some("Point".into()),
            coordinates: vec![2.3, 48.85],
        }),
        is_pano: Some(false),
        ..FakeImage::default()
    };
    fake.add_image("lea", undated.clone());
    let all = fake.images("lea");
    let mut times: Vec<i64> = all.iter().filter_map(|m| m.captured_at).collect();
    times.sort();
    let stamp = |ms: i64, format| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(format, true)
    };
    let start = stamp(times[100], SecondsFormat::Millis);
    let end = stamp(times[300], SecondsFormat::Secs);
    let (start_ms, end_ms) = (times[100], listing::parse_instant(&end).unwrap());
    let bbox = [2.25, 48.80, 2.35, 48.90];
    let want: Vec<String> = all
        .iter()
        .filter(|m| m.captured_at.is_some_and(|t| t >= start_ms && t < end_ms))
        .filter(|m| m.is_pano == Some(false) && listing::in_bbox(m, &bbox))
        .map(|m| m.id.clone())
        .collect();
    assert!(!want.is_empty() && want.len() < 150, "{}", want.len());
    let first = format!(
        "images?creator_username=lea&fields=id&limit=20&bbox=2.25,48.80,2.35,48.90\
         &start_captured_at={start}&end_captured_at={end}&is_pano=false"
    );

    let (got, links) = page_all(&fake, &first).await;
    assert_eq!(got, want);
    fake.set_filter_mode(FilterMode::Ignore);
    let (ignored, ignored_links) = page_all(&fake, &first).await;
    assert_eq!(ignored, ids_of(&all));
    assert!(ignored.contains(&undated.id));
    for link in links.iter().chain(&ignored_links) {
        for key in [
            "bbox=",
            "start_captured_at=",
            "end_captured_at=",
            "is_pano=false",
        ] {
            assert!(link.contains(key), "{key} missing from {link}");
        }
    }

    // Dates as a date, and with an offset; the undated image only without a date filter.
    fake.set_filter_mode(FilterMode::Honour);
    let dated = all.iter().filter(|m| m.captured_at.is_some()).count();
    let (_, body) = get(
        &fake,
        "images?creator_username=lea&is_pano=false&bbox=2.29,48.84,2.31,48.86",
    )
    .await;
    assert!(ids(&body).contains(&undated.id));
    for dates in [
        "start_captured_at=2000-01-01",
        "end_captured_at=2100-01-01T02:00:00%2B02:00",
    ] {
        let (status, body) = get(&fake, &format!("images?creator_username=lea&{dates}")).await;
        assert_eq!(status, 200, "{dates}");
        assert_eq!(ids(&body).len(), dated, "{dates}");
        assert!(!ids(&body).contains(&undated.id));
    }
}

#[tokio::test]
async fn malformed_filters_answer_400_code_100_in_both_modes() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("max", 5, 12);
    for mode in [FilterMode::Honour, FilterMode::Ignore] {
        fake.set_filter_mode(mode);
        for bad in [
            "start_captured_at=yesterday",
            "end_captured_at=2024-13-01T00:00:00Z",
            "start_captured_at=2024-01-01T00:00:00",
            "is_pano=maybe",
            "is_pano=1",
            "sequence_ids=,",
            "bbox=1,2,3",
        ] {
            for source in ["creator_username=max", "organization_id=404"] {
                let (status, body) = get(&fake, &format!("images?{source}&{bad}")).await;
                assert_eq!(status, 400, "{mode} {bad}: {body}");
                assert_eq!(body["error"]["code"], 100, "{mode} {bad}");
            }
        }
        for good in [
            "start_captured_at=2024-01-01T00:00:00Z",
            "start_captured_at=2024-01-01T00:00:00.000Z",
            "end_captured_at=2024-01-01",
            "is_pano=true",
        ] {
            let (status, _) = get(&fake, &format!("images?creator_username=max&{good}")).await;
            assert_eq!(status, 200, "{mode} {good}");
        }
    }
}

#[tokio::test]
async fn capped_bbox_searches_answer_one_page_and_quarters_get_them_all() {
    let fake = FakeMapillary::start(FakeConfig {
        cap_bbox_searches: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("ned", 9000, 13);
    let all = fake.images("ned");
    // Generated images lie uniformly in REGION: each quarter holds about a quarter.
    let [w, s, e, n] = REGION;
    let (mx, my) = ((w + e) / 2.0, (s + n) / 2.0);
    for quarter in [
        [w, s, mx, my],
        [mx, s, e, my],
        [w, my, mx, n],
        [mx, my, e, n],
    ] {
        let inside = all.iter().filter(|m| listing::in_bbox(m, &quarter)).count();
        assert!((2000..2500).contains(&inside), "{quarter:?}: {inside}");
    }
    let region = [w - 0.001, s - 0.001, e + 0.001, n + 0.001];
    let url = |b: [f64; 4]| {
        format!(
            "images?creator_username=ned&fields=id&limit=2000&bbox={},{},{},{}",
            b[0], b[1], b[2], b[3]
        )
    };
    let (_, body) = get(&fake, &url(region)).await;
    assert_eq!(ids(&body).len(), 2000);
    assert_eq!(next_of(&body), None);
    // Without a bbox, paging as usual; without the cap, a bbox pages too.
    let (unboxed, _) = page_all(&fake, "images?creator_username=ned&fields=id&limit=2000").await;
    assert_eq!(unboxed.len(), 9000);
    fake.set_cap_bbox_searches(false);
    let (boxed, _) = page_all(&fake, &url(region)).await;
    assert_eq!(boxed.len(), 9000);
    fake.set_cap_bbox_searches(true);

    // A full page without `next` may be capped: split into quarters.
    let mut boxes = vec![region];
    let mut found = HashSet::new();
    let mut requests = 0;
    while let Some(b) = boxes.pop() {
        requests += 1;
        let (_, body) = get(&fake, &url(b)).await;
        let page = ids(&body);
        if page.len() == 2000 && next_of(&body).is_none() {
            let (mx, my) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            boxes.extend([
                [b[0], b[1], mx, my],
                [mx, b[1], b[2], my],
                [b[0], my, mx, b[3]],
                [mx, my, b[2], b[3]],
            ]);
        } else {
            found.extend(page);
        }
    }
    assert_eq!(
        found,
        all.iter().map(|m| m.id.clone()).collect::<HashSet<_>>()
    );
    assert!(requests > 5, "{requests}");
}

#[tokio::test]
async fn query_timeouts_hit_only_the_listing_routes() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ola", 30, 14);
    fake.add_sequence("SeqOfOla0123456789abc", &[("ola", 3)]);
    let id = fake.images("ola")[0].id.clone();
    let timeout_body = |body: &Value| {
        let mut error = body["error"].clone();
        assert!(error["fbtrace_id"].is_string(), "{body}");
        error.as_object_mut().unwrap().remove("fbtrace_id");
        assert_eq!(
            error,
            json!({"message": "Query Timeout", "type": "OAuthException", "code": -2,
                "error_subcode": 3404014, "is_transient": false})
        );
    };

    // Scripted: it waits for a listing request.
    fake.script(Route::Api, vec![Fault::QueryTimeout]);
    assert_eq!(get(&fake, &format!("?ids={id}")).await.0, 200);
    assert_eq!(get(&fake, &id).await.0, 200);
    let (status, body) = get(&fake, "images?creator_username=ola&limit=1000").await;
    assert_eq!(status, 500);
    timeout_body(&body);
    assert_eq!(
        fake.requests().last().unwrap().fault,
        Some("500-query-timeout")
    );
    let (status, body) = get(&fake, "images?creator_username=ola&limit=500").await;
    assert_eq!((status, ids(&body).len()), (200, 33));

    // Random: listing routes only.
    fake.set_faults(Faults {
        api_query_timeout: 1.0,
        ..Faults::default()
    });
    let (status, body) = get(&fake, "images?creator_username=ola").await;
    assert_eq!(status, 500);
    timeout_body(&body);
    let (status, body) = get(&fake, "image_ids?sequence_id=SeqOfOla0123456789abc").await;
    assert_eq!(status, 500);
    timeout_body(&body);
    assert_eq!(get(&fake, &format!("?ids={id}")).await.0, 200);
    assert_eq!(get(&fake, &id).await.0, 200);
    let (status, body) = get(&fake, "images?creator_username=ola&limit=zero").await;
    assert_eq!(status, 500);
    timeout_body(&body);

    assert_eq!(fake.images_limits(), vec![1000, 500, MAX_LIMIT]);
    assert_eq!(fake.api_requests_to("/images"), 4);
    assert_eq!(fake.api_requests_to("/image_ids"), 1);
    assert_eq!(fake.api_requests_to("/"), 2);
    assert_eq!(fake.api_requests_to(&format!("/{id}")), 2);
    assert_eq!(fake.api_calls(), 9);
    fake.clear_log();
    assert_eq!(fake.api_requests_to("/images"), 0);
    assert!(fake.images_limits().is_empty());

    assert!(Faults::preset("chaos").unwrap().api_query_timeout > 0.0);
    for name in ["none", "flaky", "ratelimit"] {
        assert_eq!(Faults::preset(name).unwrap().api_query_timeout, 0.0);
    }
    assert_eq!(FakeConfig::default().filters, FilterMode::Honour);
    assert_eq!("ignore".parse::<FilterMode>(), Ok(FilterMode::Ignore));
}
