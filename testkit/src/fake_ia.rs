//! A fake Internet Archive: IA-S3 (`PUT /<identifier>/<file>`, `check_limit`)
//! and the metadata API (`GET /metadata/<identifier>`) on one port, behaving
//! as the real ones do (see `docs/ia-s3.md` for the sources):
//!
//! - `PUT` checks `authorization: LOW <access>:<secret>` (403 otherwise),
//!   needs a `Content-Length` (a chunked body gets 411), checks `Content-MD5`
//!   (400 `BadDigest`), needs `x-archive-auto-make-bucket: 1` to create an
//!   item (404 `NoSuchBucket`), stores the body on disk (temp dir) and every
//!   header; the first `PUT` of an item sets its metadata from the
//!   `x-archive-meta*` headers, decoded as IA decodes them;
//! - faults on demand: `503 SlowDown` (the next N `PUT`s, or a fraction, with
//!   or without `Retry-After`), `check_limit`'s `over_limit`, the spam
//!   refusal, a forbidden item (403), a connection dropped after N body bytes;
//! - `/metadata/<identifier>` lists a file only `listing_delay` after its
//!   `PUT` (IA's task queue), `{}` for an unknown item;
//! - a bandwidth cap over all connections (a simulated link: a token bucket
//!   that banks 20 ms of idle credit, as socket buffers do), and counters.
//!
//! Its base URL serves as both `ia.endpoint` and `archive.ia_url`.

mod decode;
mod handlers;
mod put;
mod state;

pub use decode::decode_meta_headers;
pub use state::{IaRequest, StoredFile};

use crate::fake::net::{ConnInfo, KillableListener};
use axum::Router;
use axum::routing::{get, put};
use state::Shared;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The access key the fake accepts by default.
pub const DEFAULT_ACCESS: &str = "fakeaccess0123";
/// The secret key the fake accepts by default.
pub const DEFAULT_SECRET: &str = "fakesecret-s3cr3t-0123456789";
/// What IA's spam refusal says, and what the `internetarchive` library
/// looks for (`item.py`: `b'appears to be spam' in response.content`).
pub const SPAM_MARKER: &str = "appears to be spam";

/// The body of IA's spam refusal (a `503` with the `SlowDown` code, so only
/// the text tells it from throttling), as reported in
/// bibanon/tubeup#135: a refusal that waiting does not lift.
pub fn spam_body(identifier: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>SlowDown</Code><Message>Please reduce your \
         request rate.</Message><Resource>Your upload of {identifier} from username fake@example.org \
         {SPAM_MARKER}. If you believe this is a mistake, contact info@archive.org and include this entire \
         message in your email.</Resource><RequestId>00000000-fake-4e32-b64a-ab8a85f647b6</RequestId></Error>"
    )
}

/// An MD5 as `/metadata` lists it and the `internetarchive` library sends
/// it in `Content-MD5`: lower-case hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    state::hex(&md5::Md5::digest(bytes))
}

/// An MD5 as standard S3 sends it in `Content-MD5`: base64 of the 16 bytes.
pub fn md5_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// How the fake starts; every field can change later through [`FakeIa`].
#[derive(Debug, Clone)]
pub struct FakeIaOptions {
    /// The one access key accepted.
    pub access: String,
    /// The one secret key accepted.
    pub secret: String,
    /// How long after its `PUT` a file appears in `/metadata` (IA's task queue).
    pub listing_delay: Duration,
    /// Bytes per second all `PUT` bodies together may arrive at; `None`: no cap.
    pub bandwidth: Option<u64>,
}

impl Default for FakeIaOptions {
    fn default() -> Self {
        FakeIaOptions {
            access: DEFAULT_ACCESS.into(),
            secret: DEFAULT_SECRET.into(),
            listing_delay: Duration::ZERO,
            bandwidth: None,
        }
    }
}

/// A running fake Internet Archive. Dropping it stops the server.
pub struct FakeIa {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeIa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIa {
    /// Binds `127.0.0.1:0` and serves.
    pub async fn start(options: FakeIaOptions) -> FakeIa {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake IA");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::new(options));
        let app = Router::new()
            .route("/", get(handlers::root))
            .route("/metadata/{identifier}", get(handlers::metadata))
            .route(
                "/{identifier}/{*file}",
                put(put::put_file).post(handlers::multipart),
            )
            .fallback(handlers::unknown)
            .with_state(shared.clone());
        let service = app.into_make_service_with_connect_info::<ConnInfo>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(KillableListener { inner: listener }, service).await;
        });
        FakeIa { shared, addr, task }
    }

    /// `http://127.0.0.1:<port>`: `ia.endpoint` and `archive.ia_url` both.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The access key accepted.
    pub fn access(&self) -> String {
        self.shared.lock().options.access.clone()
    }

    /// The secret key accepted.
    pub fn secret(&self) -> String {
        self.shared.lock().options.secret.clone()
    }

    /// The next `count` `PUT`s get `503 SlowDown`, with `Retry-After:
    /// <secs>` when given.
    pub fn slow_down_next(&self, count: u32, retry_after: Option<u64>) {
        let mut state = self.shared.lock();
        state.slow_down.next = count;
        state.slow_down.retry_after = retry_after;
    }

    /// Each `PUT` gets `503 SlowDown` with probability `fraction` (0 to 1),
    /// decided by a seeded generator (reproducible).
    pub fn slow_down_fraction(&self, fraction: f64, retry_after: Option<u64>) {
        let mut state = self.shared.lock();
        state.slow_down.fraction = fraction.clamp(0.0, 1.0);
        state.slow_down.retry_after = retry_after;
    }

    /// What `GET /?check_limit=1` answers in `over_limit` (0: go ahead).
    pub fn set_over_limit(&self, over_limit: u32) {
        self.shared.lock().over_limit = over_limit;
    }

    /// While on, every `PUT` gets IA's spam refusal ([`spam_body`], 503).
    pub fn refuse_as_spam(&self, on: bool) {
        self.shared.lock().spam = on;
    }

    /// `PUT`s into `identifier` get 403 (an item of another account).
    pub fn forbid_item(&self, identifier: &str) {
        self.shared.lock().forbidden.insert(identifier.to_string());
    }

    /// The next `PUT` whose body passes `bytes` has its connection reset
    /// (TCP RST) there, and stores nothing: a daemon killed mid-upload, or a
    /// network that drops.
    pub fn drop_connection_after(&self, bytes: u64) {
        self.shared.lock().drop_after = Some(bytes);
    }

    /// The next `PUT` stops reading its body once `bytes` have arrived
    /// (they are on the fake's disk) until [`FakeIa::release_held`]: a file
    /// in flight for as long as a test needs, e.g. to kill -9 the uploader.
    /// A held `PUT` whose client died sees it only once released.
    pub fn hold_after(&self, bytes: u64) {
        self.shared.lock().hold_after = Some(bytes);
    }

    /// Waits until a `PUT` is held by [`FakeIa::hold_after`]; its
    /// (identifier, file).
    pub async fn wait_held(&self) -> (String, String) {
        self.shared.wait_held().await
    }

    /// Lets the held `PUT` go on.
    pub fn release_held(&self) {
        self.shared.release();
    }

    /// Changes the listing delay for `PUT`s from now on.
    pub fn set_listing_delay(&self, delay: Duration) {
        self.shared.lock().options.listing_delay = delay;
    }

    /// Runs IA's task queue now: every stored file is listed in `/metadata`
    /// from this instant, whatever the listing delay said.
    pub fn run_tasks(&self) {
        let now = tokio::time::Instant::now();
        for item in self.shared.lock().items.values_mut() {
            for file in item.files.values_mut() {
                file.listed_from = file.listed_from.min(now);
            }
        }
    }

    /// Changes the bandwidth cap (bytes per second; `None`: no cap).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared.set_bandwidth(bytes_per_sec);
    }

    /// Puts a file into an item as if uploaded long ago (listed at once),
    /// creating the item (with `metadata`) when new.
    pub fn preload(&self, identifier: &str, file: &str, bytes: &[u8]) {
        self.shared.preload(identifier, file, bytes);
    }

    /// `PUT` requests received for `identifier/file`, whatever their answer.
    pub fn put_attempts(&self, identifier: &str, file: &str) -> u32 {
        let key = (identifier.to_string(), file.to_string());
        self.shared.lock().attempts.get(&key).copied().unwrap_or(0)
    }

    /// `PUT`s of `identifier/file` that were stored (answered 200).
    pub fn puts_stored(&self, identifier: &str, file: &str) -> u32 {
        let key = (identifier.to_string(), file.to_string());
        self.shared
            .lock()
            .stored_count
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<IaRequest> {
        self.shared.lock().requests.clone()
    }

    /// The file as stored (the last `PUT` that succeeded).
    pub fn stored(&self, identifier: &str, file: &str) -> Option<StoredFile> {
        let state = self.shared.lock();
        state.items.get(identifier)?.files.get(file).cloned()
    }

    /// The bytes of a stored file, read back from the fake's disk.
    pub fn file_bytes(&self, identifier: &str, file: &str) -> Option<Vec<u8>> {
        let stored = self.stored(identifier, file)?;
        Some(std::fs::read(&stored.path).expect("read a stored file"))
    }

    /// The identifiers of every item, sorted.
    pub fn items(&self) -> Vec<String> {
        self.shared.lock().items.keys().cloned().collect()
    }

    /// The item's metadata as IA holds it (keys with `_`, values decoded).
    pub fn item_metadata(&self, identifier: &str) -> Option<BTreeMap<String, Vec<String>>> {
        Some(self.shared.lock().items.get(identifier)?.metadata.clone())
    }

    /// Stops serving at once: open connections are reset, new ones refused.
    pub fn kill(&self) {
        self.task.abort();
        self.shared.kill_all();
    }
}
