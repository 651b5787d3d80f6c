//! The fake's routes but the listings (`listing.rs`): `GET /?ids=`,
//! `GET /{id}`, unknown paths, and the CDN.

use super::gate::{ServedImage, bad_param, bad_token, graph_error, text};
use super::*;

/// Checks `Authorization: OAuth <token>` or `?access_token=`; returns the token
/// used, or `None` when the request must get a 401 code 190.
pub(super) fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<String> {
    let valid = shared.lock().token.clone();
    if let Some(t) = query.get("access_token") {
        return (*t == valid).then(|| t.clone());
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match header.and_then(|h| h.strip_prefix("OAuth ")) {
        Some(t) if t.trim() == valid => Some(valid),
        _ => None,
    }
}

pub(super) fn fields_of(query: &HashMap<String, String>) -> Vec<String> {
    query
        .get("fields")
        .map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn api_ids(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if authorize(&shared, &headers, &query).is_none() {
        return bad_token();
    }
    let Some(raw) = query.get("ids") else {
        return bad_param("(#100) Missing parameter: ids");
    };
    if shared.lock().refuse_ids_calls {
        return bad_param("(#100) Invalid parameter");
    }
    let ids: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > 50 {
        return bad_param("(#100) Too many IDs. Maximum: 50. Provided: more");
    }
    let fields = fields_of(&query);
    let mut out = Map::new();
    for id in ids {
        match shared.find(id) {
            Some(m) => {
                let mut object = shared.render(&m, &fields);
                if shared.lock().unreadable_in_ids.contains(id) {
                    object["captured_at"] = serde_json::json!({"unexpected": "shape"});
                }
                out.insert(id.to_string(), object);
            }
            // Like the Graph API: one unknown id fails the whole call.
            None => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    803,
                    &format!("(#803) Some of the aliases you requested do not exist: {id}"),
                );
            }
        }
    }
    let urls = out
        .values()
        .filter(|o| {
            o.as_object()
                .is_some_and(|o| o.keys().any(|k| k.ends_with("_url")))
        })
        .count();
    shared.lock().urls_in_ids_answers += urls;
    Json(Value::Object(out)).into_response()
}

pub(super) async fn api_one(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if authorize(&shared, &headers, &query).is_none() {
        return bad_token();
    }
    match shared.find(&id) {
        Some(m) => Json(shared.render(&m, &fields_of(&query))).into_response(),
        None => {
            let body = json!({"error": {
                "message": format!("Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"),
                "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                "fbtrace_id": "AfakeTRACEid0123"}});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

pub(super) async fn api_unknown_path(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if authorize(&shared, &headers, &query).is_none() {
        return bad_token();
    }
    graph_error(StatusCode::NOT_FOUND, 2500, "Unknown path components")
}

// ---------------------------------------------------------------- CDN

pub(super) async fn cdn_image(
    State(shared): State<Arc<Shared>>,
    Path((id, file)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(quality) = file
        .strip_suffix(".jpg")
        .and_then(|q| q.parse::<Quality>().ok())
    else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    let oe = query
        .get("oe")
        .and_then(|v| i64::from_str_radix(v, 16).ok());
    let sig_ok =
        oe.is_some_and(|oe| query.get("_nc_sig") == Some(&Shared::signature(&id, quality, oe)));
    if !sig_ok {
        return text(StatusCode::FORBIDDEN, "Bad URL hash");
    }
    if oe.is_some_and(|oe| oe < now_secs()) {
        return text(StatusCode::FORBIDDEN, "URL signature expired");
    }
    if shared.find(&id).is_none() {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let body = shared.body(&id, quality);
    let total = body.len();
    if method == Method::HEAD {
        if !shared.lock().head_allowed {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "image/jpeg".to_string()),
                (header::CONTENT_LENGTH, total.to_string()),
            ],
        )
            .into_response();
    }
    if let Some((a, b)) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
    {
        let end = b.min(total.saturating_sub(1));
        if a > end {
            return text(StatusCode::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable");
        }
        return (
            StatusCode::PARTIAL_CONTENT,
            [
                (header::CONTENT_TYPE, "image/jpeg".to_string()),
                (header::CONTENT_RANGE, format!("bytes {a}-{end}/{total}")),
            ],
            body[a..=end].to_vec(),
        )
            .into_response();
    }
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, "image/jpeg")], body).into_response();
    response.extensions_mut().insert(ServedImage(id));
    response
}

/// `bytes=a-b` (a single range).
pub(super) fn parse_range(value: &str) -> Option<(usize, usize)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = if b.trim().is_empty() {
        usize::MAX
    } else {
        b.trim().parse().ok()?
    };
    Some((a, b))
}
