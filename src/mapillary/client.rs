//! The Mapillary client: Graph API calls through the shared limiter, and CDN
//! downloads that never carry the token.
//!
//! Two `reqwest::Client`s keep the two hosts apart: only the API client ever
//! sees the `Authorization` header, and it follows no redirects, so the token
//! cannot be carried off the API origin. Image downloads follow at most
//! three redirects and never from https to plain http; an API answer is
//! read up to 32 MiB, no further. Each method makes exactly ONE
//! attempt; the daemon owns retries, using [`MapillaryError::decision`].

use super::cdn_gate::CdnGate;
use super::error::{MapillaryError, classify_api_status, classify_cdn_status, transport_error};
use super::hedge::{self, HedgePolicy, Progress, QuietEstimate};
use super::limiter::{Limiter, SharedBudget, take_shared_slot};
use super::urls::{
    endpoint, listing_url, mentions_secret, onto_api_origin, strip_secret, url_expires_at,
};
use crate::config::MapillarySettings;
use crate::metrics::{Metrics, OutcomeClass};
use crate::model::{Bbox, IMAGE_FIELDS, ImageMeta, ListedImage};
use crate::secret::Secret;
use crate::selection::{Filters, Source};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, RANGE,
};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

/// Most ids one `GET /?ids=` call may name (Graph API limit).
pub const MAX_IDS_PER_CALL: usize = 50;

const USER_AGENT: &str = concat!("mapillary-downloader/", env!("CARGO_PKG_VERSION"));
/// The largest Graph API answer read: a 2,000-image page is a few MB, so
/// anything near this is a broken or hostile server, and reading it whole
/// into memory (once per worker) must not be able to exhaust it.
pub const MAX_API_BODY: u64 = 32 << 20;
/// Redirects an image download follows at most (Mapillary's CDN uses none
/// or one).
pub const MAX_IMAGE_REDIRECTS: usize = 3;

/// The client's settings in its own units, from `[mapillary]` (tests build them directly against the fake).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Base URL of the Graph API.
    pub api_url: Url,
    /// Images per listing page.
    pub page_size: u32,
    /// The limiter's pace for API calls.
    pub calls_per_minute: u32,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest API call.
    pub request_timeout: Duration,
    /// Longest image download.
    pub download_timeout: Duration,
    /// Longest wait for the next byte of a body (and, on the CDN, for the
    /// response to start): a stalled transfer is a transient fault after
    /// this, not after the whole download timeout.
    pub read_idle_timeout: Duration,
    /// Largest image body accepted.
    pub max_image_bytes: u64,
}

impl ClientSettings {
    /// From the `[mapillary]` config section (already range-checked there).
    pub fn from_config(m: &MapillarySettings) -> Result<ClientSettings, MapillaryError> {
        let api_url = Url::parse(&m.url).map_err(|e| {
            MapillaryError::Fatal(format!("mapillary.url {:?} is not a URL: {e}", m.url))
        })?;
        Ok(ClientSettings {
            api_url,
            page_size: m.page_size,
            calls_per_minute: m.calls_per_minute,
            connect_timeout: Duration::from_secs(m.connect_timeout_secs),
            request_timeout: Duration::from_secs(m.request_timeout_secs),
            download_timeout: Duration::from_secs(m.download_timeout_secs),
            read_idle_timeout: Duration::from_secs(m.read_idle_timeout_secs),
            max_image_bytes: m.max_image_bytes,
        })
    }
}

/// One page of `GET /images`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePage {
    /// Each with the JSON the store keeps, made while decoding.
    pub images: Vec<ListedImage>,
    /// Token-free link to the next page; `None` on the last page.
    pub next: Option<String>,
    /// Items of `data` that were not image objects (logged, then dropped).
    pub skipped: usize,
}

/// What one `GET /?ids=` call answered: the images it has, by id, and the
/// objects it sent that could not be read (by id, with the reason).
#[derive(Debug, Default)]
pub struct ImagesAnswer {
    /// Images the API returned, by id.
    pub found: HashMap<String, ImageMeta>,
    /// Objects it returned that could not be decoded, by id, with why.
    pub unreadable: HashMap<String, String>,
}

/// Cheap to clone: every clone shares the connection pools and the limiter.
#[derive(Clone)]
pub struct MapillaryClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClientSettings,
    token: Secret,
    /// `OAuth <token>`, marked sensitive so http's Debug never prints it.
    auth: HeaderValue,
    api: reqwest::Client,
    cdn: reqwest::Client,
    limiter: Limiter,
    /// The cluster's budget, when other daemons share this one's queue.
    shared_budget: Option<Arc<dyn SharedBudget>>,
    /// Holds every download while the CDN refuses most of them.
    cdn_gate: CdnGate,
    /// How long healthy downloads stay quiet: when a hedged download gets
    /// its twin.
    quiet: QuietEstimate,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MapillaryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapillaryClient")
            .field("api_url", &self.inner.settings.api_url.as_str())
            .field("token", &self.inner.token)
            .finish()
    }
}

/// An images page, its items left as borrowed raw JSON: each parses straight
/// into an [`ImageMeta`], so a 2,000-image page never exists as a
/// `serde_json::Value` tree (~5 KB an image: 10 MB of peak heap a page, where
/// the body itself is 2.1 MB).
#[derive(Deserialize)]
struct PageBody<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    next: Option<String>,
}

impl MapillaryClient {
    /// A client with its own limiter and connection pools; an empty token is refused here, before any call.
    pub fn new(settings: ClientSettings, token: Secret) -> Result<Self, MapillaryError> {
        if token.is_empty() {
            return Err(MapillaryError::BadToken("the access token is empty".into()));
        }
        if !matches!(settings.api_url.scheme(), "http" | "https") {
            return Err(MapillaryError::Fatal(format!(
                "API URL must be http or https, got {:?}",
                settings.api_url.scheme()
            )));
        }
        let mut auth =
            HeaderValue::from_str(&format!("OAuth {}", token.expose().trim())).map_err(|_| {
                MapillaryError::BadToken(
                    "the access token contains characters not allowed in an HTTP header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let api = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| MapillaryError::Fatal(format!("cannot build the API HTTP client: {e}")))?;
        let cdn = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.download_timeout)
            .read_timeout(settings.read_idle_timeout)
            .redirect(reqwest::redirect::Policy::custom(
                |attempt| match redirect_refusal(attempt.previous(), attempt.url()) {
                    None => attempt.follow(),
                    Some(reason) => attempt.error(reason),
                },
            ))
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| MapillaryError::Fatal(format!("cannot build the CDN HTTP client: {e}")))?;
        let limiter = Limiter::new(
            settings.calls_per_minute,
            Limiter::default_burst(settings.calls_per_minute),
        );
        let quiet = QuietEstimate::new(HedgePolicy::for_idle_timeout(settings.read_idle_timeout));
        Ok(MapillaryClient {
            inner: Arc::new(Inner {
                settings,
                token,
                auth,
                api,
                cdn,
                limiter,
                shared_budget: None,
                cdn_gate: CdnGate::default(),
                quiet,
                metrics: Arc::default(),
            }),
        })
    }

    /// Makes every API call also take a slot of `budget` (shared with other
    /// daemons). Call before the client is cloned.
    pub fn with_shared_budget(mut self, budget: Arc<dyn SharedBudget>) -> MapillaryClient {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shared_budget = Some(budget),
            None => tracing::error!("with_shared_budget on a cloned client: ignored"),
        }
        self
    }

    /// The counters this client (and the engine using it) feeds.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The settings it was built with (page size for the enumerators).
    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// The limiter every API call of every clone passes.
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// The gate every download of every clone passes.
    pub fn cdn_gate(&self) -> &CdnGate {
        &self.inner.cdn_gate
    }

    /// Token-free URL of a user's first `GET /images` page.
    pub fn first_page_url(&self, username: &str, bbox: Option<Bbox>) -> String {
        let filters = Filters {
            bbox,
            ..Filters::default()
        };
        let source = Source::Username(username.to_string());
        self.listing_url(&source, &filters, bbox, self.inner.settings.page_size)
    }

    /// Token-free URL of the first `GET /images` page of a user's or an
    /// organization's images in `tile`, with the selection's filters.
    pub fn listing_url(
        &self,
        source: &Source,
        filters: &Filters,
        tile: Option<Bbox>,
        page_size: u32,
    ) -> String {
        listing_url(
            &self.inner.settings.api_url,
            source,
            filters,
            tile,
            page_size,
        )
    }

    /// The configured `limit` of a listing page.
    pub fn page_size(&self) -> u32 {
        self.inner.settings.page_size
    }

    /// The ids of a sequence's images, in capture order
    /// (`GET /image_ids?sequence_id=`). An unknown sequence has none.
    pub async fn fetch_sequence_ids(
        &self,
        sequence_id: &str,
    ) -> Result<Vec<String>, MapillaryError> {
        let mut target = endpoint(&self.inner.settings.api_url, "image_ids");
        target
            .query_pairs_mut()
            .append_pair("sequence_id", sequence_id);
        let body = self.api_get(target, "sequence image ids").await?;
        #[derive(Deserialize)]
        struct Ids {
            data: Vec<IdOnly>,
        }
        #[derive(Deserialize)]
        struct IdOnly {
            id: Value,
        }
        let ids: Ids = serde_json::from_slice(&body).map_err(|e| {
            MapillaryError::Transient(format!("invalid JSON in a sequence's image ids: {e}"))
        })?;
        Ok(ids
            .data
            .into_iter()
            .filter_map(|item| match item.id {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect())
    }

    /// One page. `url` is a first-page URL or a stored `next`; it is always
    /// fetched from the configured API origin, and `next` comes back token-free.
    pub async fn fetch_page(&self, url: &str) -> Result<ImagePage, MapillaryError> {
        let target = onto_api_origin(&self.inner.settings.api_url, url)
            .map_err(|e| MapillaryError::Fatal(self.redact(&e)))?;
        let body = self.api_get(target, "images page").await?;
        // Decoding a 2000-image page takes milliseconds of CPU: do it off the
        // async workers so downloads and `/status` never stall behind it.
        let DecodedPage {
            next,
            images,
            rejected,
        } = tokio::task::spawn_blocking(move || decode_page(&body))
            .await
            .map_err(|e| {
                MapillaryError::Fatal(format!("decoding an images page panicked: {e}"))
            })??;
        for reason in &rejected {
            tracing::warn!(reason = %self.redact(reason), "skipping an item of an images page");
        }
        let skipped = rejected.len();
        let secret = self.inner.token.expose();
        let next = next
            .map(|n| strip_secret(n.trim(), secret))
            .filter(|n| !n.is_empty());
        if next.as_deref().is_some_and(|n| mentions_secret(n, secret)) {
            return Err(MapillaryError::Fatal(
                "the API's next link carries the access token outside a query parameter; refusing to follow or store it".into(),
            ));
        }
        Ok(ImagePage {
            images,
            next,
            skipped,
        })
    }

    /// Fresh metadata (and image URLs) for up to 50 ids in one call. The
    /// Graph API fails the whole call ([`MapillaryError::Missing`]) when any id no
    /// longer exists; ids absent from a successful answer are unknown too.
    /// An object the answer has but we cannot read is no proof of deletion:
    /// it comes back in `unreadable` with the reason.
    pub async fn fetch_images(&self, ids: &[&str]) -> Result<ImagesAnswer, MapillaryError> {
        if ids.len() > MAX_IDS_PER_CALL {
            return Err(MapillaryError::BadRequest {
                code: None,
                message: format!("at most {MAX_IDS_PER_CALL} ids per call, got {}", ids.len()),
            });
        }
        if ids.is_empty() {
            return Ok(ImagesAnswer::default());
        }
        let mut target = endpoint(&self.inner.settings.api_url, "");
        target
            .query_pairs_mut()
            .append_pair("ids", &ids.join(","))
            .append_pair("fields", &IMAGE_FIELDS.join(","));
        let body = self.api_get(target, "ids batch").await?;
        let objects: HashMap<String, &RawValue> = serde_json::from_slice(&body)
            .map_err(|e| MapillaryError::Transient(format!("invalid JSON in ids batch: {e}")))?;
        let mut out = ImagesAnswer {
            found: HashMap::with_capacity(objects.len()),
            unreadable: HashMap::new(),
        };
        for (key, value) in objects {
            match parse_image(value) {
                Ok(meta) => {
                    out.found.insert(key, meta);
                }
                Err(reason) => {
                    let reason = self.redact(&reason);
                    tracing::warn!(%reason, "an object of an ids batch could not be read");
                    out.unreadable.insert(key, reason);
                }
            }
        }
        Ok(out)
    }

    /// Downloads one CDN object into memory, in ONE request. No
    /// `Authorization` header, ever.
    pub async fn download(&self, url: &str) -> Result<Bytes, MapillaryError> {
        self.inner.cdn_gate.pass().await;
        let started = Instant::now();
        let progress = Progress::new();
        let result = self.download_once(url, &progress).await;
        if result.is_ok() {
            self.inner.quiet.record(&progress);
        }
        self.downloaded(started, result)
    }

    /// [`MapillaryClient::download`], with a second request for the same
    /// URL should the first go quiet for far longer than downloads do (see
    /// [`hedge`]): the first body to arrive whole is returned, the other
    /// request dropped. Counted as one download in `cdn_fetches`, and in
    /// the hedge counters when a twin was started.
    pub async fn download_hedged(&self, url: &str) -> Result<Bytes, MapillaryError> {
        self.inner.cdn_gate.pass().await;
        let started = Instant::now();
        let (result, winner) = hedge::race(&self.inner.quiet, |progress| async move {
            self.download_once(url, &progress).await
        })
        .await;
        hedge::count(&self.inner.metrics, winner);
        self.downloaded(started, result)
    }

    /// Feeds a download's result to the CDN gate and the metrics.
    fn downloaded(
        &self,
        started: Instant,
        result: Result<Bytes, MapillaryError>,
    ) -> Result<Bytes, MapillaryError> {
        let refusal = match &result {
            Ok(_) => Some(None),
            Err(MapillaryError::RateLimited { retry_after }) => Some(Some(*retry_after)),
            Err(_) => None,
        };
        if let Some(refusal) = refusal
            && let Some(pause) = self.inner.cdn_gate.record(refusal)
        {
            crate::metrics::add(&self.inner.metrics.rate_limit_holds, 1);
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "the CDN refuses most downloads (HTTP 429); holding every download"
            );
        }
        let metrics = &self.inner.metrics;
        metrics.cdn_fetches.add(OutcomeClass::of(&result));
        if result.is_ok() {
            metrics.image_download_seconds.observe(started.elapsed());
        }
        result
    }

    /// One request, reporting each sign of life to `progress`.
    async fn download_once(&self, url: &str, progress: &Progress) -> Result<Bytes, MapillaryError> {
        let target = cdn_target(url)?;
        let started = Instant::now();
        let mut response = self
            .inner
            .cdn
            .get(target)
            .send()
            .await
            .map_err(|e| transport_error("image download", e))?;
        progress.answered();
        let status = response.status();
        if !status.is_success() {
            tracing::debug!(status = status.as_u16(), "CDN refused an image");
            return Err(classify_cdn_status(status, response.headers()));
        }
        let max = self.inner.settings.max_image_bytes;
        let declared = header_u64(response.headers(), CONTENT_LENGTH);
        if let Some(n) = declared.filter(|n| *n > max) {
            return Err(MapillaryError::Transient(format!(
                "image is {n} bytes, over the {max}-byte limit"
            )));
        }
        // Kept for the "not a JPEG" error only: no string per image.
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let capacity = declared
            .unwrap_or(256 * 1024)
            .min(max)
            .min(64 * 1024 * 1024);
        let mut buf = crate::buffers::take(usize::try_from(capacity).unwrap_or(0));
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| transport_error("image download", e))?;
            let Some(chunk) = chunk else { break };
            progress.chunk();
            if (buf.len() + chunk.len()) as u64 > max {
                return Err(MapillaryError::Transient(format!(
                    "image body exceeds the {max}-byte limit"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(n) = declared
            && buf.len() as u64 != n
        {
            return Err(MapillaryError::Transient(format!(
                "short image body: {} of {n} bytes",
                buf.len()
            )));
        }
        if !buf.starts_with(&[0xFF, 0xD8, 0xFF]) {
            let content_type = content_type
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .chars()
                .take(60)
                .collect::<String>();
            return Err(MapillaryError::Transient(format!(
                "not a JPEG: {} bytes of content-type {content_type}",
                buf.len()
            )));
        }
        tracing::debug!(
            bytes = buf.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "downloaded an image"
        );
        Ok(Bytes::from(buf))
    }

    /// Size of a CDN object without downloading it: HEAD, then a one-byte
    /// ranged GET. `None` when the CDN does not say.
    pub async fn probe_size(&self, url: &str) -> Result<Option<u64>, MapillaryError> {
        let target = cdn_target(url)?;
        let head = self
            .inner
            .cdn
            .head(target.clone())
            .send()
            .await
            .map_err(|e| transport_error("size probe", e))?;
        let status = head.status();
        if status.is_success() {
            if let Some(n) = header_u64(head.headers(), CONTENT_LENGTH) {
                return Ok(Some(n));
            }
        } else if !matches!(
            status,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED | StatusCode::BAD_REQUEST
        ) {
            return Err(classify_cdn_status(status, head.headers()));
        }
        let ranged = self
            .inner
            .cdn
            .get(target)
            .header(RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(|e| transport_error("size probe", e))?;
        match ranged.status() {
            StatusCode::PARTIAL_CONTENT => Ok(ranged
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(total_from_content_range)),
            s if s.is_success() => Ok(header_u64(ranged.headers(), CONTENT_LENGTH)),
            s => Err(classify_cdn_status(s, ranged.headers())),
        }
    }

    /// One API GET through the limiter; feeds rate limits back into it.
    async fn api_get(&self, url: Url, what: &str) -> Result<Bytes, MapillaryError> {
        self.inner.limiter.acquire().await;
        if let Some(budget) = &self.inner.shared_budget {
            take_shared_slot(budget.as_ref(), &self.inner.limiter).await;
        }
        let started = Instant::now();
        let result = self.api_get_once(url.clone()).await;
        let metrics = &self.inner.metrics;
        metrics.api_calls.add(OutcomeClass::of(&result));
        metrics.api_call_seconds.observe(started.elapsed());
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(body) => {
                self.inner.limiter.record_success();
                tracing::debug!(url = %url, bytes = body.len(), elapsed_ms, "{what}");
            }
            Err(MapillaryError::RateLimited { retry_after }) => {
                crate::metrics::add(&metrics.rate_limit_holds, 1);
                let pause = self.inner.limiter.hold(*retry_after);
                if let Some(budget) = &self.inner.shared_budget {
                    budget.hold(pause).await;
                }
                tracing::debug!(url = %url, pause_ms = pause.as_millis() as u64, "{what}: rate limited; holding all API calls");
            }
            Err(e) => tracing::debug!(url = %url, error = %e, elapsed_ms, "{what} failed"),
        }
        result
    }

    async fn api_get_once(&self, url: Url) -> Result<Bytes, MapillaryError> {
        let response = self
            .inner
            .api
            .get(url)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .send()
            .await
            .map_err(|e| transport_error("API call", e))?;
        let status = response.status();
        if status.is_success() {
            // A slow search may take long to start answering (bounded by
            // `request_timeout`), but once the body flows, a stall is a fault.
            let idle = self.inner.settings.read_idle_timeout;
            let mut response = response;
            // Sized once from Content-Length (bounded: it is the server's
            // word), not doubled as a multi-megabyte page arrives.
            let declared = response.content_length().unwrap_or(0);
            if declared > MAX_API_BODY {
                return Err(api_body_too_large());
            }
            let mut body = Vec::with_capacity(declared as usize);
            loop {
                match tokio::time::timeout(idle, response.chunk()).await {
                    Err(_) => {
                        return Err(MapillaryError::Transient(format!(
                            "API response stalled: no byte for {}s",
                            idle.as_secs_f64()
                        )));
                    }
                    Ok(Err(e)) => return Err(transport_error("API response", e)),
                    Ok(Ok(None)) => return Ok(Bytes::from(body)),
                    Ok(Ok(Some(chunk))) => {
                        if (body.len() + chunk.len()) as u64 > MAX_API_BODY {
                            return Err(api_body_too_large());
                        }
                        body.extend_from_slice(&chunk);
                    }
                }
            }
        }
        let headers = response.headers().clone();
        // A cut-short error body still classifies by status.
        let body = response.bytes().await.unwrap_or_default();
        Err(classify_api_status(status, &headers, &body, |s| {
            self.redact(s)
        }))
    }

    /// Scrubs the token out of server-provided text.
    fn redact(&self, text: &str) -> String {
        let token = self.inner.token.expose().trim();
        if token.is_empty() {
            text.to_string()
        } else {
            text.replace(token, "[redacted]")
        }
    }
}

/// An answer over [`MAX_API_BODY`]: transient (a server fault that may pass;
/// it costs an attempt, so a server that keeps doing it ends the retries).
fn api_body_too_large() -> MapillaryError {
    MapillaryError::Transient(format!(
        "the API's answer is larger than the {} MiB limit",
        MAX_API_BODY >> 20
    ))
}

/// Why an image download must not follow a redirect to `next` after the
/// requests to `previous` (the first URL included), if it must not: more
/// than [`MAX_IMAGE_REDIRECTS`], or from https down to plain http (the
/// image, and the signed URL's query, would travel unencrypted).
pub fn redirect_refusal(previous: &[Url], next: &Url) -> Option<&'static str> {
    if previous.len() > MAX_IMAGE_REDIRECTS {
        return Some("more than 3 redirects");
    }
    let from_https = previous.last().is_some_and(|url| url.scheme() == "https");
    if from_https && next.scheme() != "https" {
        return Some("refused a redirect from https to plain http");
    }
    None
}

/// An image URL we may request: absolute http(s), not yet past its `oe=` expiry.
fn cdn_target(url: &str) -> Result<Url, MapillaryError> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| MapillaryError::UrlExpired(format!("unusable image URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(MapillaryError::UrlExpired(format!(
            "unusable image URL scheme {:?}",
            parsed.scheme()
        )));
    }
    if let Some(expiry) = url_expires_at(url) {
        let now = chrono::Utc::now().timestamp();
        if expiry <= now {
            return Err(MapillaryError::UrlExpired(format!(
                "image URL expired {}s ago",
                now - expiry
            )));
        }
    }
    Ok(parsed)
}

fn header_u64(
    headers: &reqwest::header::HeaderMap,
    name: reqwest::header::HeaderName,
) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `bytes 0-0/12345` -> 12345; `*` totals are unknown.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// An image object. A numeric `id` (not what the API documents, but cheap to
/// accept) becomes the string the rest of the program expects (see
/// [`ImageMeta`]); a failure names the id when there is one.
fn parse_image(raw: &RawValue) -> Result<ImageMeta, String> {
    serde_json::from_str::<ImageMeta>(raw.get()).map_err(|e| {
        let id_hint = serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|value| match value.get("id")? {
                Value::String(s) => Some(s.chars().take(40).collect::<String>()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        format!("image {id_hint:?}: {e}")
    })
}

/// Parses an images page: its paging, the images that parse (each with the
/// JSON the store will keep), and the reasons for the items that do not (one
/// odd item must not stall a job).
fn decode_page(body: &[u8]) -> Result<DecodedPage, MapillaryError> {
    let page: PageBody<'_> = serde_json::from_slice(body)
        .map_err(|e| MapillaryError::Transient(format!("invalid JSON in images page: {e}")))?;
    let mut images = Vec::with_capacity(page.data.len());
    let mut rejected = Vec::new();
    for item in page.data {
        match parse_image(item).and_then(|meta| {
            let id = meta.id.clone();
            ListedImage::new(meta).map_err(|e| format!("image {id:?}: {e}"))
        }) {
            Ok(image) => images.push(image),
            Err(reason) => rejected.push(reason),
        }
    }
    Ok(DecodedPage {
        next: page.paging.and_then(|p| p.next),
        images,
        rejected,
    })
}

/// What [`decode_page`] makes of a page's body.
struct DecodedPage {
    /// `paging.next` as served (not yet checked for the token).
    next: Option<String>,
    images: Vec<ListedImage>,
    rejected: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_totals() {
        assert_eq!(total_from_content_range("bytes 0-0/12345"), Some(12345));
        assert_eq!(total_from_content_range("bytes 0-0/*"), None);
        assert_eq!(total_from_content_range("garbage"), None);
    }

    #[test]
    fn numeric_ids_become_strings() {
        let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
        let meta = parse_image(&raw(r#"{"id": 123, "captured_at": 5}"#)).unwrap();
        assert_eq!(meta.id, "123");
        assert!(parse_image(&raw(r#"{"captured_at": 5}"#)).is_err());
        assert!(parse_image(&raw(r#""nope""#)).is_err());
        let reason = parse_image(&raw(r#"{"id": 77, "captured_at": "x"}"#)).unwrap_err();
        assert!(reason.starts_with("image \"77\""), "{reason}");
    }

    #[test]
    fn a_page_keeps_escaped_text_and_skips_only_its_odd_items() {
        let body = br#"{"data": [
            {"id": "1", "make": "Ca\"non \u00e9", "creator": {"username": "a\/b"}, "thumb_1024_url": "http://x/1"},
            {"id": "2", "captured_at": "not a time"},
            42,
            {"id": 3, "is_pano": true}
        ], "paging": {"next": "http://api/next?after=Q"}}"#;
        let page = decode_page(body).unwrap();
        let ids: Vec<&str> = page.images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
        assert_eq!(page.images[0].make.as_deref(), Some("Ca\"non \u{e9}"));
        assert_eq!(page.images[0].extra["creator"]["username"], "a/b");
        assert!(
            !page.images[0].stored.contains("http://x/1"),
            "URLs are not stored"
        );
        assert_eq!(page.rejected.len(), 2, "{:?}", page.rejected);
        assert!(
            page.rejected[0].starts_with("image \"2\""),
            "{:?}",
            page.rejected
        );
        assert_eq!(page.next.as_deref(), Some("http://api/next?after=Q"));
        assert!(matches!(
            decode_page(b"{\"data\": [").map(|_| ()),
            Err(MapillaryError::Transient(_))
        ));
    }

    #[test]
    fn expired_and_unusable_urls_never_hit_the_network() {
        assert!(matches!(
            cdn_target("http://cdn.local/img/1/original.jpg?oe=10"),
            Err(MapillaryError::UrlExpired(_))
        ));
        assert!(matches!(
            cdn_target("ftp://cdn.local/x.jpg"),
            Err(MapillaryError::UrlExpired(_))
        ));
        assert!(matches!(
            cdn_target("nope"),
            Err(MapillaryError::UrlExpired(_))
        ));
        assert!(cdn_target("http://cdn.local/img/1/original.jpg?oe=7fffffff").is_ok());
    }

    #[test]
    fn settings_from_config() {
        let m = MapillarySettings {
            url: "http://127.0.0.1:1".into(),
            page_size: 10,
            calls_per_minute: 60,
            connect_timeout_secs: 1,
            request_timeout_secs: 2,
            download_timeout_secs: 3,
            read_idle_timeout_secs: 2,
            max_image_bytes: 4,
            url_refresh_margin_secs: 5,
        };
        let s = ClientSettings::from_config(&m).unwrap();
        assert_eq!(s.download_timeout, Duration::from_secs(3));
        let bad = MapillarySettings {
            url: "::".into(),
            ..m
        };
        assert!(matches!(
            ClientSettings::from_config(&bad),
            Err(MapillaryError::Fatal(_))
        ));
    }

    #[test]
    fn client_refuses_empty_or_unsendable_tokens() {
        let settings = ClientSettings {
            api_url: Url::parse("http://127.0.0.1:1").unwrap(),
            page_size: 10,
            calls_per_minute: 60,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            download_timeout: Duration::from_secs(1),
            read_idle_timeout: Duration::from_secs(1),
            max_image_bytes: 1000,
        };
        assert!(matches!(
            MapillaryClient::new(settings.clone(), Secret::new(" ")),
            Err(MapillaryError::BadToken(_))
        ));
        let err = MapillaryClient::new(settings.clone(), Secret::new("MLY|1|a\nb")).unwrap_err();
        assert!(!err.to_string().contains("MLY|1|a"));
        let client = MapillaryClient::new(settings, Secret::new("MLY|1|abc")).unwrap();
        assert!(!format!("{client:?}").contains("MLY|1|abc"));
    }
}
