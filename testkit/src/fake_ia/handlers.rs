//! The fake IA's routes: `PUT /<identifier>/<file>`, `GET /?check_limit=1`,
//! `GET /metadata/<identifier>`.

use super::SPAM_BODY;
use super::decode::decode_meta_headers;
use super::state::{IaRequest, SharedState, StoredFile, hex};
use crate::fake::net::ConnInfo;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use md5::{Digest, Md5};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// An S3-style XML error, as IA-S3 sends them.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>fake</Resource><RequestId>fake</RequestId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), value)
        })
        .collect()
}

fn log(
    shared: &SharedState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    status: StatusCode,
) {
    shared.lock().requests.push(IaRequest {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: header_list(headers),
        status: status.as_u16(),
    });
}

/// `GET /?check_limit=1&accesskey=…&bucket=…`: IA-S3's rate-limit probe.
pub(super) async fn root(
    State(shared): State<SharedState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if params.get("check_limit").map(String::as_str) != Some("1") {
        log(
            &shared,
            &Method::GET,
            "/",
            &query,
            &headers,
            StatusCode::BAD_REQUEST,
        );
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "not supported by the fake",
        );
    }
    let over_limit = shared.lock().over_limit;
    log(&shared, &Method::GET, "/", &query, &headers, StatusCode::OK);
    let reason = if over_limit == 0 {
        ""
    } else {
        "bucket_tasks_queued"
    };
    Json(json!({
        "accesskey": params.get("accesskey").cloned().unwrap_or_default(),
        "bucket": params.get("bucket").cloned().unwrap_or_default(),
        "detail": {
            "accesskey_ration": 74,
            "accesskey_tasks_queued": 0,
            "bucket_ration": 24,
            "bucket_tasks_queued": if over_limit == 0 { 0 } else { 25 },
            "limit_reason": reason,
            "rationing_engaged": over_limit.min(1),
            "rationing_level": 1399,
            "total_global_limit": 1799,
            "total_tasks_queued": 308
        },
        "over_limit": over_limit
    }))
    .into_response()
}

/// `GET /metadata/<identifier>`: `{}` for an unknown item; else the item's
/// metadata and the files whose listing delay has passed, sizes as strings
/// as archive.org gives them, plus IA's own `_meta.xml` and `_files.xml`.
pub(super) async fn metadata(
    State(shared): State<SharedState>,
    Path(identifier): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/metadata/{identifier}");
    let body = {
        let state = shared.lock();
        match state.items.get(&identifier) {
            None => json!({}),
            Some(item) => item_json(&identifier, &item.metadata, &item.files),
        }
    };
    log(&shared, &Method::GET, &path, "", &headers, StatusCode::OK);
    Json(body).into_response()
}

fn item_json(
    identifier: &str,
    metadata: &std::collections::BTreeMap<String, Vec<String>>,
    files: &std::collections::BTreeMap<String, StoredFile>,
) -> Value {
    let now = Instant::now();
    let mut listed = vec![
        json!({"name": format!("{identifier}_meta.xml"), "source": "metadata", "format": "Metadata"}),
        json!({"name": format!("{identifier}_files.xml"), "source": "metadata", "format": "Metadata"}),
    ];
    let mut item_size = 0u64;
    for (name, file) in files.iter().filter(|(_, f)| f.listed_from <= now) {
        item_size += file.size;
        listed.push(json!({
            "name": name,
            "source": "original",
            "mtime": "1700000000",
            "size": file.size.to_string(),
            "md5": file.md5,
            "format": if name.ends_with(".tar") { "TAR" } else { "Unknown" },
        }));
    }
    let meta: serde_json::Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| {
            let value = if v.len() == 1 { json!(v[0]) } else { json!(v) };
            (k.clone(), value)
        })
        .collect();
    json!({
        "created": 1700000000,
        "d1": "ia800000.us.archive.org",
        "dir": format!("/0/items/{identifier}"),
        "files": listed.clone(),
        "files_count": listed.len(),
        "item_size": item_size,
        "metadata": meta,
        "server": "ia800000.us.archive.org",
        "uniq": 1,
        "workable_servers": ["ia800000.us.archive.org"]
    })
}

/// Any other route.
pub(super) async fn unknown(State(shared): State<SharedState>, request: Request) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    log(
        &shared,
        &method,
        &path,
        "",
        request.headers(),
        StatusCode::NOT_FOUND,
    );
    s3_error(StatusCode::NOT_FOUND, "NoSuchKey", "not found")
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
    let response = match refusal(&shared, &identifier, &headers) {
        Some(refused) => {
            drain(body).await;
            refused
        }
        None => receive(&shared, &conn, &identifier, &file, &headers, body).await,
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

/// What IA-S3 answers before it reads a body, in its order: auth, the
/// item's owner, spam, throttling, framing, the item's existence.
fn refusal(shared: &SharedState, identifier: &str, headers: &HeaderMap) -> Option<Response> {
    let mut state = shared.lock();
    let expected = format!("LOW {}:{}", state.options.access, state.options.secret);
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match auth {
        None => {
            return Some(s3_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Access Denied: no authorization header (anonymous uploads are not allowed)",
            ));
        }
        Some(value) if value != expected.as_bytes() => {
            return Some(s3_error(
                StatusCode::FORBIDDEN,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            ));
        }
        Some(_) => {}
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
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/xml")],
                SPAM_BODY,
            )
                .into_response(),
        );
    }
    let slow_down = if state.slow_down.next > 0 {
        state.slow_down.next -= 1;
        true
    } else {
        let fraction = state.slow_down.fraction;
        fraction > 0.0 && state.rng.random_bool(fraction)
    };
    if slow_down {
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
    let Some(value) = headers.get("content-md5") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?.trim();
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Some(text.to_ascii_lowercase()));
    }
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ())?;
    if bytes.len() != 16 {
        return Err(());
    }
    Ok(Some(hex(&bytes)))
}

/// Streams the body to disk through the link, then checks and stores it.
async fn receive(
    shared: &SharedState,
    conn: &ConnInfo,
    identifier: &str,
    file: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Ok(expected) = expected_md5(headers) else {
        drain(body).await;
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidDigest",
            "The Content-MD5 you specified was invalid.",
        );
    };
    let drop_after = shared.lock().drop_after;
    let path = shared.upload_path();
    let mut out = tokio::fs::File::create(&path)
        .await
        .expect("create an upload file");
    let mut md5 = Md5::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // The client went away mid-body: nothing is stored.
            let _ = tokio::fs::remove_file(&path).await;
            return s3_error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "The request body ended early.",
            );
        };
        shared.pass(chunk.len()).await;
        size += chunk.len() as u64;
        if drop_after.is_some_and(|limit| size > limit) {
            shared.lock().drop_after = None;
            conn.kill();
            let _ = tokio::fs::remove_file(&path).await;
            return s3_error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "connection dropped on purpose",
            );
        }
        md5.update(&chunk);
        out.write_all(&chunk).await.expect("write an upload file");
    }
    out.flush().await.expect("flush an upload file");
    drop(out);
    let md5 = hex(&md5.finalize());
    if expected.as_ref().is_some_and(|e| *e != md5) {
        let _ = tokio::fs::remove_file(&path).await;
        return s3_error(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        );
    }
    store(
        shared,
        identifier,
        file,
        StoredFile {
            path,
            size,
            md5: md5.clone(),
            headers: header_list(headers),
            listed_from: Instant::now(),
        },
    );
    let mut response = StatusCode::OK.into_response();
    let etag = format!("\"{md5}\"");
    response
        .headers_mut()
        .insert(header::ETAG, etag.parse().expect("an ETag"));
    response
}

/// Records a received file; the `PUT` that creates the item sets its metadata.
fn store(shared: &SharedState, identifier: &str, file: &str, mut stored: StoredFile) {
    let mut state = shared.lock();
    stored.listed_from = Instant::now() + state.options.listing_delay;
    let item = state
        .items
        .entry(identifier.to_string())
        .or_insert_with(|| {
            let mut item = super::state::Item::default();
            item.metadata = decode_meta_headers(&stored.headers);
            item.metadata
                .insert("identifier".into(), vec![identifier.to_string()]);
            item
        });
    if let Some(old) = item.files.insert(file.to_string(), stored) {
        let _ = std::fs::remove_file(old.path);
    }
    *state
        .stored_count
        .entry((identifier.to_string(), file.to_string()))
        .or_default() += 1;
}
