//! The archive in an S3-compatible bucket (`storage.archive_url = "s3://bucket/prefix"`).
//!
//! Object keys mirror the local layout under the prefix, so a bucket and a
//! local archive are interchangeable file for file. Paths keep their
//! [`std::path::Path`] form throughout the engine, rooted at the URL
//! (`s3://bucket/prefix/mapillary-…/2024-05-01/<seq>/<id>.jpg`): layout code
//! is shared, and every stored path, log line and `last_error` names the
//! object unambiguously. This module turns such a path into a key.
//!
//! "Durable at its final path" is a successful PUT: S3 has no partial
//! objects, so there is no `.part` and nothing to sweep after a crash. Each
//! image carries its SHA-256, its size and a fingerprint of the metadata it
//! was tagged from as user metadata, so a later run adopts it with one HEAD
//! instead of downloading it again. Objects have no mtime: the capture time
//! goes in `x-amz-meta-captured-at` (Unix ms).
//!
//! Endpoint and credentials come from the standard `AWS_*` variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`, …), read once; they are handed to the
//! client and never stored, logged or shown.

mod create_only;
mod quarantine;

pub use create_only::Completed;

use crate::secret::Secret;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    WriteMultipart,
};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The object [`Bucket::check_reachable`] writes and removes at start.
const WRITE_PROBE: &str = ".mapillary-downloader-write-check";

/// The `AWS_*` variables whose values are credentials.
const SECRET_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// User metadata names (sent as `x-amz-meta-<name>`).
const META_SHA256: &str = "sha256";
const META_CAPTURED_AT: &str = "captured-at";
const META_TAGGED_FROM: &str = "tagged-from";

/// Part size of multipart uploads (S3 wants ≥ 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;

/// A parsed `s3://bucket[/prefix]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveUrl {
    /// The bucket's name.
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl ArchiveUrl {
    /// Parses `s3://bucket[/prefix]`. The bucket follows S3's naming rules
    /// (3–63 of `a-z 0-9 . -`, starting and ending with a letter or digit);
    /// the prefix is plain `/`-separated names, none empty, `.` or `..`.
    /// The error says what is wrong without repeating the value (config
    /// errors never echo one).
    pub fn parse(text: &str) -> Result<ArchiveUrl, String> {
        let rest = text.strip_prefix("s3://").ok_or_else(|| {
            "is not an s3://bucket/prefix URL (only s3:// is supported)".to_string()
        })?;
        let rest = rest.trim_end_matches('/');
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(
                "its bucket is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')".to_string(),
            );
        }
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            let plain = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && !segment.chars().any(|c| c.is_control() || c == '\\');
            if !plain {
                return Err("has a prefix that is not plain names separated by '/'".to_string());
            }
        }
        Ok(ArchiveUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The archive root as a path: `s3://bucket[/prefix]`.
    pub fn root(&self) -> PathBuf {
        let mut root = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            root.push('/');
            root.push_str(&self.prefix);
        }
        PathBuf::from(root)
    }
}

impl fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root().display())
    }
}

/// The `AWS_*` variables, as read at load. Debug shows names only.
#[derive(Clone, Default)]
pub struct AwsEnvironment(Vec<(String, Secret)>);

impl AwsEnvironment {
    /// The non-empty `AWS_*` variables of `vars`, values wrapped as secrets.
    pub fn from_vars(vars: &HashMap<String, String>) -> AwsEnvironment {
        let mut found: Vec<(String, Secret)> = vars
            .iter()
            .filter(|(k, v)| k.starts_with("AWS_") && !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        AwsEnvironment(found)
    }
}

impl fmt::Debug for AwsEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Why a bucket request failed, never showing a credential.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The client could not be configured (a bad `AWS_*` value).
    #[error("cannot use {url}: {reason}")]
    Config {
        /// The archive URL.
        url: String,
        /// What object_store said (it names keys, not values).
        reason: String,
    },
    /// A path that is not under the archive root (a bug, or a row written
    /// under another archive).
    #[error("{0} is not inside the archive bucket")]
    OutsideRoot(PathBuf),
    /// A request failed; `message` is object_store's, made safe to show
    /// (see [`Bucket::failed`]).
    #[error("{op} {path}: {message}")]
    Request {
        /// The request (`PUT`, `GET`, …).
        op: &'static str,
        /// The object's archive path.
        path: PathBuf,
        /// object_store's message, credentials removed.
        message: String,
    },
    /// A local file (the spool) could not be read or written.
    #[error("local file {path}: {error}")]
    Local {
        /// The local file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
}

/// What a HEAD of an archived image tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The object's size.
    pub bytes: u64,
    /// Its SHA-256 if we wrote it (our user metadata).
    pub sha256: Option<String>,
    /// The fingerprint of the metadata a JPEG of ours was tagged from.
    pub tagged_from: Option<String>,
}

/// An S3-compatible bucket holding the archive.
pub struct Bucket {
    url: ArchiveUrl,
    /// Credential values never to show, should an error carry one.
    redactions: Vec<Secret>,
    root: PathBuf,
    store: AmazonS3,
    /// For the requests object_store presigns and we send (a create-only
    /// completion, see [`create_only`]).
    http: reqwest::Client,
    /// A local folder where files too large to hold in memory
    /// (`metadata.jsonl`) are built whole before their upload.
    spool: PathBuf,
}

impl fmt::Debug for Bucket {
    // The client holds credentials: show where, never how.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

impl Bucket {
    /// A client for `url`, configured from `env` (endpoint, region,
    /// credentials), spooling in `spool`. Makes no request.
    pub fn open(
        url: &ArchiveUrl,
        env: &AwsEnvironment,
        spool: PathBuf,
    ) -> Result<Bucket, BucketError> {
        // Client options first: `with_client_options` replaces them all, and
        // the variables (AWS_ALLOW_HTTP, …) must land on top.
        let options = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(120));
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_retry(retry);
        for (name, value) in &env.0 {
            if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value.expose());
            }
        }
        let store =
            builder
                .with_bucket_name(&url.bucket)
                .build()
                .map_err(|e| BucketError::Config {
                    url: url.to_string(),
                    // object_store's config errors name the key, not its value.
                    reason: e.to_string(),
                })?;
        let redactions = env
            .0
            .iter()
            .filter(|(name, value)| {
                SECRET_VARIABLES.contains(&name.as_str()) && value.expose().len() >= 4
            })
            .map(|(_, value)| value.clone())
            .collect();
        let http = completion_client(env).map_err(|reason| BucketError::Config {
            url: url.to_string(),
            reason,
        })?;
        Ok(Bucket {
            http,
            redactions,
            root: url.root(),
            url: url.clone(),
            store,
            spool,
        })
    }

    /// The URL it was opened for (for messages).
    pub fn url(&self) -> &ArchiveUrl {
        &self.url
    }

    /// The local folder uploads are built in.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Where to build the file that will become the object at `path`
    /// (same layout under the spool folder).
    pub fn spool_path(&self, path: &Path) -> Result<PathBuf, BucketError> {
        Ok(self.spool.join(self.key(path)?.as_ref()))
    }

    /// The archive root as a path (`s3://bucket/prefix`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The object key of an archive path.
    pub fn key(&self, path: &Path) -> Result<Key, BucketError> {
        let outside = || BucketError::OutsideRoot(path.to_path_buf());
        let relative = path.strip_prefix(&self.root).map_err(|_| outside())?;
        let mut parts: Vec<&str> = Vec::new();
        if !self.url.prefix.is_empty() {
            parts.extend(self.url.prefix.split('/'));
        }
        for component in relative.components() {
            match component {
                std::path::Component::Normal(name) => {
                    parts.push(name.to_str().ok_or_else(outside)?)
                }
                _ => return Err(outside()),
            }
        }
        if relative.as_os_str().is_empty() {
            // The root itself is no object.
            return Err(outside());
        }
        Key::parse(parts.join("/")).map_err(|_| outside())
    }

    /// Maps an object_store error to ours, with a message safe to store and
    /// show: an S3 error body (which, for a signature error, echoes the
    /// access key, the string to sign and the canonical request with any
    /// session token) is cut down to its `Code` and `Message`, and any
    /// credential value left is redacted.
    fn failed(
        &self,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(object_store::Error) -> BucketError {
        let path = path.to_path_buf();
        let redactions = self.redactions.clone();
        move |error| {
            let mut message = without_error_body(&describe(&error));
            for secret in &redactions {
                message = message.replace(secret.expose(), "[redacted]");
            }
            BucketError::Request { op, path, message }
        }
    }

    /// Checks that the bucket answers with the configured credentials and
    /// lets us write: one LIST under the prefix, then a PUT and a DELETE of
    /// a probe object beside the collections.
    pub async fn check_reachable(&self) -> Result<(), BucketError> {
        let prefix = (!self.url.prefix.is_empty()).then(|| Key::from(self.url.prefix.as_str()));
        let mut listing = self.store.list(prefix.as_ref());
        listing
            .try_next()
            .await
            .map_err(self.failed("LIST", &self.root))?;
        let probe = self.root.join(WRITE_PROBE);
        let key = self.key(&probe)?;
        self.store
            .put(
                &key,
                PutPayload::from_static(b"mapillary-downloader can write here\n"),
            )
            .await
            .map_err(self.failed("PUT", &probe))?;
        self.delete(&probe).await
    }

    /// Stores an archived image: one PUT, with its checksum, capture time
    /// and metadata fingerprint as user metadata. Overwrites: the same
    /// image always gets the same bytes from the same metadata.
    pub async fn put_image(
        &self,
        path: &Path,
        bytes: Bytes,
        sha256: &str,
        captured_at_ms: Option<i64>,
        tagged_from: &str,
    ) -> Result<(), BucketError> {
        let key = self.key(path)?;
        let mut metadata = vec![
            (META_SHA256, sha256.to_string()),
            (META_TAGGED_FROM, tagged_from.to_string()),
        ];
        if let Some(ms) = captured_at_ms {
            metadata.push((META_CAPTURED_AT, ms.to_string()));
        }
        let options = PutOptions {
            attributes: attributes(path, metadata),
            ..Default::default()
        };
        self.store
            .put_opts(&key, PutPayload::from(bytes), options)
            .await
            .map_err(self.failed("PUT", path))?;
        Ok(())
    }

    /// The object at `path`, if any: size and our user metadata.
    pub async fn head(&self, path: &Path) -> Result<Option<Head>, BucketError> {
        let key = self.key(path)?;
        let options = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.store.get_opts(&key, options).await {
            Ok(result) => {
                let meta = |name: &'static str| {
                    result
                        .attributes
                        .get(&Attribute::Metadata(name.into()))
                        .map(|v| v.to_string())
                };
                Ok(Some(Head {
                    bytes: result.meta.size,
                    sha256: meta(META_SHA256),
                    tagged_from: meta(META_TAGGED_FROM),
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("HEAD", path)(e)),
        }
    }

    /// The whole object at `path`, or `None` if there is none.
    pub async fn get(&self, path: &Path) -> Result<Option<Bytes>, BucketError> {
        let key = self.key(path)?;
        let read = async { self.store.get(&key).await?.bytes().await };
        match read.await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("GET", path)(e)),
        }
    }

    /// Streams the object at `path` into the local file `local` (made
    /// anew). `false` if there is no object.
    pub async fn download(&self, path: &Path, local: &Path) -> Result<bool, BucketError> {
        use tokio::io::AsyncWriteExt;
        let key = self.key(path)?;
        let result = match self.store.get(&key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.failed("GET", path)(e)),
        };
        let local_error = |error| BucketError::Local {
            path: local.to_path_buf(),
            error,
        };
        if let Some(dir) = local.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(local_error)?;
        }
        let mut file = tokio::fs::File::create(local).await.map_err(local_error)?;
        let mut stream = result.into_stream();
        let copied: Result<(), BucketError> = async {
            while let Some(chunk) = stream.try_next().await.map_err(self.failed("GET", path))? {
                file.write_all(&chunk).await.map_err(local_error)?;
            }
            file.flush().await.map_err(local_error)
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(local).await;
        }
        copied.map(|()| true)
    }

    /// Removes the object at `path`; gone already is fine.
    pub async fn delete(&self, path: &Path) -> Result<(), BucketError> {
        let key = self.key(path)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("DELETE", path)(e)),
        }
    }

    /// Uploads the local file `local` to `path`, in parts, so a file of any
    /// size costs [`PART_BYTES`] of memory at a time. The object appears
    /// whole at completion or not at all (an upload cut short is aborted).
    pub async fn upload_file(&self, local: &Path, path: &Path) -> Result<(), BucketError> {
        use tokio::io::AsyncReadExt;
        let key = self.key(path)?;
        let local_error = |error| BucketError::Local {
            path: local.to_path_buf(),
            error,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(self.failed("PUT (multipart)", path))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0_u8; 1 << 20];
        let copied: Result<(), BucketError> = async {
            loop {
                let n = file.read(&mut buffer).await.map_err(local_error)?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(self.failed("PUT (part)", path))?;
                writer.write(&buffer[..n]);
            }
        }
        .await;
        match copied {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(self.failed("PUT (complete)", path))?;
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// The client for the requests we send ourselves (a presigned completion),
/// with the `AWS_*` client settings object_store honours that decide whether
/// a request gets through at all: `AWS_ALLOW_INVALID_CERTIFICATES` (a server
/// on a self-signed certificate), `AWS_PROXY_URL` and `AWS_PROXY_EXCLUDES`.
fn completion_client(env: &AwsEnvironment) -> Result<reqwest::Client, String> {
    let setting = |name: &str| {
        env.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&format!("AWS_{name}")))
            .map(|(_, value)| value.expose().trim().to_string())
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120));
    if setting("ALLOW_INVALID_CERTIFICATES").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(proxy) = setting("PROXY_URL") {
        let proxy = reqwest::Proxy::all(&proxy)
            .map_err(|e| format!("AWS_PROXY_URL is not a proxy URL: {e}"))?
            .no_proxy(setting("PROXY_EXCLUDES").and_then(|v| reqwest::NoProxy::from_string(&v)));
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| e.to_string())
}

/// An object_store error with its causes, each said once (its messages
/// repeat their sources' text, and the deepest says what really failed).
fn describe(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

/// `text` without the S3 error document it may end with: only the error's
/// `Code` and `Message` are kept.
fn without_error_body(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.to_string();
    };
    let element = |name: &str| {
        let open = format!("<{name}>");
        let from = text[start..].find(&open)? + start + open.len();
        let to = text[from..].find(&format!("</{name}>"))? + from;
        Some(text[from..to].to_string())
    };
    let summary = match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => "(the error body is not shown)".to_string(),
    };
    format!("{}{summary}", &text[..start])
}

/// An object's attributes: each `(name, value)` of `metadata` as user
/// metadata, and the content type of `path`.
fn attributes(path: &Path, metadata: Vec<(&'static str, String)>) -> Attributes {
    let mut attributes = Attributes::new();
    for (name, value) in metadata {
        attributes.insert(Attribute::Metadata(name.into()), value.into());
    }
    attributes.insert(Attribute::ContentType, content_type(path).into());
    attributes
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gz") => "application/gzip",
        Some("jsonl") => "application/jsonl",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_urls_parse_or_say_what_is_wrong() {
        let url = ArchiveUrl::parse("s3://my-archive/mapillary/2024/").unwrap();
        assert_eq!(url.bucket, "my-archive");
        assert_eq!(url.prefix, "mapillary/2024");
        assert_eq!(url.root(), PathBuf::from("s3://my-archive/mapillary/2024"));
        let bare = ArchiveUrl::parse("s3://archive").unwrap();
        assert_eq!(
            (bare.bucket.as_str(), bare.prefix.as_str()),
            ("archive", "")
        );
        for bad in [
            "archive",
            "https://s3.amazonaws.com/archive",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-dash",
            "s3://a_b_c",
            "s3://bucket//double",
            "s3://bucket/../up",
            "s3://bucket/./here",
        ] {
            assert!(ArchiveUrl::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_s3_error_body_is_cut_to_its_code_and_message() {
        let text = "Client error with status 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 x-amz-security-token:SESSION</StringToSign></Error>";
        let shown = without_error_body(text);
        assert_eq!(
            shown,
            "Client error with status 403 Forbidden: SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        assert_eq!(without_error_body("connection reset"), "connection reset");
        assert_eq!(
            without_error_body("status 400: <Error><Foo/></Error>"),
            "status 400: (the error body is not shown)"
        );
    }

    #[test]
    fn keys_mirror_the_layout_under_the_prefix_and_nothing_escapes() {
        let env = AwsEnvironment::from_vars(&HashMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), "k".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ]));
        let url = ArchiveUrl::parse("s3://b-1/p/q").unwrap();
        let bucket = Bucket::open(&url, &env, PathBuf::from("/spool")).unwrap();
        let path = bucket
            .root()
            .join("mapillary-alice-original/2024-05-01/s/1.jpg");
        assert_eq!(
            bucket.key(&path).unwrap().as_ref(),
            "p/q/mapillary-alice-original/2024-05-01/s/1.jpg"
        );
        for outside in [
            "/tmp/x.jpg",
            "s3://b-1/other/x.jpg",
            "s3://b-1/p/q/../x.jpg",
        ] {
            assert!(bucket.key(Path::new(outside)).is_err(), "{outside}");
        }
        assert!(bucket.key(bucket.root()).is_err());
        let shown = format!("{bucket:?} {env:?}");
        assert!(
            !shown.contains("\"s\"") && !shown.contains("\"k\""),
            "{shown}"
        );
    }
}
