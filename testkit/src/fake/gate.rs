//! The layer in front of every route of the fake: scripted and random
//! faults, latency, and the request log.

use super::*;

/// The fault for one request: aimed at its image, else scripted for its
/// route, else drawn at random. `listing` says whether it is a `/images` or
/// `/image_ids` request, the only ones a query timeout can hit.
pub(super) fn pick_fault(
    s: &mut State_,
    route: Route,
    image: Option<&str>,
    listing: bool,
) -> Option<Fault> {
    // Counted whatever the answer, so a test sees every request made.
    let nth = match image {
        Some(id) if route == Route::Cdn => {
            let seen = s.cdn_requests_by_image.entry(id.to_string()).or_insert(0);
            *seen += 1;
            *seen
        }
        _ => 0,
    };
    if let Some(aimed) = image.and_then(|id| s.image_faults.get_mut(id))
        && let Some(f) = aimed.script.pop_front().or_else(|| aimed.always.clone())
    {
        return (f != Fault::Pass).then_some(f);
    }
    if let Some(id) = image
        && s.halfway
            .is_some_and(|h| nth <= h.requests && h.chooses(id))
    {
        return Some(Fault::Stall);
    }
    let scripted = match route {
        // A scripted query timeout waits for a listing request.
        Route::Api if !listing && s.api_script.front() == Some(&Fault::QueryTimeout) => None,
        Route::Api => s.api_script.pop_front(),
        Route::Cdn => s.cdn_script.pop_front(),
    };
    if let Some(f) = scripted {
        return (f != Fault::Pass).then_some(f);
    }
    let f = s.faults;
    let table: Vec<(f64, Fault)> = match route {
        Route::Api => vec![
            (f.api_reset, Fault::Reset),
            (f.api_5xx_html, Fault::Status503Html),
            (
                f.api_429_retry_after,
                Fault::RateLimit {
                    retry_after: Some(1),
                },
            ),
            (f.api_429_plain, Fault::RateLimit { retry_after: None }),
            (f.api_code4_400, Fault::RateLimitCode4),
            (f.api_invalid_json, Fault::InvalidJson),
            (f.api_truncated, Fault::Truncated),
            (
                f.api_403_code4,
                Fault::Graph {
                    status: 403,
                    code: 4,
                    retry_after: None,
                },
            ),
            (f.api_rate_codes, rate_code(&mut s.rng)),
            (f.api_5xx_json, Fault::Status500Json),
            (
                if listing { f.api_query_timeout } else { 0.0 },
                Fault::QueryTimeout,
            ),
            (f.overlapping_pages, Fault::OverlapPage),
        ],
        Route::Cdn => vec![
            (f.cdn_reset, Fault::Reset),
            (f.cdn_5xx, Fault::Status503Html),
            (f.cdn_truncated, Fault::Truncated),
            (f.cdn_html_200, Fault::Html200),
            (f.cdn_stall, Fault::Stall),
            (
                f.cdn_429,
                Fault::RateLimit {
                    retry_after: Some(1),
                },
            ),
            (f.cdn_redirect, Fault::Redirect),
            (f.cdn_chunked, Fault::Chunked),
        ],
    };
    table
        .into_iter()
        .find(|(p, _)| *p > 0.0 && s.rng.random_bool(p.clamp(0.0, 1.0)))
        .map(|(_, fault)| fault)
}

/// One of the rate-limit codes that come without a 429: 17, 32 or 613.
fn rate_code(rng: &mut StdRng) -> Fault {
    let code = [17, 32, 613][rng.random_range(0..3)];
    Fault::Graph {
        status: 400,
        code,
        retry_after: None,
    }
}

pub(super) fn graph_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "fbtrace_id": "AfakeTRACEid0123"}});
    (status, Json(body)).into_response()
}

/// HTTP 500 with the Graph error a slow search answers.
pub(super) fn query_timeout() -> Response {
    let body = json!({"error": {"message": "Query Timeout", "type": "OAuthException", "code": -2,
        "error_subcode": 3_404_014, "is_transient": false, "fbtrace_id": "AfakeTRACEid0123"}});
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

pub(super) fn bad_token() -> Response {
    graph_error(
        StatusCode::UNAUTHORIZED,
        190,
        "Invalid OAuth access token - Cannot parse access token",
    )
}

pub(super) fn bad_param(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, 100, message)
}

pub(super) fn html(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

pub(super) fn fault_response(route: Route, fault: &Fault) -> Response {
    match fault {
        Fault::Status500Html => html(StatusCode::INTERNAL_SERVER_ERROR, HTML_5XX),
        Fault::Status503Html => html(StatusCode::SERVICE_UNAVAILABLE, HTML_5XX),
        Fault::RateLimit { retry_after } => {
            let mut r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                4,
                "(#4) Application request limit reached",
            );
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            r
        }
        Fault::RateLimitCode4 => graph_error(
            StatusCode::BAD_REQUEST,
            4,
            "(#4) Application request limit reached",
        ),
        Fault::BadToken => bad_token(),
        Fault::BadParam => bad_param("(#100) Invalid parameter"),
        Fault::InvalidJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"data\":[{\"id\":\"1\",,}<html>",
        )
            .into_response(),
        Fault::Html200 => html(StatusCode::OK, HTML_200),
        Fault::Graph {
            status,
            code,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = graph_error(status, *code, &format!("(#{code}) fake error"));
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            r
        }
        Fault::Status500Json => {
            let body = json!({"error": {"message": "An unknown error occurred", "type": "OAuthException",
                "code": 1, "error_subcode": 99, "is_transient": true, "fbtrace_id": "AfakeTRACEid0123"}});
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
        Fault::QueryTimeout => query_timeout(),
        Fault::Expired => text(StatusCode::FORBIDDEN, "URL signature expired"),
        Fault::Gone => text(StatusCode::GONE, "Gone"),
        Fault::NotFound if route == Route::Api => {
            graph_error(StatusCode::NOT_FOUND, 803, "Not found")
        }
        Fault::NotFound => text(StatusCode::NOT_FOUND, "Not Found"),
        Fault::Pass
        | Fault::Truncated
        | Fault::Reset
        | Fault::OverlapPage
        | Fault::Stall
        | Fault::Redirect
        | Fault::Chunked => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fake: unreachable fault response",
        ),
    }
}

/// Re-sends `response` with its full Content-Length but only half its bytes,
/// then breaks the connection.
pub(super) async fn truncate(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let full = bytes.len().max(2);
    let half = bytes.slice(..bytes.len() / 2);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "fake: truncated on purpose",
        )),
    ];
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    Response::from_parts(parts, Body::from_stream(futures_util::stream::iter(chunks)))
}

/// Re-sends `response` with its full Content-Length, its first half, and
/// then nothing, keeping the connection open: a stalled transfer.
pub(super) async fn stall(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let full = bytes.len().max(2);
    let half = bytes.slice(..bytes.len() / 2);
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]);
    let silence = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    Response::from_parts(
        parts,
        Body::from_stream(futures_util::StreamExt::chain(first, silence)),
    )
}

/// Re-sends `response` as a stream of small chunks with no Content-Length.
pub(super) async fn chunked(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(4096)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(futures_util::stream::iter(chunks)))
}

/// The image a CDN response carried in full, for `cdn_hits`.
#[derive(Clone)]
pub(super) struct ServedImage(pub(super) String);

/// The page handler should overlap the previous page.
#[derive(Clone)]
pub(super) struct Overlap;

pub(super) async fn api_gate(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    gate(Route::Api, shared, req, next).await
}

pub(super) async fn cdn_gate(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    gate(Route::Cdn, shared, req, next).await
}

pub(super) async fn gate(
    route: Route,
    shared: Arc<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // Every header, for the token check: it may not hide in any of them.
    let all_headers: String = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let range = req
        .headers()
        .get(header::RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.clone());
    let image_id = match route {
        Route::Cdn => cdn_path_id(&path),
        Route::Api => None,
    };
    let started = Instant::now();
    let listing = route == Route::Api && (path == "/images" || path == "/image_ids");
    let (fault, delay) = {
        let mut s = shared.lock();
        if route == Route::Api {
            *s.api_paths.entry(path.clone()).or_insert(0) += 1;
            if path == "/images" {
                let limit = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "limit")
                    .map(|(_, v)| v.parse::<usize>().ok());
                // No `limit` asks for the default; an unparseable one is left out.
                if let Some(limit) = limit.unwrap_or(Some(MAX_LIMIT)) {
                    s.images_limits.push(limit);
                }
            }
        }
        if s.started.len() >= s.log_capacity.max(1) {
            s.started.pop_front();
        }
        s.started.push_back(StartRecord {
            route,
            method: method.clone(),
            path: path.clone(),
            image_id: image_id.clone(),
            at: started,
        });
        let fault = pick_fault(&mut s, route, image_id.as_deref(), listing);
        let delay = match route {
            Route::Api => s.api_latency,
            Route::Cdn => {
                let jitter = s.cdn_latency_jitter.as_micros() as u64;
                let extra = if jitter > 0 {
                    s.rng.random_range(0..=jitter)
                } else {
                    0
                };
                s.cdn_latency + Duration::from_micros(extra)
            }
        };
        (fault, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (response, status) = match &fault {
        None | Some(Fault::Pass) => {
            let r = next.run(req).await;
            let st = r.status().as_u16();
            (r, st)
        }
        Some(Fault::OverlapPage) => {
            req.extensions_mut().insert(Overlap);
            let r = next.run(req).await;
            let st = r.status().as_u16();
            (r, st)
        }
        Some(Fault::Truncated) => {
            let r = truncate(next.run(req).await).await;
            let st = r.status().as_u16();
            (r, st)
        }
        Some(Fault::Stall) => {
            let r = stall(next.run(req).await).await;
            let st = r.status().as_u16();
            (r, st)
        }
        Some(Fault::Chunked) => {
            let r = chunked(next.run(req).await).await;
            let st = r.status().as_u16();
            (r, st)
        }
        Some(Fault::Redirect) => {
            let separator = if query.is_empty() { "" } else { "&" };
            let location = format!("{path}?{query}{separator}fake_redirected=1");
            let r = (
                StatusCode::FOUND,
                [(header::LOCATION, location)],
                "redirected",
            )
                .into_response();
            (r, 302)
        }
        Some(Fault::Reset) => {
            if let Some(c) = &conn {
                c.kill();
            }
            (text(StatusCode::INTERNAL_SERVER_ERROR, "reset"), 0)
        }
        Some(other) => {
            let r = fault_response(route, other);
            let st = r.status().as_u16();
            (r, st)
        }
    };
    let served = response
        .extensions()
        .get::<ServedImage>()
        .map(|s| s.0.clone());
    let mut s = shared.lock();
    let now = Instant::now();
    match route {
        Route::Api => s.api_times.push(now),
        Route::Cdn => {
            s.cdn_total += 1;
            let token = s.token.clone();
            if authorization.is_some()
                || query.to_ascii_lowercase().contains("access_token")
                || [&path, &query, &all_headers]
                    .iter()
                    .any(|text| mentions_token(text, &token))
            {
                s.token_on_cdn = true;
            }
            // A chunked body is the whole image too.
            if matches!(fault, None | Some(Fault::Chunked))
                && let Some(id) = served
            {
                *s.cdn_full.entry(id).or_insert(0) += 1;
            }
        }
    }
    if s.log.len() >= s.log_capacity.max(1) {
        s.log.pop_front();
    }
    s.log.push_back(RequestRecord {
        route,
        method,
        path,
        query: query.chars().take(2048).collect(),
        authorization,
        range,
        status,
        image_id,
        fault: fault.as_ref().map(Fault::name),
        started,
        at: now,
    });
    response
}

/// Whether `text` carries `token`: whole or its secret part (after the last
/// `|`), raw or percent-encoded.
pub fn mentions_token(text: &str, token: &str) -> bool {
    let secret = token.rsplit('|').next().unwrap_or(token);
    if secret.is_empty() {
        return false;
    }
    let decoded: String = url::form_urlencoded::parse(text.replace('&', "%26").as_bytes())
        .map(|(k, v)| format!("{k}{v}"))
        .collect();
    text.contains(secret) || decoded.contains(secret)
}

pub(super) fn cdn_path_id(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/img/")?;
    let (id, _) = rest.rsplit_once('/')?;
    url::form_urlencoded::parse(format!("x={id}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}
