//! The fake IA's read routes: `GET /?check_limit=1`, `GET
//! /metadata/<identifier>`, and what every route shares (errors, the log).

use super::state::{IaRequest, SharedState, StoredFile};
use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use tokio::time::Instant;

/// An S3-style XML error, as IA-S3 sends them.
pub(super) fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>fake</Resource><RequestId>fake</RequestId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

pub(super) fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), value)
        })
        .collect()
}

pub(super) fn log(
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

/// One of IA's own files in a listing (`source: metadata`), with a size and
/// an MD5 of its own, as archive.org lists them: a client must match files
/// by name, not take every entry for one of its uploads.
fn ia_file(name: &str) -> Value {
    json!({
        "name": name,
        "source": "metadata",
        "format": "Metadata",
        "mtime": "1700000000",
        "size": "1234",
        "md5": super::md5_hex(name.as_bytes()),
    })
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
    metadata: &BTreeMap<String, Vec<String>>,
    files: &BTreeMap<String, StoredFile>,
) -> Value {
    let now = Instant::now();
    let mut listed = vec![
        ia_file(&format!("{identifier}_meta.xml")),
        ia_file(&format!("{identifier}_files.xml")),
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

/// `POST /<identifier>/<file>?uploads` and the rest of S3 multipart: IA-S3
/// has it, but the `internetarchive` library never uses it and neither do
/// we (see `docs/ia-s3.md`), so the fake answers 501 to make that visible.
pub(super) async fn multipart(State(shared): State<SharedState>, request: Request) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let status = StatusCode::NOT_IMPLEMENTED;
    log(&shared, &method, &path, "", request.headers(), status);
    s3_error(
        status,
        "NotImplemented",
        "multipart uploads are not modelled by the fake",
    )
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
