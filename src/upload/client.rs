//! IA-S3 and the item metadata API, one request at a time: `PUT` a file
//! (streamed from disk with a known length, never chunked), read an item's
//! file list, ask `check_limit`. Every failure says what it means for the
//! upload ([`IaError::decision`]): retry after a wait, pause with a message
//! for the operator, or fail.
//!
//! Large files: IA-S3 takes a single `PUT` of any size the item allows (the
//! `internetarchive` library sends each file in one `PUT`, multipart only on
//! request, and IA recommends items under 100 GB), so one streamed `PUT` per
//! tar, with `Content-Length` and `Content-MD5` (32 hex digits, as the
//! library sends it).
//!
//! The secret key travels in one header of one request and is never part of
//! an error: errors carry IA's answer, which never echoes it.

use crate::secret::Secret;
use futures_util::TryStreamExt;
use md5::{Digest, Md5};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::io::ReaderStream;

/// Bytes read from disk per chunk of a `PUT` body. With hyper's own
/// buffering, one upload holds a few of these: far under the 64 MiB budget.
const CHUNK: usize = 1 << 20;

/// Most of IA's answer kept in an error message.
const BODY_EXCERPT: usize = 600;

/// What a failure means for the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Transient: try again after this wait (`None`: the caller's backoff).
    Retry(Option<Duration>),
    /// Not transient: stop, `paused`, with this message for the operator.
    Pause(String),
}

/// A failed request to IA.
#[derive(Debug, thiserror::Error)]
pub enum IaError {
    /// `503 SlowDown`: too fast for IA right now.
    #[error("archive.org asks to slow down (503 SlowDown)")]
    SlowDown {
        /// IA's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// 401/403: the keys are wrong, or may not write this item.
    #[error(
        "archive.org refused the upload to {identifier} (HTTP {status}: {reason}): check \
         IA_ACCESS_KEY / IA_SECRET_KEY (or ia.ini) and that the account may write this item, \
         then resume the job"
    )]
    Refused {
        /// The item.
        identifier: String,
        /// 401 or 403.
        status: u16,
        /// IA's message.
        reason: String,
    },
    /// IA took the upload for spam: it stays refused until a person looks.
    #[error(
        "archive.org flagged the upload to {identifier} as potential spam ({reason}): write to \
         info@archive.org to have the account reviewed, then resume the job"
    )]
    Spam {
        /// The item.
        identifier: String,
        /// IA's message.
        reason: String,
    },
    /// Any other answer that is not success.
    #[error("archive.org answered HTTP {status} for {what}: {reason}")]
    Status {
        /// The request, without credentials.
        what: String,
        /// The status.
        status: u16,
        /// IA's message.
        reason: String,
    },
    /// No answer (connection refused, cut, timed out).
    #[error("cannot reach archive.org for {what}: {reason}")]
    Network {
        /// The request, without credentials.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The local file could not be read.
    #[error("cannot read {path}: {reason}")]
    Local {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

impl IaError {
    /// Retry or pause: 401/403 and spam pause (nothing is retried in a
    /// loop), a local file that cannot be read pauses; everything else is
    /// transient.
    pub fn decision(&self) -> Decision {
        match self {
            IaError::SlowDown { retry_after } => Decision::Retry(*retry_after),
            IaError::Refused { .. } | IaError::Spam { .. } | IaError::Local { .. } => {
                Decision::Pause(self.to_string())
            }
            IaError::Status { status, .. } if *status == 400 || *status == 404 => {
                // BadDigest (the file changed under us) or a vanished item:
                // worth one more try, read again from disk.
                Decision::Retry(None)
            }
            IaError::Status { .. } | IaError::Network { .. } => Decision::Retry(None),
        }
    }
}

/// A file as an item's metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Its name in the item.
    pub name: String,
    /// Its size, when listed.
    pub size: Option<u64>,
    /// Its MD5, lowercase hex, when listed.
    pub md5: Option<String>,
}

/// One `PUT`: where it goes and the headers beside the per-file ones.
pub struct Put<'a> {
    /// The item.
    pub identifier: &'a str,
    /// The file's name in the item.
    pub name: &'a str,
    /// The file on disk.
    pub path: &'a Path,
    /// Its size: the `Content-Length`.
    pub bytes: u64,
    /// Its MD5, lowercase hex: the `Content-MD5`.
    pub md5: &'a str,
    /// `LOW <access>:<secret>`.
    pub authorization: &'a Secret,
    /// The `x-archive-*` headers of the item.
    pub archive_headers: &'a [(String, String)],
}

/// IA-S3 at `ia.endpoint`, and the metadata API at `archive.ia_url`.
#[derive(Clone)]
pub struct IaClient {
    http: reqwest::Client,
    endpoint: url::Url,
    ia_url: url::Url,
    /// Body bytes handed to the connection by the `PUT`s under way (shared
    /// by clones): the progress inside a file.
    in_flight: Arc<AtomicU64>,
}

/// One `PUT`'s share of [`IaClient::in_flight_bytes`]: its body adds to it
/// chunk by chunk, and it leaves the gauge when the `PUT` ends (answered,
/// failed or dropped). `None` once ended: a body hyper still holds then
/// adds nothing more.
struct InFlight {
    total: Arc<AtomicU64>,
    mine: Arc<Mutex<Option<u64>>>,
}

impl InFlight {
    fn new(total: &Arc<AtomicU64>) -> InFlight {
        InFlight {
            total: total.clone(),
            mine: Arc::new(Mutex::new(Some(0))),
        }
    }

    /// Counts `bytes` more handed to the connection.
    fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let (total, mine) = (self.total.clone(), self.mine.clone());
        move |bytes| {
            let mut mine = mine.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sent) = mine.as_mut() {
                *sent += bytes;
                total.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sent) = mine.take() {
            self.total.fetch_sub(sent, Ordering::Relaxed);
        }
    }
}

impl IaClient {
    /// A client for these two base URLs (checked by the settings).
    pub fn new(endpoint: &str, ia_url: &str) -> Result<IaClient, IaError> {
        let bad = |what: &str, e: String| IaError::Network {
            what: what.into(),
            reason: e,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("mapillary-downloader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad("a client", e.to_string()))?;
        Ok(IaClient {
            http,
            endpoint: url::Url::parse(endpoint).map_err(|e| bad("ia.endpoint", e.to_string()))?,
            ia_url: url::Url::parse(ia_url).map_err(|e| bad("archive.ia_url", e.to_string()))?,
            in_flight: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Body bytes the `PUT`s under way have handed to the connection so
    /// far (0 between files).
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// `PUT /<identifier>/<name>`: the file streamed from disk with its
    /// length and MD5. `Ok` once IA answered 200.
    pub async fn put(&self, put: &Put<'_>) -> Result<(), IaError> {
        let what = format!("PUT {}/{}", put.identifier, put.name);
        let url = segments(&self.endpoint, &[put.identifier, put.name]);
        let file = tokio::fs::File::open(put.path)
            .await
            .map_err(|e| local(put.path, &e))?;
        let in_flight = InFlight::new(&self.in_flight);
        let count = in_flight.counter();
        let chunks = ReaderStream::with_capacity(file, CHUNK)
            .inspect_ok(move |chunk| count(chunk.len() as u64));
        let body = reqwest::Body::wrap_stream(chunks);
        let mut request = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, put.bytes)
            .header("content-md5", put.md5)
            .header(reqwest::header::AUTHORIZATION, put.authorization.expose())
            .body(body);
        for (name, value) in put.archive_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|e| network(&what, &e))?;
        check(response, &what, put.identifier).await.map(drop)
    }

    /// The files of an item, as `<ia_url>/metadata/<identifier>` lists them;
    /// empty for an item that does not exist (yet).
    pub async fn listed_files(&self, identifier: &str) -> Result<Vec<ListedFile>, IaError> {
        let what = format!("GET /metadata/{identifier}");
        let url = segments(&self.ia_url, &["metadata", identifier]);
        let body = self.get(url, &what, identifier).await?;
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| IaError::Status {
                what: what.clone(),
                status: 200,
                reason: format!("not JSON: {e}"),
            })?;
        Ok(parse_files(&value))
    }

    /// The body of a GET of `url` (a minute at the most) that [`check`]
    /// passes; `what` names the call in errors.
    async fn get(&self, url: url::Url, what: &str, identifier: &str) -> Result<String, IaError> {
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| network(what, &e))?;
        check(response, what, identifier).await
    }

    /// `check_limit`: whether IA wants no new upload into `identifier` now
    /// (`over_limit` not 0).
    pub async fn over_limit(&self, access: &str, identifier: &str) -> Result<bool, IaError> {
        let what = format!("check_limit for {identifier}");
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("check_limit", "1")
            .append_pair("accesskey", access)
            .append_pair("bucket", identifier);
        let body = self.get(url, &what, identifier).await?;
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(value["over_limit"].as_i64().is_some_and(|n| n != 0))
    }
}

/// `base` with each of `parts` pushed as one percent-encoded path segment.
fn segments(base: &url::Url, parts: &[&str]) -> url::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        for part in parts {
            path.push(part);
        }
    }
    url
}

/// The body of a success, or the error the answer means.
async fn check(
    response: reqwest::Response,
    what: &str,
    identifier: &str,
) -> Result<String, IaError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.map_err(|e| network(what, &e))?;
    if status.is_success() {
        return Ok(body);
    }
    let reason = excerpt(&body);
    let lower = body.to_ascii_lowercase();
    Err(match status.as_u16() {
        503 if lower.contains("spam") => IaError::Spam {
            identifier: identifier.into(),
            reason: spam_reason(&body).unwrap_or(reason),
        },
        503 if lower.contains("slowdown") || lower.contains("reduce your request rate") => {
            IaError::SlowDown { retry_after }
        }
        code @ (401 | 403) => IaError::Refused {
            identifier: identifier.into(),
            status: code,
            reason,
        },
        code => IaError::Status {
            what: what.into(),
            status: code,
            reason,
        },
    })
}

/// IA's answer, shortened and on one line: the S3 `<Message>` when there
/// is one.
fn excerpt(body: &str) -> String {
    let message = body
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map_or(body, |(message, _)| message);
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(BODY_EXCERPT).collect()
}

/// The sentence of IA's spam refusal that says so (its `<Resource>`).
fn spam_reason(body: &str) -> Option<String> {
    let (_, rest) = body.split_once("<Resource>")?;
    let (resource, _) = rest.split_once("</Resource>")?;
    resource
        .to_ascii_lowercase()
        .contains("spam")
        .then(|| excerpt(resource))
}

fn network(what: &str, error: &reqwest::Error) -> IaError {
    // reqwest names the URL: ours hold no secret (the key goes in a header).
    IaError::Network {
        what: what.into(),
        reason: error.to_string(),
    }
}

fn local(path: &Path, error: &std::io::Error) -> IaError {
    IaError::Local {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The files of a `/metadata/<identifier>` answer (`{}` for no item).
pub fn parse_files(value: &serde_json::Value) -> Vec<ListedFile> {
    let Some(files) = value["files"].as_array() else {
        return Vec::new();
    };
    files
        .iter()
        .filter_map(|file| {
            Some(ListedFile {
                name: file["name"].as_str()?.to_string(),
                size: match &file["size"] {
                    serde_json::Value::String(s) => s.parse().ok(),
                    other => other.as_u64(),
                },
                md5: file["md5"].as_str().map(str::to_ascii_lowercase),
            })
        })
        .collect()
}

/// MD5 (lowercase hex) and size of a file, read in chunks.
pub fn file_md5(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0; CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    let digest = hasher.finalize();
    Ok((digest.iter().map(|b| format!("{b:02x}")).collect(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_files_parse_sizes_given_as_strings() {
        let value = serde_json::json!({"files": [
            {"name": "a.tar", "size": "12", "md5": "ABC"},
            {"name": "b_meta.xml", "source": "metadata"},
        ]});
        let files = parse_files(&value);
        assert_eq!(files[0].size, Some(12));
        assert_eq!(files[0].md5.as_deref(), Some("abc"));
        assert_eq!(files[1].md5, None);
        assert!(parse_files(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn refusals_pause_and_throttling_retries() {
        let slow = IaError::SlowDown {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            slow.decision(),
            Decision::Retry(Some(Duration::from_secs(7)))
        );
        let spam = IaError::Spam {
            identifier: "x".into(),
            reason: "flagged".into(),
        };
        assert!(matches!(spam.decision(), Decision::Pause(m) if m.contains("info@archive.org")));
        let refused = IaError::Refused {
            identifier: "x".into(),
            status: 403,
            reason: "Access Denied".into(),
        };
        assert!(matches!(refused.decision(), Decision::Pause(m) if m.contains("IA_SECRET_KEY")));
        assert_eq!(
            excerpt("<Error><Code>SlowDown</Code><Message>Please\n reduce</Message></Error>"),
            "Please reduce"
        );
    }

    #[test]
    fn md5_of_a_file_is_lowercase_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(
            file_md5(&path).unwrap(),
            ("5d41402abc4b2a76b9719d911017c592".to_string(), 5)
        );
    }
}
