//! Issue 23: what the Mapillary client accepts from a server. Image
//! downloads follow at most 3 redirects and never from https to plain http;
//! a Graph API answer over 32 MiB is refused (declared or streamed) with an
//! error that says so and is retried like any transient fault. Against a
//! small fake in this file (redirect chains and huge bodies are nothing the
//! Mapillary fake serves).

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use mapillary_downloader::mapillary::client::{MAX_API_BODY, redirect_refusal};
use mapillary_downloader::mapillary::{
    ClientSettings, MapillaryClient, MapillaryError, RetryDecision,
};
use mapillary_downloader::secret::Secret;
use mld_testkit::server::ServerTask;
use std::time::Duration;
use url::Url;

const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 0xFF, 0xD9,
];

async fn hop(Path(n): Path<u32>) -> Response {
    if n == 0 {
        JPEG.into_response()
    } else {
        Redirect::temporary(&format!("/hop/{}", n - 1)).into_response()
    }
}

/// `MAX_API_BODY + 1` bytes, declared or streamed in 1 MiB chunks.
async fn huge(Path(declared): Path<bool>) -> Response {
    let size = usize::try_from(MAX_API_BODY).unwrap() + 1;
    if declared {
        return vec![b' '; size].into_response();
    }
    let chunks = (0..=size / (1 << 20)).map(move |i| {
        let len = if i == size / (1 << 20) {
            size % (1 << 20)
        } else {
            1 << 20
        };
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; len]))
    });
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

async fn serve() -> (ServerTask, String) {
    let app = axum::Router::new()
        .route("/hop/{n}", get(hop))
        .route("/huge/{declared}", get(huge));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = ServerTask::spawn(addr, move |stop| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let base = task.base_url();
    (task, base)
}

fn client(base: &str) -> MapillaryClient {
    let settings = ClientSettings {
        api_url: Url::parse(base).unwrap(),
        page_size: 100,
        calls_per_minute: 60_000,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        download_timeout: Duration::from_secs(30),
        read_idle_timeout: Duration::from_secs(10),
        max_image_bytes: 1 << 20,
    };
    MapillaryClient::new(settings, Secret::new("MLY|1|client-limits-test")).unwrap()
}

#[tokio::test]
async fn an_image_download_follows_at_most_three_redirects() {
    let (_task, base) = serve().await;
    let client = client(&base);
    for hops in 0..=3 {
        let body = client.download(&format!("{base}/hop/{hops}")).await;
        assert_eq!(
            body.expect("within the limit").as_ref(),
            JPEG,
            "{hops} hops"
        );
    }
    let err = client
        .download(&format!("{base}/hop/4"))
        .await
        .expect_err("a fourth redirect is refused");
    assert!(err.to_string().contains("redirects"), "{err}");
    assert_eq!(err.decision(), RetryDecision::Retryable, "{err}");
}

#[test]
fn never_from_https_down_to_http() {
    let https = Url::parse("https://cdn.example/a.jpg").unwrap();
    let http = Url::parse("http://cdn.example/a.jpg").unwrap();
    assert!(redirect_refusal(std::slice::from_ref(&https), &http).is_some());
    assert!(redirect_refusal(std::slice::from_ref(&https), &https).is_none());
    assert!(redirect_refusal(std::slice::from_ref(&http), &https).is_none());
    assert!(redirect_refusal(std::slice::from_ref(&http), &http).is_none());
    let three = vec![http.clone(); 3];
    assert!(redirect_refusal(&three, &http).is_none());
    let four = vec![http.clone(); 4];
    assert!(redirect_refusal(&four, &http).is_some());
}

#[tokio::test]
async fn an_api_answer_over_32_mib_is_refused_declared_or_streamed() {
    let (_task, base) = serve().await;
    let client = client(&base);
    for declared in [true, false] {
        let err = client
            .fetch_page(&format!("{base}/huge/{declared}"))
            .await
            .expect_err("over the limit");
        assert!(
            matches!(err, MapillaryError::Transient(_)),
            "declared {declared}: {err:?}"
        );
        assert!(err.to_string().contains("32 MiB"), "{err}");
        assert_eq!(err.decision(), RetryDecision::Retryable);
    }
}
