//! A fake Mapillary Graph API and CDN for tests, following
//! `shared/mapillary-api.md`: paging with cursors and `next`, `fields`, the
//! documented filters (bbox, capture dates, `is_pano`, `sequence_ids`),
//! organizations, sequences, `?ids=` batches, expiring signed image URLs,
//! Graph error bodies, and scriptable faults (with the search's "Query
//! Timeout" and the one-page cap of bbox searches). It records every request
//! so tests can assert exact logs (e.g. "the CDN never saw an Authorization
//! header").
//!
//! Modules: `data` generates images, `faults` names the faults, `gate` is
//! the layer of faults, latency and the log, `listing` serves `GET /images`
//! and `GET /image_ids` (sources, filters, paging), `handlers` the other API
//! routes and the CDN, `selection` sets up organizations, sequences and how
//! filters are treated.
//!
//! The API and the CDN listen on two ports of 127.0.0.1: two origins.
//! `src/bin/fake_mapillary.rs` runs it standalone.
//!
//! Images are [`FakeImage`]s and qualities the fake's own [`Quality`]: the kit
//! does not depend on the daemon; `FakeImage::to()` and `Quality::to()` give
//! the daemon's types.

mod data;
mod faults;
mod gate;
mod handlers;
mod listing;
pub(crate) mod net;
mod selection;
#[cfg(test)]
mod tests;
mod types;

pub use data::{FIRST_ID, REGION, SERVED_DESCRIPTION, WRAPPED_ALTITUDE};
pub use faults::{Fault, Faults};
pub use gate::mentions_token;
pub use selection::FilterMode;
pub use types::{FakeImage, GeoPoint, Quality};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use data::{Block, JpegBases};
use gate::{api_gate, cdn_gate};
use handlers::{api_ids, api_one, api_unknown_path, cdn_image};
use listing::{api_image_ids, api_images};
use net::{ConnInfo, KillableListener};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

pub const DEFAULT_TOKEN: &str = "MLY|4242424242|fake0123456789abcdef0123456789ab";
/// Graph API page size maximum and default.
pub const MAX_LIMIT: usize = 2000;
/// How far an overlapping page reaches back into the previous one.
pub const OVERLAP: usize = 3;
const HTML_5XX: &str = "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body><h1>Sorry, something went wrong.</h1></body></html>";
const HTML_200: &str = "<!DOCTYPE html><html><body><h1>Temporarily unavailable</h1><p>Please try again later.</p></body></html>";

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The one valid token (changeable at runtime with `set_token`).
    pub token: String,
    /// Lifetime of issued image URLs; negative issues already-expired URLs.
    pub url_ttl_secs: i64,
    pub api_latency: Duration,
    pub cdn_latency: Duration,
    /// Uniform extra CDN latency in `[0, jitter]`.
    pub cdn_latency_jitter: Duration,
    /// Put `access_token=<token>` into every `next` (the [I] case of the API notes).
    pub token_in_next: bool,
    pub faults: Faults,
    /// Seeds the fault RNG.
    pub seed: u64,
    /// When false the CDN answers HEAD with 405 (size probes must fall back to Range).
    pub head_allowed: bool,
    /// Requests kept in the log (the oldest are dropped); counters keep counting.
    pub log_capacity: usize,
    /// 0 = any free port.
    pub api_port: u16,
    pub cdn_port: u16,
    /// Whether `/images` applies its filters (bbox, dates, `is_pano`,
    /// `sequence_ids`) or silently ignores them.
    pub filters: FilterMode,
    /// A `/images` request with a `bbox` gets its first page and no `next`.
    pub cap_bbox_searches: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            token: DEFAULT_TOKEN.to_string(),
            url_ttl_secs: 3600,
            api_latency: Duration::ZERO,
            cdn_latency: Duration::ZERO,
            cdn_latency_jitter: Duration::ZERO,
            token_in_next: false,
            faults: Faults::default(),
            seed: 42,
            head_allowed: true,
            log_capacity: 100_000,
            api_port: 0,
            cdn_port: 0,
            filters: FilterMode::Honour,
            cap_bbox_searches: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Api,
    Cdn,
}

/// One served request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The `Authorization` header as received, if any.
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// Status served; 0 for a reset connection.
    pub status: u16,
    /// The image a CDN request asked for.
    pub image_id: Option<String>,
    /// The injected fault, if any.
    pub fault: Option<&'static str>,
    /// When the request arrived, before any latency or fault.
    pub started: Instant,
    /// When the answer was ready (headers; a body may still stream).
    pub at: Instant,
}

/// A request as it arrived, recorded before the fake does anything with it.
#[derive(Debug, Clone)]
pub struct StartRecord {
    pub route: Route,
    pub method: String,
    pub path: String,
    /// The image a CDN request asks for.
    pub image_id: Option<String>,
    pub at: Instant,
}

/// Faults aimed at one image's CDN requests: a script consumed in order,
/// then `always` for every later request (if set).
#[derive(Debug, Clone, Default)]
struct ImageFaults {
    script: VecDeque<Fault>,
    always: Option<Fault>,
}

/// The user-visible list of a user's images: generated blocks and hand-made
/// images, in the order they were added.
#[derive(Debug, Clone)]
enum Entry {
    Block(Block),
    Single(Box<FakeImage>),
}

#[derive(Debug, Clone)]
struct User {
    name: String,
    user_id: String,
    entries: Vec<Entry>,
    len: usize,
}

impl User {
    fn get(&self, mut pos: usize) -> Option<FakeImage> {
        for entry in &self.entries {
            match entry {
                Entry::Block(b) => {
                    if pos < b.count as usize {
                        return Some(data::generate(b, pos as u64, &self.name, &self.user_id));
                    }
                    pos -= b.count as usize;
                }
                Entry::Single(m) => {
                    if pos == 0 {
                        return Some((**m).clone());
                    }
                    pos -= 1;
                }
            }
        }
        None
    }
}

struct State_ {
    token: String,
    url_ttl_secs: i64,
    token_in_next: bool,
    head_allowed: bool,
    cdn_latency: Duration,
    cdn_latency_jitter: Duration,
    api_latency: Duration,
    users: Vec<User>,
    by_name: HashMap<String, usize>,
    /// Hand-made images by id (generated ones are found by id range).
    singles: HashMap<String, FakeImage>,
    /// Sequence id -> (capture order, image id) of every image in it, built
    /// on the first `/image_ids` after a change (every change of users goes
    /// through `user_mut`, which drops it): one pass over all images, not
    /// one per call.
    sequence_index: Option<HashMap<String, Vec<(i64, String)>>>,
    /// Bodies served instead of the generated ones, by image id (any quality).
    bodies: HashMap<String, Vec<u8>>,
    next_id: u64,
    faults: Faults,
    rng: StdRng,
    api_script: VecDeque<Fault>,
    cdn_script: VecDeque<Fault>,
    log: VecDeque<RequestRecord>,
    log_capacity: usize,
    api_times: Vec<Instant>,
    cdn_total: usize,
    cdn_full: HashMap<String, usize>,
    token_on_cdn: bool,
    /// Images deleted on Mapillary: gone from listings, `?ids=` answers #803
    /// for any call naming one, `GET /{id}` code 100/33, the CDN 404.
    deleted: std::collections::HashSet<String>,
    /// The last page carries a `next` to an empty page whose `next` is itself.
    looping_next: bool,
    /// A listing opens with this many empty pages, each with a `next` to
    /// the following one (an API that filters after paging does this).
    empty_pages_first: u32,
    /// Every `GET /?ids=` answers 400 code 100 (no subcode): a refusal that
    /// is neither a rate limit nor a missing id, so retrying cannot help.
    refuse_ids_calls: bool,
    /// Image URLs handed out by `?ids=` answers (URL refreshes answered).
    urls_in_ids_answers: usize,
    /// Ids whose object in a `?ids=` answer carries a `captured_at` of the
    /// wrong type: an answer that has the image but cannot be read.
    unreadable_in_ids: std::collections::HashSet<String>,
    /// Ids whose item in `/images` pages carries a `captured_at` of the
    /// wrong type: a listing item the client must skip.
    unreadable_in_listings: std::collections::HashSet<String>,
    /// Images deleted the moment a listing page has shown them: they are
    /// discovered, then gone when their download or URL refresh comes.
    delete_when_listed: std::collections::HashSet<String>,
    /// Faults aimed at single images' CDN requests.
    image_faults: HashMap<String, ImageFaults>,
    /// Every request as it arrived (bounded like `log`).
    started: VecDeque<StartRecord>,
    filters: FilterMode,
    cap_bbox: bool,
    /// Organization id -> member usernames, in the order they joined.
    orgs: HashMap<String, Vec<String>>,
    /// API requests by path, whatever their outcome.
    api_paths: HashMap<String, usize>,
    /// The `limit` of every `/images` request, in arrival order.
    images_limits: Vec<usize>,
    /// Half-way stalls chosen by image id (see [`HalfwayStalls`]).
    halfway: Option<HalfwayStalls>,
    /// CDN requests per image id, whatever their outcome (`clear_log` resets).
    cdn_requests_by_image: HashMap<String, usize>,
}

/// A share of the images whose first CDN requests stall half-way through
/// the body: the choice hangs on the image id alone (a hash), so a run is
/// the same whatever the concurrency or order of requests.
#[derive(Debug, Clone, Copy)]
struct HalfwayStalls {
    /// The chosen share of images, 0.0..=1.0.
    fraction: f64,
    /// How many of each chosen image's requests stall (the first ones).
    requests: usize,
}

impl HalfwayStalls {
    fn chooses(&self, id: &str) -> bool {
        let unit = (data::mix(data::hash_str(id) ^ 0x57a11) >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.fraction
    }
}

struct Shared {
    state: Mutex<State_>,
    bases: JpegBases,
    api_url: Url,
    cdn_url: Url,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CDN body of an image: a set one, else the generated one.
    fn body(&self, id: &str, quality: Quality) -> Vec<u8> {
        if let Some(body) = self.lock().bodies.get(id) {
            return body.clone();
        }
        self.bases.body(id, quality)
    }

    /// An image that exists (and is not deleted).
    fn find(&self, id: &str) -> Option<FakeImage> {
        let s = self.lock();
        if s.deleted.contains(id) {
            return None;
        }
        if let Some(m) = s.singles.get(id) {
            return Some(m.clone());
        }
        let n: u64 = id.parse().ok()?;
        if id.starts_with('0') {
            return None;
        }
        for user in &s.users {
            for entry in &user.entries {
                if let Entry::Block(b) = entry
                    && n >= b.id_base
                    && n < b.id_base + b.count
                {
                    return Some(data::generate(b, n - b.id_base, &user.name, &user.user_id));
                }
            }
        }
        None
    }

    fn signature(id: &str, q: Quality, oe: i64) -> String {
        format!(
            "{:016x}",
            data::mix(data::hash_str(id) ^ data::hash_str(q.as_str()) ^ oe as u64)
        )
    }

    fn thumb_url(&self, id: &str, q: Quality, oe: i64) -> String {
        let mut url = self.cdn_url.clone();
        url.path_segments_mut()
            .map(|mut p| {
                p.clear()
                    .push("img")
                    .push(id)
                    .push(&format!("{}.jpg", q.as_str()));
            })
            .ok();
        url.query_pairs_mut()
            .append_pair("stp", "dst-jpg_s1024x768")
            .append_pair("_nc_cat", "1")
            .append_pair("oe", &format!("{oe:X}"))
            .append_pair("_nc_sig", &Shared::signature(id, q, oe));
        url.into()
    }

    /// The object the API serves for `meta`, restricted to `fields` (`id` always).
    fn render(&self, meta: &FakeImage, fields: &[String]) -> Value {
        let ttl = self.lock().url_ttl_secs;
        let oe = now_secs() + ttl;
        let mut full = match serde_json::to_value(meta.without_urls()) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for q in Quality::ALL {
            full.insert(
                q.url_field().into(),
                Value::String(self.thumb_url(&meta.id, q, oe)),
            );
        }
        let mut out = Map::new();
        out.insert("id".into(), Value::String(meta.id.clone()));
        for f in fields {
            if let Some(v) = full.get(f) {
                out.insert(f.clone(), v.clone());
            }
        }
        Value::Object(out)
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running fake. Dropping it stops both servers.
pub struct FakeMapillary {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeMapillary {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeMapillary {
    pub async fn start(cfg: FakeConfig) -> FakeMapillary {
        let api_listener = TcpListener::bind(("127.0.0.1", cfg.api_port))
            .await
            .expect("bind the fake API");
        let cdn_listener = TcpListener::bind(("127.0.0.1", cfg.cdn_port))
            .await
            .expect("bind the fake CDN");
        let api_addr = api_listener.local_addr().expect("fake API address");
        let cdn_addr = cdn_listener.local_addr().expect("fake CDN address");
        let api_url = Url::parse(&format!("http://{api_addr}/")).expect("API URL");
        let cdn_url = Url::parse(&format!("http://{cdn_addr}/")).expect("CDN URL");
        let shared = Arc::new(Shared {
            state: Mutex::new(State_ {
                token: cfg.token.clone(),
                url_ttl_secs: cfg.url_ttl_secs,
                token_in_next: cfg.token_in_next,
                head_allowed: cfg.head_allowed,
                cdn_latency: cfg.cdn_latency,
                cdn_latency_jitter: cfg.cdn_latency_jitter,
                api_latency: cfg.api_latency,
                users: Vec::new(),
                by_name: HashMap::new(),
                singles: HashMap::new(),
                sequence_index: None,
                bodies: HashMap::new(),
                next_id: FIRST_ID,
                faults: cfg.faults,
                rng: StdRng::seed_from_u64(cfg.seed),
                api_script: VecDeque::new(),
                cdn_script: VecDeque::new(),
                log: VecDeque::new(),
                log_capacity: cfg.log_capacity,
                api_times: Vec::new(),
                cdn_total: 0,
                cdn_full: HashMap::new(),
                token_on_cdn: false,
                deleted: Default::default(),
                looping_next: false,
                empty_pages_first: 0,
                refuse_ids_calls: false,
                urls_in_ids_answers: 0,
                unreadable_in_ids: Default::default(),
                unreadable_in_listings: Default::default(),
                delete_when_listed: Default::default(),
                image_faults: HashMap::new(),
                started: VecDeque::new(),
                filters: cfg.filters,
                cap_bbox: cfg.cap_bbox_searches,
                orgs: HashMap::new(),
                api_paths: HashMap::new(),
                images_limits: Vec::new(),
                halfway: None,
                cdn_requests_by_image: HashMap::new(),
            }),
            bases: JpegBases::new(),
            api_url,
            cdn_url,
        });
        let api = Router::new()
            .route("/", get(api_ids))
            .route("/images", get(api_images))
            .route("/image_ids", get(api_image_ids))
            .route("/{id}", get(api_one))
            .fallback(api_unknown_path)
            .layer(middleware::from_fn_with_state(shared.clone(), api_gate))
            // After the gate's layer: never faulted, never logged or counted.
            .route("/__fake/stats", get(fake_stats))
            .with_state(shared.clone());
        let cdn = Router::new()
            .route("/img/{id}/{file}", get(cdn_image))
            .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
            .layer(middleware::from_fn_with_state(shared.clone(), cdn_gate))
            .with_state(shared.clone());
        let mut tasks = Vec::new();
        for (listener, app) in [(api_listener, api), (cdn_listener, cdn)] {
            let service = app.into_make_service_with_connect_info::<ConnInfo>();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(KillableListener { inner: listener }, service).await;
            }));
        }
        FakeMapillary { shared, tasks }
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:41234/`.
    pub fn api_url(&self) -> Url {
        self.shared.api_url.clone()
    }

    /// Base URL of the CDN: another port, so another origin.
    pub fn cdn_url(&self) -> Url {
        self.shared.cdn_url.clone()
    }

    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// Changes the one valid token (e.g. to simulate revocation).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_string();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    pub fn set_url_ttl_secs(&self, ttl: i64) {
        self.shared.lock().url_ttl_secs = ttl;
    }

    pub fn set_token_in_next(&self, on: bool) {
        self.shared.lock().token_in_next = on;
    }

    pub fn set_head_allowed(&self, on: bool) {
        self.shared.lock().head_allowed = on;
    }

    pub fn set_cdn_latency(&self, latency: Duration, jitter: Duration) {
        let mut s = self.shared.lock();
        s.cdn_latency = latency;
        s.cdn_latency_jitter = jitter;
    }

    pub fn set_api_latency(&self, latency: Duration) {
        self.shared.lock().api_latency = latency;
    }

    /// Deletes images "on Mapillary", as their contributor would mid-run:
    /// listings stop showing them, any `?ids=` call naming one fails whole
    /// with #803, `GET /{id}` answers code 100 (subcode 33) and the CDN 404.
    pub fn delete_images<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        let mut s = self.shared.lock();
        s.deleted.extend(ids.into_iter().map(Into::into));
    }

    /// Deletes these images as soon as a listing page has shown them, so a
    /// job discovers them and then finds them gone.
    pub fn delete_when_listed<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        let mut s = self.shared.lock();
        s.delete_when_listed.extend(ids.into_iter().map(Into::into));
    }

    /// Brings deleted images back (Mapillary hides an image while it is
    /// reviewed, say, then shows it again): they answer as before.
    pub fn restore_images<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        let mut s = self.shared.lock();
        for id in ids {
            let id = id.into();
            s.deleted.remove(&id);
            s.delete_when_listed.remove(&id);
        }
    }

    /// Ids deleted with [`FakeMapillary::delete_images`] (or once listed).
    pub fn deleted_ids(&self) -> std::collections::HashSet<String> {
        self.shared.lock().deleted.clone()
    }

    /// Makes every `GET /?ids=` call answer 400 code 100 "Invalid parameter"
    /// (the whole batch, as the Graph API fails a call it cannot parse).
    /// Image URLs the fake handed out in `?ids=` answers: the URL
    /// refreshes it answered.
    pub fn urls_refreshed(&self) -> usize {
        self.shared.lock().urls_in_ids_answers
    }

    pub fn set_refuse_ids_calls(&self, on: bool) {
        self.shared.lock().refuse_ids_calls = on;
    }

    /// Makes the `?ids=` answer's object for each of `ids` unreadable (its
    /// `captured_at` an object), or readable again with an empty list.
    pub fn set_unreadable_in_ids<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        self.shared.lock().unreadable_in_ids = ids.into_iter().map(Into::into).collect();
    }

    /// Makes the `/images` item of each of `ids` unreadable (its
    /// `captured_at` an object), or readable again with an empty list.
    pub fn set_unreadable_in_listings<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        self.shared.lock().unreadable_in_listings = ids.into_iter().map(Into::into).collect();
    }

    /// Makes every user's last page carry a `next` to an empty page whose
    /// own `next` points back at itself (a Graph API habit).
    pub fn set_looping_next(&self, on: bool) {
        self.shared.lock().looping_next = on;
    }

    /// Makes every listing open with `pages` empty pages, each with a
    /// distinct `next` to the following one; `u32::MAX` never gets to the data.
    pub fn set_empty_pages_first(&self, pages: u32) {
        self.shared.lock().empty_pages_first = pages;
    }

    /// Queues answers for the next CDN requests of one image, in order.
    /// Requests of other images are not affected, whatever the concurrency.
    pub fn script_image(&self, id: &str, faults: Vec<Fault>) {
        let mut s = self.shared.lock();
        s.image_faults
            .entry(id.to_string())
            .or_default()
            .script
            .extend(faults);
    }

    /// Answers every CDN request of one image with `fault` (after any
    /// scripted ones); `None` lifts it.
    pub fn fail_image_always(&self, id: &str, fault: Option<Fault>) {
        let mut s = self.shared.lock();
        s.image_faults.entry(id.to_string()).or_default().always = fault;
    }

    /// Makes the first `requests` CDN requests of a `fraction` of the images
    /// stall half-way: the headers (with the full Content-Length) and half
    /// the body, then silence with the connection open. Which images is
    /// fixed by their ids ([`FakeMapillary::halfway_stalled`] lists them);
    /// a fraction of 0 lifts it. Faults aimed at an image come first.
    pub fn stall_halfway(&self, fraction: f64, requests: usize) {
        self.shared.lock().halfway = (fraction > 0.0 && requests > 0).then_some(HalfwayStalls {
            fraction: fraction.clamp(0.0, 1.0),
            requests,
        });
    }

    /// Which of `ids` [`FakeMapillary::stall_halfway`] makes stall.
    pub fn halfway_stalled<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let Some(halfway) = self.shared.lock().halfway else {
            return Vec::new();
        };
        ids.into_iter()
            .filter(|id| halfway.chooses(id))
            .map(str::to_string)
            .collect()
    }

    /// CDN requests per image id since the start (or `clear_log`), whatever
    /// became of them: a download made twice shows as 2.
    pub fn cdn_requests_by_image(&self) -> HashMap<String, usize> {
        self.shared.lock().cdn_requests_by_image.clone()
    }

    /// Every request as it arrived, before latency or faults (oldest first).
    pub fn started_requests(&self) -> Vec<StartRecord> {
        self.shared.lock().started.iter().cloned().collect()
    }

    /// Images whose CDN request arrived before `instant`, whatever became of
    /// it: the downloads a graceful stop at `instant` must let finish.
    pub fn cdn_images_started_before(&self, instant: Instant) -> std::collections::HashSet<String> {
        self.shared
            .lock()
            .started
            .iter()
            .filter(|r| r.route == Route::Cdn && r.at < instant)
            .filter_map(|r| r.image_id.clone())
            .collect()
    }

    /// Complete, successful downloads of every image, by id.
    pub fn cdn_hits_by_image(&self) -> HashMap<String, usize> {
        self.shared.lock().cdn_full.clone()
    }

    /// Queues answers for the next requests of `route`, in order.
    pub fn script(&self, route: Route, faults: Vec<Fault>) {
        let mut s = self.shared.lock();
        match route {
            Route::Api => s.api_script.extend(faults),
            Route::Cdn => s.cdn_script.extend(faults),
        }
    }

    /// Adds `count` generated images to `username` (created if new). Ids are
    /// unique across users; the same (count, seed) always gives the same images.
    pub fn add_user(&self, username: &str, count: u64, seed: u64) {
        let mut s = self.shared.lock();
        let id_base = s.next_id;
        s.next_id += count + 1000;
        let user = user_mut(&mut s, username);
        user.entries.push(Entry::Block(Block {
            id_base,
            count,
            seed,
            sequence: None,
        }));
        user.len += count as usize;
    }

    /// Adds a hand-made image (URL fields are ignored: the fake issues its own).
    /// Without a `creator` it gets `{username, id}` of `username`; an explicit
    /// `"creator": null` in `extra` leaves it without one (served absent).
    pub fn add_image(&self, username: &str, meta: FakeImage) {
        let mut s = self.shared.lock();
        let mut meta = meta.without_urls();
        let user = user_mut(&mut s, username);
        match meta.extra.get("creator") {
            None => {
                let creator = json!({"username": user.name, "id": user.user_id});
                meta.extra.insert("creator".into(), creator);
            }
            Some(Value::Null) => {
                meta.extra.remove("creator");
            }
            Some(_) => {}
        }
        user.entries.push(Entry::Single(Box::new(meta.clone())));
        user.len += 1;
        s.singles.insert(meta.id.clone(), meta);
    }

    /// The truth for assertions: every image of the user, in listing order, without URLs.
    pub fn images(&self, username: &str) -> Vec<FakeImage> {
        let s = self.shared.lock();
        let Some(&index) = s.by_name.get(username) else {
            return Vec::new();
        };
        let user = s.users[index].clone();
        drop(s);
        (0..user.len).filter_map(|p| user.get(p)).collect()
    }

    pub fn image(&self, id: &str) -> Option<FakeImage> {
        self.shared.find(id)
    }

    /// A fresh signed CDN URL for an image, valid for the configured TTL.
    pub fn thumb_url(&self, id: &str, quality: Quality) -> String {
        let ttl = self.shared.lock().url_ttl_secs;
        self.shared.thumb_url(id, quality, now_secs() + ttl)
    }

    /// A signed CDN URL with a chosen `oe` expiry (Unix seconds).
    pub fn thumb_url_expiring_at(&self, id: &str, quality: Quality, oe: i64) -> String {
        self.shared.thumb_url(id, quality, oe)
    }

    /// The exact bytes the CDN serves for an image.
    pub fn expected_body(&self, id: &str, quality: Quality) -> Vec<u8> {
        self.shared.body(id, quality)
    }

    /// Serves `body` for image `id` at every quality instead of the
    /// generated JPEG (say, one wider than WebP allows).
    pub fn set_body(&self, id: &str, body: Vec<u8>) {
        self.shared.lock().bodies.insert(id.to_string(), body);
    }

    /// The COM payload that marks a served body: `mly-fake:<id>:<quality>`.
    pub fn jpeg_marker(&self, id: &str, quality: Quality) -> Vec<u8> {
        data::marker(id, quality)
    }

    /// The retained request log (oldest first).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.iter().cloned().collect()
    }

    pub fn clear_log(&self) {
        let mut s = self.shared.lock();
        s.log.clear();
        s.started.clear();
        s.api_times.clear();
        s.cdn_total = 0;
        s.cdn_full.clear();
        s.token_on_cdn = false;
        s.api_paths.clear();
        s.images_limits.clear();
        s.cdn_requests_by_image.clear();
    }

    /// Every API request received, whatever its outcome.
    pub fn api_calls(&self) -> usize {
        self.shared.lock().api_times.len()
    }

    pub fn cdn_requests(&self) -> usize {
        self.shared.lock().cdn_total
    }

    /// Complete, successful downloads of an image (any quality).
    pub fn cdn_hits(&self, id: &str) -> usize {
        self.shared.lock().cdn_full.get(id).copied().unwrap_or(0)
    }

    pub fn cdn_hits_total(&self) -> usize {
        self.shared.lock().cdn_full.values().sum()
    }

    /// Whether any CDN request carried an Authorization header, an
    /// `access_token` parameter or the token text anywhere.
    pub fn saw_token_on_cdn(&self) -> bool {
        self.shared.lock().token_on_cdn
    }

    /// The most API requests received within any `window`-long span.
    pub fn max_api_calls_per_window(&self, window: Duration) -> usize {
        let s = self.shared.lock();
        let times = &s.api_times;
        let (mut best, mut lo) = (0, 0);
        for hi in 0..times.len() {
            while times[hi].duration_since(times[lo]) >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }
}

/// `GET /__fake/stats` (the fake's own, for scripts driving the standalone
/// binary): API calls so far and complete downloads per image.
async fn fake_stats(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.lock();
    Json(json!({
        "api_calls": s.api_times.len(),
        "cdn_requests": s.cdn_total,
        "cdn_hits": s.cdn_full,
    }))
    .into_response()
}

fn user_mut<'a>(s: &'a mut State_, username: &str) -> &'a mut User {
    s.sequence_index = None;
    let index = match s.by_name.get(username) {
        Some(&i) => i,
        None => {
            let i = s.users.len();
            s.users.push(User {
                name: username.to_string(),
                user_id: (100_000_000_000_000 + data::hash_str(username) % 900_000_000_000_000)
                    .to_string(),
                entries: Vec::new(),
                len: 0,
            });
            s.by_name.insert(username.to_string(), i);
            i
        }
    };
    &mut s.users[index]
}
