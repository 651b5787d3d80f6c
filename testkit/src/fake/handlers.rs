//! The fake's routes: the Graph API endpoints and the CDN.

use super::gate::{Overlap, ServedImage, bad_param, bad_token, graph_error, text};
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

/// How far past a listing's end the looping `next` points.
const LOOP_GAP: usize = 7;

pub(super) fn encode_cursor(pos: usize) -> String {
    format!("QVFI{:X}", pos as u64 ^ 0x5A5A_5A5A)
}

pub(super) fn decode_cursor(cursor: &str) -> Option<usize> {
    let hex = cursor.strip_prefix("QVFI")?;
    u64::from_str_radix(hex, 16)
        .ok()
        .map(|v| (v ^ 0x5A5A_5A5A) as usize)
}

pub(super) fn parse_bbox(raw: &str) -> Option<[f64; 4]> {
    let v: Vec<f64> = raw
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    match v.as_slice() {
        [w, s, e, n] if w < e && s < n => Some([*w, *s, *e, *n]),
        _ => None,
    }
}

pub(super) fn in_bbox(meta: &FakeImage, b: &[f64; 4]) -> bool {
    let point = meta.computed_geometry.as_ref().or(meta.geometry.as_ref());
    match point.and_then(|p| p.lat_lon()) {
        Some((lat, lon)) => lon >= b[0] && lon <= b[2] && lat >= b[1] && lat <= b[3],
        None => false,
    }
}

pub(super) async fn api_images(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let Some(token) = authorize(&shared, &headers, &query) else {
        return bad_token();
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_LIMIT,
        Some(Ok(l)) => l.clamp(1, MAX_LIMIT),
        Some(Err(_)) => return bad_param("(#100) limit must be an integer"),
    };
    let bbox = match query.get("bbox") {
        None => None,
        Some(raw) => match parse_bbox(raw) {
            Some(b) => Some(b),
            None => return bad_param("(#100) bbox must be minLon,minLat,maxLon,maxLat"),
        },
    };
    let mut start = match query.get("after") {
        None => 0,
        Some(c) => match decode_cursor(c) {
            Some(p) => p,
            None => return bad_param("(#100) Invalid cursor"),
        },
    };
    let fields = fields_of(&query);
    let user = {
        let s = shared.lock();
        query
            .get("creator_username")
            .and_then(|name| s.by_name.get(name))
            .map(|&i| s.users[i].clone())
    };
    let Some(user) = user else {
        return Json(json!({"data": []})).into_response();
    };
    let (deleted, looping) = {
        let s = shared.lock();
        (s.deleted.clone(), s.looping_next)
    };
    let matches = |m: &FakeImage| !deleted.contains(&m.id) && bbox.is_none_or(|b| in_bbox(m, &b));
    let overlap = req.extensions().get::<Overlap>().is_some();
    if overlap && start > 0 {
        let mut back = 0;
        while start > 0 && back < OVERLAP {
            start -= 1;
            if user.get(start).is_some_and(|m| matches(&m)) {
                back += 1;
            }
        }
    }
    let mut data = Vec::new();
    let mut pos = start;
    while pos < user.len && data.len() < limit {
        if let Some(m) = user.get(pos)
            && matches(&m)
        {
            data.push(shared.render(&m, &fields));
        }
        pos += 1;
    }
    {
        let mut s = shared.lock();
        if !s.delete_when_listed.is_empty() {
            for item in &data {
                if let Some(id) = item.get("id").and_then(Value::as_str)
                    && s.delete_when_listed.remove(id)
                {
                    s.deleted.insert(id.to_string());
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("data".into(), Value::Array(data));
    let cursors = json!({"before": encode_cursor(start), "after": encode_cursor(pos)});
    // A looping listing: past the last page, one empty page that links to itself.
    let after_end = looping.then(|| {
        if start > user.len {
            start
        } else {
            user.len + LOOP_GAP
        }
    });
    if pos < user.len || after_end.is_some() {
        let after = if pos < user.len {
            pos
        } else {
            after_end.unwrap_or(pos)
        };
        let mut next = shared.api_url.join("images").expect("images URL");
        {
            let mut q = next.query_pairs_mut();
            for key in ["creator_username", "fields", "bbox"] {
                if let Some(v) = query.get(key) {
                    q.append_pair(key, v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            q.append_pair("after", &encode_cursor(after));
            if query.contains_key("access_token") || shared.lock().token_in_next {
                q.append_pair("access_token", &token);
                // Echoed under another name too (percent-encoded by the
                // serializer): a client must not rely on the name alone.
                q.append_pair("session_echo", &format!("oauth:{token}"));
            }
        }
        body.insert(
            "paging".into(),
            json!({"cursors": cursors, "next": next.as_str()}),
        );
    } else {
        // The last page: vary the shape as the API does.
        match start % 3 {
            0 => {}
            1 => {
                body.insert("paging".into(), json!({}));
            }
            _ => {
                body.insert("paging".into(), json!({"cursors": cursors}));
            }
        }
    }
    Json(Value::Object(body)).into_response()
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
                out.insert(id.to_string(), shared.render(&m, &fields));
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

pub(super) async fn api_image_ids(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if authorize(&shared, &headers, &query).is_none() {
        return bad_token();
    }
    let Some(seq) = query.get("sequence_id").cloned() else {
        return bad_param("(#100) Missing parameter: sequence_id");
    };
    let users: Vec<User> = shared.lock().users.clone();
    let mut found: Vec<(i64, String)> = Vec::new();
    for user in &users {
        for p in 0..user.len {
            if let Some(m) = user.get(p)
                && m.sequence.as_deref() == Some(seq.as_str())
            {
                found.push((m.captured_at.unwrap_or(i64::MAX), m.id));
            }
        }
    }
    found.sort();
    let data: Vec<Value> = found.into_iter().map(|(_, id)| json!({"id": id})).collect();
    Json(json!({"data": data})).into_response()
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
    let body = shared.bases.body(&id, quality);
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
