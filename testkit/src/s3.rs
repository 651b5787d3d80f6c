//! An S3-compatible server for tests: moto's (`moto_server`, from PyPI,
//! installed into `target/venv` by `bash scripts/test`), a separate process
//! speaking the S3 HTTP protocol, with one bucket and data in memory.
//!
//! Why moto: Debian has no S3 server package; moto installs offline-friendly
//! wheels in seconds, honours `If-None-Match`, multipart uploads and user
//! metadata, and needs no disk. It checks that requests are signed but not
//! the signature, so the kit reads objects back with plain HTTP and a
//! placeholder `Authorization`: an independent reader, not the daemon's
//! client calling itself. The daemon is pointed at a proxy that does check
//! (`crate::sigv4`): every signature, and every signed payload's hash.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key and secret the daemon is given (moto accepts any).
pub const ACCESS_KEY: &str = "mld-test-access-key";
pub const SECRET_KEY: &str = "mld-test-secret-7f3a9c";

/// Signed-looking enough for moto, which checks presence, not validity.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=mld-test-access-key/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// A running moto server with one bucket; killed on drop.
pub struct S3Server {
    child: Child,
    /// moto itself: the kit's own reads and writes go here.
    pub endpoint: String,
    /// The daemon's endpoint: a proxy that checks every request's SigV4
    /// signature and payload hash (see [`crate::sigv4`]).
    pub checked: crate::sigv4::SigV4Proxy,
    pub bucket: String,
    http: reqwest::Client,
}

/// `moto_server` from the venv `bash scripts/test` makes, or `MLD_MOTO_SERVER`.
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MLD_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/moto_server");
    assert!(
        path.is_file(),
        "no S3 server at {}: run `bash scripts/test` (it installs moto into target/venv), or \
         `python3 -m venv target/venv && target/venv/bin/pip install 'moto[s3]==5.2.5' flask flask-cors`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl S3Server {
    /// Starts moto on a free port and creates `bucket`.
    pub async fn start(bucket: &str) -> S3Server {
        let binary = moto_binary();
        let http = reqwest::Client::new();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let endpoint = format!("http://127.0.0.1:{port}");
            let mut server = S3Server {
                child,
                checked: crate::sigv4::SigV4Proxy::start(&endpoint).await,
                endpoint,
                bucket: bucket.to_string(),
                http: http.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // lost the port to someone else: try another
                }
                let created = http
                    .put(format!("{}/{bucket}", server.endpoint))
                    .header("Authorization", AUTHORIZATION)
                    .send()
                    .await;
                if created.is_ok_and(|r| r.status().is_success()) {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("moto_server did not come up in three tries");
    }

    /// The daemon's variables for this server: `storage.archive_url` and the
    /// standard `AWS_*` ones.
    pub fn daemon_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            (
                "MLD__STORAGE__ARCHIVE_URL",
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("AWS_ENDPOINT_URL", self.checked.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            // object_store's per-request timeout (the daemon's default is
            // 120 s): a request moto or the test proxy leaves unanswered
            // under load is retried within a test's patience.
            ("AWS_TIMEOUT", "20s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.bucket)
    }

    /// One signed-looking request for `key`; a 404 is `None`, any other
    /// failure panics naming the request.
    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        body: Option<Vec<u8>>,
    ) -> Option<reqwest::Response> {
        let mut request = self
            .http
            .request(method.clone(), self.url(key))
            .header("Authorization", AUTHORIZATION);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/octet-stream")
                .body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {key}: {e}"));
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "{method} {key}: {}",
            response.status()
        );
        Some(response)
    }

    /// Every key under `prefix`, sorted (ListObjectsV2, all pages).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.listing(prefix)
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Every key under `prefix` with its `LastModified` (second resolution
    /// on moto), sorted by key: an object put again shows a later time.
    pub async fn listing(&self, prefix: &str) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_string()),
                ("prefix", prefix.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let url =
                url::Url::parse_with_params(&format!("{}/{}", self.endpoint, self.bucket), &query)
                    .expect("list URL");
            let body = self
                .http
                .get(url)
                .header("Authorization", AUTHORIZATION)
                .send()
                .await
                .expect("list")
                .text()
                .await
                .expect("list body");
            for contents in elements(&body, "Contents") {
                let key = elements(&contents, "Key")
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let modified = elements(&contents, "LastModified")
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                keys.push((key, modified));
            }
            token = elements(&body, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                keys.sort();
                return keys;
            }
        }
    }

    /// The multipart uploads begun and neither completed nor aborted, as
    /// (key, upload id), sorted (ListMultipartUploads).
    pub async fn multipart_uploads(&self) -> Vec<(String, String)> {
        let body = self
            .http
            .get(format!("{}/{}?uploads", self.endpoint, self.bucket))
            .header("Authorization", AUTHORIZATION)
            .send()
            .await
            .expect("list multipart uploads")
            .text()
            .await
            .expect("list multipart uploads body");
        let mut uploads: Vec<(String, String)> = elements(&body, "Upload")
            .into_iter()
            .map(|upload| {
                let first = |name: &str| {
                    elements(&upload, name)
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                };
                (first("Key"), first("UploadId"))
            })
            .collect();
        uploads.sort();
        uploads
    }

    /// The object's bytes, or `None` if there is none.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let response = self.send(reqwest::Method::GET, key, None).await?;
        Some(response.bytes().await.expect("body").to_vec())
    }

    /// The object's user metadata (`x-amz-meta-<name>` → `<name>`).
    pub async fn metadata(&self, key: &str) -> HashMap<String, String> {
        let response = self
            .send(reqwest::Method::HEAD, key, None)
            .await
            .unwrap_or_else(|| panic!("HEAD {key}: no such object"));
        response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                let name = name.as_str().strip_prefix("x-amz-meta-")?;
                Some((name.to_string(), value.to_str().ok()?.to_string()))
            })
            .collect()
    }

    /// Replaces the object's bytes (keeping no metadata), as damage would.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.send(reqwest::Method::PUT, key, Some(bytes)).await;
    }

    /// Removes the object (moto answers 204 whether or not it was there).
    pub async fn delete(&self, key: &str) {
        self.send(reqwest::Method::DELETE, key, None).await;
    }

    /// Copies every object under `prefix` to `dir` (keys become paths below
    /// it), each file's mtime set from its `captured-at` metadata, so the
    /// kit's on-disk checks read a bucket archive as they read a local one.
    /// Also checks each object's `sha256` metadata against its bytes.
    pub async fn mirror(&self, prefix: &str, dir: &Path) -> usize {
        let keys = self.keys(prefix).await;
        for key in &keys {
            let relative = key.strip_prefix(prefix).expect("key under the prefix");
            let relative = relative.trim_start_matches('/');
            assert!(
                !relative
                    .split('/')
                    .any(|c| c.is_empty() || c == ".." || c == "."),
                "odd key {key:?}"
            );
            let bytes = self.get(key).await.expect("listed object");
            let meta = self.metadata(key).await;
            if let Some(sha) = meta.get("sha256") {
                assert_eq!(*sha, hex(&Sha256::digest(&bytes)), "{key}: sha256 metadata");
            }
            let path = dir.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            if let Some(ms) = meta.get("captured-at").and_then(|v| v.parse::<i64>().ok()) {
                let time = if ms >= 0 {
                    std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)
                } else {
                    std::time::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
                };
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(time))
                    .unwrap();
            }
        }
        keys.len()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text of every `<name>…</name>` element (S3's XML is flat enough).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(
            after[..end]
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'"),
        );
        rest = &after[end + close.len()..];
    }
    found
}

/// A TCP proxy in front of the S3 server that can be made to fail: an
/// outage cuts every open connection, and while it lasts every new one gets
/// `503 SlowDown` or is closed unanswered (alternately), as a struggling S3
/// endpoint does.
pub struct FlakyProxy {
    pub endpoint: String,
    outage: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// While on, every connection gets the 403 `SignatureDoesNotMatch`
    /// error S3 sends for a bad signature, which echoes the access key
    /// and the string that was signed.
    forbid: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled (and replaced) when an outage starts: cuts open pipes.
    cut: std::sync::Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    /// Connections refused during outages.
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    pub async fn start(upstream: &str) -> FlakyProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let outage = std::sync::Arc::new(AtomicBool::new(false));
        let refused = std::sync::Arc::new(AtomicUsize::new(0));
        let cut = std::sync::Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let forbid = std::sync::Arc::new(AtomicBool::new(false));
        let (on, count, cuts, forbidden) =
            (outage.clone(), refused.clone(), cut.clone(), forbid.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if forbidden.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        // Take the request head first, as a server would.
                        let mut head = vec![0_u8; 16 << 10];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), client.read(&mut head))
                                .await;
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code>\
                             <Message>The request signature we calculated does not match the signature you provided.</Message>\
                             <AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 {SECRET_KEY}</StringToSign>\
                             <CanonicalRequest>GET / x-amz-security-token:{SECRET_KEY}</CanonicalRequest></Error>"
                        );
                        let answer = format!(
                            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(answer.as_bytes()).await;
                    });
                    continue;
                }
                if on.load(Ordering::SeqCst) {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if n % 2 == 0 {
                            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                            let answer = format!(
                                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = client.write_all(answer.as_bytes()).await;
                        }
                        drop(client);
                    });
                    continue;
                }
                let upstream = upstream.clone();
                let cancelled = cuts.lock().unwrap().clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cancelled.cancelled() => {}
                        }
                    }
                });
            }
        });
        FlakyProxy {
            endpoint,
            outage,
            forbid,
            cut,
            refused,
            task,
        }
    }

    /// Starts (cutting every open connection) or ends an outage.
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            let mut cut = self.cut.lock().unwrap();
            cut.cancel();
            *cut = tokio_util::sync::CancellationToken::new();
        }
    }

    /// Starts (cutting every open connection) or ends answering every
    /// request with a signature error that echoes the credentials.
    pub fn set_forbidden(&self, on: bool) {
        self.forbid.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            let mut cut = self.cut.lock().unwrap();
            cut.cancel();
            *cut = tokio_util::sync::CancellationToken::new();
        }
    }

    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
