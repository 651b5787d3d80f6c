//! `GET /images` and `GET /image_ids`: which images a listing walks (a user,
//! an organization's members, or every user for a search), the documented
//! filters (applied or silently ignored, see [`FilterMode`]), paging with
//! cursors and `next`, the one-page cap of bbox searches, and the id lists
//! of sequences.
//!
//! A cursor is a position in the listing's images before filtering: the
//! source's users' images back to back, each user's in its listing order.

use super::gate::{Overlap, bad_param, bad_token};
use super::handlers::{authorize, fields_of};
use super::*;
use std::collections::HashSet;

/// How far past a listing's end the looping `next` points.
const LOOP_GAP: usize = 7;

/// The request parameters a `next` link carries forward, in this order
/// (then `limit`, `after` and, when due, the token).
const CARRIED: [&str; 8] = [
    "creator_username",
    "organization_id",
    "fields",
    "bbox",
    "start_captured_at",
    "end_captured_at",
    "is_pano",
    "sequence_ids",
];

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

/// An ISO 8601 instant as the API takes it: RFC 3339 (`2024-01-01T00:00:00Z`,
/// with or without fractions, any offset) or a date (`2024-01-01`, midnight
/// UTC), in milliseconds since the epoch.
pub(super) fn parse_instant(raw: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw.trim()) {
        return Some(t.timestamp_millis());
    }
    let date = chrono::NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// The documented filters of one `/images` request.
#[derive(Debug, Default)]
pub(super) struct Filters {
    bbox: Option<[f64; 4]>,
    /// Inclusive, in ms.
    start: Option<i64>,
    /// Exclusive, in ms.
    end: Option<i64>,
    pano: Option<bool>,
    sequences: Option<HashSet<String>>,
}

impl Filters {
    /// Every filter of `query`, or the message of the HTTP 400 code 100 a
    /// malformed one gets (whatever the filter mode: a server that ignores a
    /// filter still parses it).
    pub(super) fn parse(query: &HashMap<String, String>) -> Result<Filters, String> {
        let mut f = Filters::default();
        if let Some(raw) = query.get("bbox") {
            f.bbox =
                Some(parse_bbox(raw).ok_or("(#100) bbox must be minLon,minLat,maxLon,maxLat")?);
        }
        for (key, slot) in [
            ("start_captured_at", &mut f.start),
            ("end_captured_at", &mut f.end),
        ] {
            if let Some(raw) = query.get(key) {
                *slot = Some(
                    parse_instant(raw)
                        .ok_or_else(|| format!("(#100) {key} must be an ISO 8601 date-time"))?,
                );
            }
        }
        f.pano = match query.get("is_pano").map(String::as_str) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err("(#100) is_pano must be true or false".into()),
        };
        if let Some(raw) = query.get("sequence_ids") {
            let ids: HashSet<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if ids.is_empty() {
                return Err("(#100) sequence_ids must list sequence ids".into());
            }
            f.sequences = Some(ids);
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.bbox.is_none()
            && self.start.is_none()
            && self.end.is_none()
            && self.pano.is_none()
            && self.sequences.is_none()
    }

    /// Whether `m` passes every filter. An image without `captured_at` never
    /// passes a date filter, one without `is_pano` never an `is_pano` one.
    fn matches(&self, m: &FakeImage) -> bool {
        let dated = |bound: Option<i64>, ok: fn(i64, i64) -> bool| {
            bound.is_none_or(|b| m.captured_at.is_some_and(|t| ok(t, b)))
        };
        self.bbox.is_none_or(|b| in_bbox(m, &b))
            && dated(self.start, |t, b| t >= b)
            && dated(self.end, |t, b| t < b)
            && self.pano.is_none_or(|p| m.is_pano == Some(p))
            && self
                .sequences
                .as_ref()
                .is_none_or(|set| m.sequence.as_deref().is_some_and(|seq| set.contains(seq)))
    }
}

/// The images a listing walks: its users' images back to back.
struct Listing {
    users: Vec<User>,
    len: usize,
}

impl Listing {
    fn new(users: Vec<User>) -> Listing {
        let len = users.iter().map(|u| u.len).sum();
        Listing { users, len }
    }

    fn get(&self, mut pos: usize) -> Option<FakeImage> {
        for user in &self.users {
            if pos < user.len {
                return user.get(pos);
            }
            pos -= user.len;
        }
        None
    }
}

/// The users a request lists, or `None` for an empty `{"data": []}`:
/// `organization_id` gives its members (only `creator_username` if given and
/// a member), else `creator_username` gives that user, else a request with
/// any filter searches every user; an unknown user or organization, or no
/// source and no filter, gives `None`.
fn source(s: &State_, query: &HashMap<String, String>, filters: &Filters) -> Option<Vec<User>> {
    let user = |name: &String| s.by_name.get(name).map(|&i| s.users[i].clone());
    match (query.get("organization_id"), query.get("creator_username")) {
        (Some(org), creator) => {
            let members = s.orgs.get(org)?;
            match creator {
                Some(name) if members.contains(name) => user(name).map(|u| vec![u]),
                Some(_) => None,
                None => Some(members.iter().filter_map(user).collect()),
            }
        }
        (None, Some(name)) => user(name).map(|u| vec![u]),
        (None, None) if !filters.is_empty() => Some(s.users.clone()),
        (None, None) => None,
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
    let filters = match Filters::parse(&query) {
        Ok(f) => f,
        Err(message) => return bad_param(&message),
    };
    let mut start = match query.get("after") {
        None => 0,
        Some(c) => match decode_cursor(c) {
            Some(p) => p,
            None => return bad_param("(#100) Invalid cursor"),
        },
    };
    let fields = fields_of(&query);
    let (users, mode, cap, deleted, looping, token_in_next, empty_first, unreadable) = {
        let s = shared.lock();
        (
            source(&s, &query, &filters),
            s.filters,
            s.cap_bbox,
            s.deleted.clone(),
            s.looping_next,
            s.token_in_next,
            s.empty_pages_first,
            s.unreadable_in_listings.clone(),
        )
    };
    // Empty pages before the data: `empty=k` counts them, each `next` distinct.
    let empty_served = query.get("empty").and_then(|k| k.parse::<u32>().ok());
    if !query.contains_key("after") && empty_served.unwrap_or(0) < empty_first {
        let mut next = shared.api_url.join("images").expect("images URL");
        {
            let mut q = next.query_pairs_mut();
            for (key, value) in &query {
                if key != "empty" && key != "access_token" {
                    q.append_pair(key, value);
                }
            }
            q.append_pair("empty", &(empty_served.unwrap_or(0) + 1).to_string());
        }
        return Json(json!({"data": [], "paging": {"next": next.as_str()}})).into_response();
    }
    let Some(users) = users else {
        return Json(json!({"data": []})).into_response();
    };
    let listing = Listing::new(users);
    let len = listing.len;
    // The real API's cap: a bbox search is one page, whatever the mode.
    let capped = cap && query.contains_key("bbox");
    let applied = match mode {
        FilterMode::Honour => filters,
        FilterMode::Ignore => Filters::default(),
    };
    let matches = |m: &FakeImage| !deleted.contains(&m.id) && applied.matches(m);
    let overlap = req.extensions().get::<Overlap>().is_some();
    if overlap && start > 0 {
        let mut back = 0;
        while start > 0 && back < OVERLAP {
            start -= 1;
            if listing.get(start).is_some_and(|m| matches(&m)) {
                back += 1;
            }
        }
    }
    let mut data = Vec::new();
    let mut pos = start;
    while pos < len && data.len() < limit {
        if let Some(m) = listing.get(pos)
            && matches(&m)
        {
            let mut item = shared.render(&m, &fields);
            if unreadable.contains(&m.id) {
                item["captured_at"] = json!({"unexpected": "object"});
            }
            data.push(item);
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
    let after_end = looping.then(|| if start > len { start } else { len + LOOP_GAP });
    if !capped && (pos < len || after_end.is_some()) {
        let after = if pos < len {
            pos
        } else {
            after_end.unwrap_or(pos)
        };
        let mut next = shared.api_url.join("images").expect("images URL");
        {
            let mut q = next.query_pairs_mut();
            for key in CARRIED {
                if let Some(v) = query.get(key) {
                    q.append_pair(key, v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            q.append_pair("after", &encode_cursor(after));
            if query.contains_key("access_token") || token_in_next {
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
        // The last page (or a capped one): vary the shape as the API does.
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

/// `GET /image_ids?sequence_id=S`: the ids of the sequence's images of every
/// user, in capture order (images without a capture time last), deleted
/// ones left out; an unknown sequence gives `data: []`.
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
    let mut found: Vec<(i64, String)> = {
        let mut s = shared.lock();
        if s.sequence_index.is_none() {
            let mut index: HashMap<String, Vec<(i64, String)>> = HashMap::new();
            for user in &s.users {
                for p in 0..user.len {
                    if let Some(m) = user.get(p)
                        && let Some(sequence) = m.sequence.clone()
                    {
                        index
                            .entry(sequence)
                            .or_default()
                            .push((m.captured_at.unwrap_or(i64::MAX), m.id));
                    }
                }
            }
            s.sequence_index = Some(index);
        }
        let index = s.sequence_index.as_ref().expect("just built");
        let images = index.get(&seq).cloned().unwrap_or_default();
        images
            .into_iter()
            .filter(|(_, id)| !s.deleted.contains(id))
            .collect()
    };
    found.sort();
    let data: Vec<Value> = found.into_iter().map(|(_, id)| json!({"id": id})).collect();
    Json(json!({"data": data})).into_response()
}
