//! A proxy in front of the S3 server that checks every request's AWS
//! Signature Version 4 (header or presigned query) against the test
//! credentials, and that each signed body's `x-amz-content-sha256` is the
//! body's hash (a PUT or UploadPart must sign its payload). moto checks no
//! signature; this is what proves the daemon's client signs correctly. A
//! request that fails is answered `403 SignatureDoesNotMatch` and counted.

use crate::s3::{ACCESS_KEY, SECRET_KEY};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests whose signature checked out.
    pub signed: AtomicUsize,
    /// Bodies whose `x-amz-content-sha256` matched their bytes.
    pub payloads: AtomicUsize,
    /// Requests refused, and why (the first few).
    pub refused: AtomicUsize,
    pub reasons: std::sync::Mutex<Vec<String>>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    counts: Arc<Counts>,
}

/// A running checking proxy; stops on drop.
pub struct SigV4Proxy {
    pub endpoint: String,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl SigV4Proxy {
    pub async fn start(upstream: &str) -> SigV4Proxy {
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            counts: counts.clone(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared)
            .layer(axum::extract::DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SigV4Proxy {
            endpoint,
            counts,
            task,
        }
    }

    pub fn signed(&self) -> usize {
        self.counts.signed.load(Ordering::SeqCst)
    }

    pub fn payloads(&self) -> usize {
        self.counts.payloads.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> Vec<String> {
        self.counts.reasons.lock().unwrap().clone()
    }
}

impl Drop for SigV4Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    if let Err(reason) = check(&parts.method, &path, &query, &parts.headers, &body) {
        let counts = &shared.counts;
        counts.refused.fetch_add(1, Ordering::SeqCst);
        let mut reasons = counts.reasons.lock().unwrap();
        if reasons.len() < 20 {
            reasons.push(format!("{} {path}?{query}: {reason}", parts.method));
        }
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code>\
                   <Message>The request signature we calculated does not match the signature you provided.</Message></Error>";
        return (StatusCode::FORBIDDEN, xml).into_response();
    }
    shared.counts.signed.fetch_add(1, Ordering::SeqCst);
    if !body.is_empty() {
        shared.counts.payloads.fetch_add(1, Ordering::SeqCst);
    }
    let url = match query.is_empty() {
        true => format!("{}{path}", shared.upstream),
        false => format!("{}{path}?{query}", shared.upstream),
    };
    let mut outgoing = shared.http.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "transfer-encoding" | "connection") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}

/// The unreserved characters SigV4 leaves as they are.
fn aws_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        let plain = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && byte == b'/');
        if plain {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut h = Sha256::new();
    h.update(&inner);
    h.update(data);
    let first = h.finalize();
    let mut h = Sha256::new();
    h.update(&outer);
    h.update(first);
    h.finalize().to_vec()
}

/// The signature parts of a request, from its header or its query.
struct Signed {
    credential: String,
    signed_headers: String,
    signature: String,
    amz_date: String,
    payload: String,
    presigned: bool,
}

fn signed_parts(
    query: &BTreeMap<String, Vec<String>>,
    headers: &HeaderMap,
) -> Result<Signed, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let q = |name: &str| query.get(name).and_then(|v| v.first()).cloned();
    if let Some(signature) = q("X-Amz-Signature") {
        if q("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
            return Err("presigned without AWS4-HMAC-SHA256".into());
        }
        return Ok(Signed {
            credential: q("X-Amz-Credential").ok_or("no X-Amz-Credential")?,
            signed_headers: q("X-Amz-SignedHeaders").ok_or("no X-Amz-SignedHeaders")?,
            signature,
            amz_date: q("X-Amz-Date").ok_or("no X-Amz-Date")?,
            payload: "UNSIGNED-PAYLOAD".into(),
            presigned: true,
        });
    }
    let auth = header("authorization").ok_or("no Authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut fields = BTreeMap::new();
    for part in rest.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    let field = |k: &str| fields.get(k).cloned().ok_or(format!("no {k}"));
    Ok(Signed {
        credential: field("Credential")?,
        signed_headers: field("SignedHeaders")?,
        signature: field("Signature")?,
        amz_date: header("x-amz-date").ok_or("no x-amz-date")?,
        payload: header("x-amz-content-sha256").ok_or("no x-amz-content-sha256")?,
        presigned: false,
    })
}

/// Checks the signature of one request, and its payload hash.
fn check(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(), String> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.entry(decode(k)).or_default().push(decode(v));
    }
    let signed = signed_parts(&params, headers)?;
    let scope: Vec<&str> = signed.credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("credential {}", signed.credential));
    };
    if key != ACCESS_KEY || service != "s3" {
        return Err(format!("credential {}", signed.credential));
    }
    // The payload: signed bodies must carry their own hash.
    let body_hash = hex(&Sha256::digest(body));
    let uploads = *method == Method::PUT || (*method == Method::POST && !body.is_empty());
    if signed.payload == "UNSIGNED-PAYLOAD" {
        if uploads && !signed.presigned {
            return Err("an upload with an unsigned payload".into());
        }
    } else if signed.payload != body_hash {
        return Err(format!(
            "x-amz-content-sha256 {} but the body hashes to {body_hash}",
            signed.payload
        ));
    }
    let canonical = canonical_request(method, path, &params, headers, &signed)?;
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{date}/{region}/s3/aws4_request\n{}",
        signed.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let expected = hex(&hmac(&k, to_sign.as_bytes()));
    if expected != signed.signature {
        return Err(format!(
            "signature mismatch; canonical request:\n{canonical}"
        ));
    }
    Ok(())
}

/// The canonical request SigV4 signs (S3 flavour: the path encoded once).
fn canonical_request(
    method: &Method,
    path: &str,
    params: &BTreeMap<String, Vec<String>>,
    headers: &HeaderMap,
    signed: &Signed,
) -> Result<String, String> {
    let mut canonical_query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "X-Amz-Signature")
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| (aws_encode(k, false), aws_encode(v, false)))
        })
        .collect();
    canonical_query.sort();
    let canonical_query: Vec<String> = canonical_query
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut canonical_headers = String::new();
    for name in signed.signed_headers.split(';') {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} missing"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        aws_encode(&decode(path), true),
        canonical_query.join("&"),
        signed.signed_headers,
        signed.payload
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
