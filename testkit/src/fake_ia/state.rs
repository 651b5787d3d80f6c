//! The fake IA's state: items, their files on disk, faults and counters.

use super::FakeIaOptions;
use crate::fake::net::ConnInfo;
use md5::{Digest, Md5};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A file an item holds.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Where its bytes are, in the fake's temp dir.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its MD5, lower-case hex (as `/metadata` lists it).
    pub md5: String,
    /// Every header of the `PUT` that stored it, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    /// When `/metadata` starts listing it.
    pub listed_from: Instant,
    /// From the body's first byte to its last, as received (a hold included):
    /// the throughput a bench reads.
    pub receive_time: std::time::Duration,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct IaRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path, percent-decoded segments joined.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// Every header, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The answer's status.
    pub status: u16,
}

/// An item: its metadata (set by the `PUT` that created it) and files.
#[derive(Debug, Default)]
pub(super) struct Item {
    pub metadata: BTreeMap<String, Vec<String>>,
    pub files: BTreeMap<String, StoredFile>,
}

/// `503 SlowDown` on demand.
#[derive(Debug, Default)]
pub(super) struct SlowDown {
    pub next: u32,
    pub fraction: f64,
    pub retry_after: Option<u64>,
}

pub(super) struct State {
    pub options: FakeIaOptions,
    pub items: BTreeMap<String, Item>,
    pub slow_down: SlowDown,
    pub over_limit: u32,
    pub spam: bool,
    pub forbidden: HashSet<String>,
    pub drop_after: Option<u64>,
    pub hold_after: Option<u64>,
    pub attempts: HashMap<(String, String), u32>,
    pub stored_count: HashMap<(String, String), u32>,
    pub requests: Vec<IaRequest>,
    pub rng: StdRng,
    pub connections: Vec<ConnInfo>,
    /// Names the next body file in the temp dir.
    pub next_upload: u64,
}

/// How much idle time the simulated link banks as credit (20 ms: at 4 MB/s
/// 80 KB, at 20 MB/s 400 KB, about what socket buffers hold in flight).
const LINK_BURST: std::time::Duration = std::time::Duration::from_millis(20);

/// A token bucket over every connection: the simulated link.
#[derive(Debug, Default)]
pub(super) struct Link {
    pub bytes_per_sec: Option<u64>,
    /// When the link is free again.
    pub free_at: Option<Instant>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    link: Mutex<Link>,
    /// The `PUT` held mid-body (identifier, file), if any.
    held: watch::Sender<Option<(String, String)>>,
    /// Lets the held `PUT` go on.
    release: Notify,
    pub(super) dir: tempfile::TempDir,
}

impl Shared {
    pub(super) fn new(options: FakeIaOptions) -> Shared {
        let link = Link {
            bytes_per_sec: options.bandwidth,
            free_at: None,
        };
        Shared {
            state: Mutex::new(State {
                options,
                items: BTreeMap::new(),
                slow_down: SlowDown::default(),
                over_limit: 0,
                spam: false,
                forbidden: HashSet::new(),
                drop_after: None,
                hold_after: None,
                attempts: HashMap::new(),
                stored_count: HashMap::new(),
                requests: Vec::new(),
                rng: StdRng::seed_from_u64(25),
                connections: Vec::new(),
                next_upload: 0,
            }),
            link: Mutex::new(link),
            held: watch::Sender::new(None),
            release: Notify::new(),
            dir: tempfile::tempdir().expect("a temp dir for the fake IA"),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.bytes_per_sec = bytes_per_sec;
        link.free_at = None;
    }

    /// Waits until `bytes` more may pass the link (at once without a cap).
    pub(super) async fn pass(&self, bytes: usize) {
        let until = {
            let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
            let Some(rate) = link.bytes_per_sec.filter(|r| *r > 0) else {
                return;
            };
            let now = Instant::now();
            // A link idle for a moment has banked up to `LINK_BURST` of
            // credit, as a real one's socket buffers keep the wire busy while
            // the receiver stops to write and hash a chunk (`tc tbf` calls it
            // the burst). Without it, every pause of the fake's own was lost
            // link time that the sender was blamed for.
            let earliest = now.checked_sub(LINK_BURST).unwrap_or(now);
            let start = link.free_at.map_or(earliest, |t| t.max(earliest));
            let cost = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
            link.free_at = Some(start + cost);
            start + cost
        };
        tokio::time::sleep_until(until).await;
    }

    /// A new path for a body being received.
    pub(super) fn upload_path(&self) -> PathBuf {
        let mut state = self.lock();
        state.next_upload += 1;
        self.dir
            .path()
            .join(format!("upload-{}", state.next_upload))
    }

    pub(super) fn preload(&self, identifier: &str, file: &str, bytes: &[u8]) {
        let path = self.upload_path();
        std::fs::write(&path, bytes).expect("write a preloaded file");
        let stored = StoredFile {
            path,
            size: bytes.len() as u64,
            md5: hex(&Md5::digest(bytes)),
            headers: Vec::new(),
            listed_from: Instant::now(),
            receive_time: std::time::Duration::ZERO,
        };
        let mut state = self.lock();
        let item = state.items.entry(identifier.to_string()).or_default();
        item.metadata
            .entry("identifier".into())
            .or_insert_with(|| vec![identifier.to_string()]);
        item.files.insert(file.to_string(), stored);
    }

    /// Whether a pending "drop the connection" fault fires now (once).
    pub(super) fn take_drop(&self) -> bool {
        self.lock().drop_after.take().is_some()
    }

    /// Holds the calling `PUT` until [`Shared::release`]; once per
    /// `hold_after` setting.
    pub(super) async fn hold(&self, identifier: &str, file: &str) {
        if self.lock().hold_after.take().is_none() {
            return;
        }
        self.held
            .send_replace(Some((identifier.to_string(), file.to_string())));
        self.release.notified().await;
        self.held.send_replace(None);
    }

    /// Waits until a `PUT` is held; its (identifier, file).
    pub(super) async fn wait_held(&self) -> (String, String) {
        let mut held = self.held.subscribe();
        let value = held
            .wait_for(|h| h.is_some())
            .await
            .expect("the fake IA is gone");
        value.clone().expect("a held PUT")
    }

    /// Lets a held `PUT` go on (or the next one, if none is held yet).
    pub(super) fn release(&self) {
        self.release.notify_one();
    }

    pub(super) fn kill_all(&self) {
        for connection in self.lock().connections.drain(..) {
            connection.kill();
        }
    }
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) type SharedState = Arc<Shared>;
