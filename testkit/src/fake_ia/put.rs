//! `PUT /<identifier>/<file>`: IA-S3's upload, with its refusals, checks
//! and the fake's faults (throttling, spam, a hold, a dropped connection).

use super::decode::decode_meta_headers;
use super::handlers::{header_list, log, s3_error};
use super::spam_body;
use super::state::{Item, SharedState, StoredFile, hex};
use crate::fake::net::ConnInfo;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use md5::{Digest, Md5};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// `PUT /<identifier>/<file>`.
pub(super) async fn put_file(
    State(shared): State<SharedState>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Path((identifier, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/{identifier}/{file}");
    {
        let mut state = shared.lock();
        state.connections.push(conn.clone());
        *state
            .attempts
            .entry((identifier.clone(), file.clone()))
            .or_default() += 1;
    }
    let put = Put {
        shared: &shared,
        conn: &conn,
        identifier: &identifier,
        file: &file,
        headers: &headers,
    };
    let response = match refusal(&shared, &identifier, &headers) {
        Some(refused) => {
            drain(body).await;
            refused
        }
        None => put.receive(body).await,
    };
    log(
        &shared,
        &Method::PUT,
        &path,
        "",
        &headers,
        response.status(),
    );
    response
}

/// Identifiers IA accepts (`validate_s3_identifier` in the library).
fn valid_identifier(identifier: &str) -> bool {
    let bytes = identifier.as_bytes();
    (3..=100).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

/// What IA-S3 answers before it reads a body, in this order: auth, the
/// identifier, the item's owner, spam, throttling, framing, the item's
/// existence.
fn refusal(shared: &SharedState, identifier: &str, headers: &HeaderMap) -> Option<Response> {
    let mut state = shared.lock();
    if let Some(refused) = auth_refusal(&state, headers) {
        return Some(refused);
    }
    if !valid_identifier(identifier) {
        return Some(s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ));
    }
    if state.forbidden.contains(identifier) {
        return Some(s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied: you lack the privileges to write to this item.",
        ));
    }
    if state.spam {
        let body = spam_body(identifier);
        let content_type = [(header::CONTENT_TYPE, "application/xml")];
        return Some((StatusCode::SERVICE_UNAVAILABLE, content_type, body).into_response());
    }
    if state.take_slow_down() {
        let mut response = s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        );
        if let Some(secs) = state.slow_down.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        return Some(response);
    }
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked || !headers.contains_key(header::CONTENT_LENGTH) {
        return Some(s3_error(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header (chunked transfer encoding is not supported).",
        ));
    }
    let make_bucket = headers
        .get("x-archive-auto-make-bucket")
        .is_some_and(|v| v.as_bytes() == b"1");
    if !state.items.contains_key(identifier) && !make_bucket {
        return Some(s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist.",
        ));
    }
    None
}

/// IA-S3's answer to a missing or wrong `authorization: LOW <access>:<secret>`.
fn auth_refusal(state: &super::state::State, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("LOW {}:{}", state.options.access, state.options.secret);
    match headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) {
        None => Some(s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied: anonymous uploads are not allowed",
        )),
        Some(value) if value != expected.as_bytes() => Some(s3_error(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )),
        Some(_) => None,
    }
}

impl super::state::State {
    /// Whether this `PUT` gets `SlowDown`: the next-N count first, then the
    /// fraction (seeded, reproducible).
    fn take_slow_down(&mut self) -> bool {
        if self.slow_down.next > 0 {
            self.slow_down.next -= 1;
            return true;
        }
        let fraction = self.slow_down.fraction;
        fraction > 0.0 && self.rng.random_bool(fraction)
    }
}

/// Reads and discards a refused body, so the client reads the answer
/// instead of a reset.
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

/// `Content-MD5` as IA-S3 takes it: 32 hex digits (what the `internetarchive`
/// library sends) or base64 of the 16 bytes (standard S3). `Err` when
/// present and neither.
fn expected_md5(headers: &HeaderMap) -> Result<Option<String>, ()> {
    use base64::Engine;
    let Some(value) = headers.get("content-md5") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?.trim();
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Some(text.to_ascii_lowercase()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ())?;
    if bytes.len() != 16 {
        return Err(());
    }
    Ok(Some(hex(&bytes)))
}

/// One accepted `PUT` being received.
struct Put<'a> {
    shared: &'a SharedState,
    conn: &'a ConnInfo,
    identifier: &'a str,
    file: &'a str,
    headers: &'a HeaderMap,
}

/// How a body arrived: whole, or not (the client went, or the fake cut it).
enum Received {
    Whole {
        size: u64,
        md5: String,
        took: std::time::Duration,
    },
    Cut(Response),
}

impl Put<'_> {
    /// Streams the body to disk through the link, then checks and stores it.
    async fn receive(&self, body: Body) -> Response {
        let Ok(expected) = expected_md5(self.headers) else {
            drain(body).await;
            return s3_error(
                StatusCode::BAD_REQUEST,
                "InvalidDigest",
                "The Content-MD5 you specified was invalid.",
            );
        };
        let path = self.shared.upload_path();
        let (size, md5, took) = match self.stream_to(&path, body).await {
            Received::Whole { size, md5, took } => (size, md5, took),
            Received::Cut(response) => {
                let _ = tokio::fs::remove_file(&path).await;
                return response;
            }
        };
        if expected.as_ref().is_some_and(|e| *e != md5) {
            let _ = tokio::fs::remove_file(&path).await;
            return s3_error(
                StatusCode::BAD_REQUEST,
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
            );
        }
        self.store(StoredFile {
            path,
            size,
            md5: md5.clone(),
            headers: header_list(self.headers),
            listed_from: Instant::now(),
            receive_time: took,
        });
        let mut response = StatusCode::OK.into_response();
        let etag = format!("\"{md5}\"");
        response
            .headers_mut()
            .insert(header::ETAG, etag.parse().expect("an ETag"));
        response
    }

    async fn stream_to(&self, path: &std::path::Path, body: Body) -> Received {
        let (drop_after, hold_after) = {
            let state = self.shared.lock();
            (state.drop_after, state.hold_after)
        };
        let mut out = tokio::fs::File::create(path)
            .await
            .expect("create an upload file");
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut held = false;
        let started = Instant::now();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return Received::Cut(s3_error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    "The request body ended early.",
                ));
            };
            self.shared.pass(chunk.len()).await;
            size += chunk.len() as u64;
            if drop_after.is_some_and(|limit| size > limit) && self.shared.take_drop() {
                self.conn.kill();
                return Received::Cut(s3_error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    "connection dropped on purpose",
                ));
            }
            md5.update(&chunk);
            out.write_all(&chunk).await.expect("write an upload file");
            if !held && hold_after.is_some_and(|limit| size >= limit) {
                held = true;
                self.shared.hold(self.identifier, self.file).await;
            }
        }
        out.flush().await.expect("flush an upload file");
        Received::Whole {
            size,
            md5: hex(&md5.finalize()),
            took: started.elapsed(),
        }
    }

    /// Records a received file. The `PUT` that creates the item sets its
    /// metadata from its headers; a later one only with
    /// `x-archive-ignore-preexisting-bucket: 1` (IA-S3's rule).
    fn store(&self, mut stored: StoredFile) {
        let shared = self.shared;
        let mut state = shared.lock();
        stored.listed_from = Instant::now() + state.options.listing_delay;
        let replace_meta = self
            .headers
            .get("x-archive-ignore-preexisting-bucket")
            .is_some_and(|v| v.as_bytes() == b"1");
        let item = state
            .items
            .entry(self.identifier.to_string())
            .or_insert_with(|| Item {
                metadata: decode_meta_headers(&stored.headers),
                ..Item::default()
            });
        if replace_meta {
            item.metadata = decode_meta_headers(&stored.headers);
        }
        item.metadata
            .insert("identifier".into(), vec![self.identifier.to_string()]);
        if let Some(old) = item.files.insert(self.file.to_string(), stored) {
            let _ = std::fs::remove_file(old.path);
        }
        *state
            .stored_count
            .entry((self.identifier.to_string(), self.file.to_string()))
            .or_default() += 1;
    }
}
