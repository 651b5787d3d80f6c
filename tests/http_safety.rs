//! Issue 23, the HTTP surface safe by default, against the real server (our
//! accept loop, the real router, a real SQLite file; no engine): the Host
//! check without a token (DNS rebinding), the Origin / `Sec-Fetch-Site`
//! check on state changes (CSRF), the write timeout, the connection age,
//! the per-address cap, `/healthz` under a full house, 413 from the declared
//! length, and failed authentication counted.

use mapillary_downloader::api::{self, AppState, HttpLimits};
use mapillary_downloader::secret::Secret;
use mapillary_downloader::store::Store;
use mld_testkit::server::ServerTask;
use reqwest::StatusCode;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "safety-test-token-0123456789";

struct Server {
    addr: SocketAddr,
    store: Arc<Store>,
    _task: ServerTask,
    _dir: tempfile::TempDir,
}

/// What a test changes from the defaults.
#[derive(Default)]
struct Options {
    token: Option<&'static str>,
    trusted: Vec<String>,
    limits: Option<HttpLimits>,
}

async fn start(options: Options) -> Server {
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await.unwrap());
    let state = AppState {
        api_token: options.token.map(Secret::new),
        trusted_hosts: options.trusted.into(),
        ..AppState::standalone(store.clone())
    };
    let limits = options.limits.unwrap_or_default();
    let server = api::bind("127.0.0.1:0".parse().unwrap(), api::router(state), limits)
        .await
        .unwrap();
    let addr = server.local_addr;
    let task = ServerTask::spawn(addr, |stop| server.serve(stop));
    Server {
        addr,
        store,
        _task: task,
        _dir: dir,
    }
}

/// The 4,000-socket test holds 8,000 descriptors (both ends) in this process.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(1 << 16);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Sends `request` raw (it must say `Connection: close`) and reads the
/// whole answer.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = tcp.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

async fn raw_async(addr: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || raw(addr, &request))
        .await
        .unwrap()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

fn post(path: &str, host: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

async fn create_job(server: &Server) -> i64 {
    let response = reqwest::Client::new()
        .post(format!("http://{}/jobs", server.addr))
        .bearer_auth(TOKEN)
        .json(&json!({"username": "kept"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_foreign_host_is_refused_but_healthz_answers_any_host() {
    let server = start(Options {
        trusted: vec!["nas.lan".into()],
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let port = addr.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "127.0.0.1.evil.example".into(),
        "localhost.evil.example".into(),
        "10.0.0.1".into(),
    ] {
        for path in ["/status", "/jobs", "/", "/assets/app.js", "/metrics"] {
            let answer = raw_async(addr, get(path, &host, "")).await;
            assert_eq!(status_of(&answer), 403, "{host} {path}: {answer}");
            assert!(answer.contains("Host"), "{answer}");
        }
        let answer = raw_async(
            addr,
            "POST /jobs HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"username\":\"evil\"}\n"
                .replace("HOST", &host),
        )
        .await;
        assert_eq!(status_of(&answer), 403, "{answer}");
        let answer = raw_async(addr, get("/healthz", &host, "")).await;
        assert_eq!(status_of(&answer), 200, "/healthz for {host}: {answer}");
    }
    assert!(server.store.list_jobs().await.unwrap().is_empty());
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
        format!("[::1]:{port}"),
        "nas.lan".into(),
        format!("NAS.lan:{port}"),
    ] {
        let answer = raw_async(addr, get("/status", &host, "")).await;
        assert_eq!(status_of(&answer), 200, "{host}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_any_host_is_accepted() {
    let server = start(Options {
        token: Some(TOKEN),
        ..Default::default()
    })
    .await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let answer = raw_async(server.addr, get("/status", "evil.example", &auth)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw_async(server.addr, get("/status", "daemon.example:443", "")).await;
    assert_eq!(
        status_of(&answer),
        401,
        "the token is still needed: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_state_change_is_refused_and_changes_nothing() {
    for token in [None, Some(TOKEN)] {
        let server = start(Options {
            token,
            ..Default::default()
        })
        .await;
        let addr = server.addr;
        let host = addr.to_string();
        let id = create_job(&server).await;
        let before = server.store.list_jobs().await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let pause = format!("/jobs/{id}/pause");
        for (what, headers) in [
            (
                "a foreign Origin",
                "Origin: http://evil.example\r\nContent-Type: text/plain\r\n".to_string(),
            ),
            (
                "the same host on another port",
                format!("Origin: http://127.0.0.1:{}\r\n", addr.port() + 1),
            ),
            ("an opaque Origin", "Origin: null\r\n".into()),
            (
                "Sec-Fetch-Site: cross-site",
                "Sec-Fetch-Site: cross-site\r\n".into(),
            ),
        ] {
            for path in [
                pause.as_str(),
                &format!("/jobs/{id}/retry"),
                &format!("/jobs/{id}/resume"),
            ] {
                let answer = raw_async(addr, post(path, &host, &format!("{auth}{headers}"))).await;
                assert_eq!(
                    status_of(&answer),
                    403,
                    "{what} {path} (token {token:?}): {answer}"
                );
                assert!(answer.contains("cross-site"), "{answer}");
            }
            let delete = format!(
                "DELETE /jobs/{id} HTTP/1.1\r\nHost: {host}\r\n{auth}{headers}Connection: close\r\n\r\n"
            );
            assert_eq!(
                status_of(&raw_async(addr, delete).await),
                403,
                "{what}: DELETE"
            );
        }
        assert_eq!(
            server.store.list_jobs().await.unwrap(),
            before,
            "a refused request changes nothing"
        );
        // The page's own requests (same origin) and curl's (no Origin) pass.
        let same_origin = format!("Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n");
        let answer = raw_async(addr, post(&pause, &host, &format!("{auth}{same_origin}"))).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        let answer = raw_async(addr, post(&format!("/jobs/{id}/resume"), &host, &auth)).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        // Reading cross-site is not a state change (the browser keeps the answer from the page).
        let answer = raw_async(
            addr,
            get(
                "/status",
                &host,
                &format!("{auth}Origin: http://evil.example\r\n"),
            ),
        )
        .await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_at_once() {
    let server = start(Options::default()).await;
    let addr = server.addr;
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"username\":",
        )
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tcp.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(server.store.list_jobs().await.unwrap().is_empty());
    // Within the limit it is read as usual.
    let answer = raw_async(
        addr,
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"username\":\"fine\"}\n".into(),
    )
    .await;
    assert_eq!(status_of(&answer), 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_counted() {
    let server = start(Options {
        token: Some(TOKEN),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    for wrong in [None, Some("wrong-token-0123456789"), Some("x")] {
        let mut request = client.get(format!("{base}/status"));
        if let Some(wrong) = wrong {
            request = request.bearer_auth(wrong);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let text = client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE mapillary_http_auth_failures_total counter"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "mapillary_http_auth_failures_total 3"),
        "{}",
        text.lines()
            .filter(|l| l.contains("auth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A client that pipelines requests and never reads the answers: once the
/// kernel's buffers are full, the server's write makes no progress and the
/// connection must be cut within the write timeout (+ 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_within_the_write_timeout() {
    let write_timeout = Duration::from_secs(2);
    let server = start(Options {
        limits: Some(HttpLimits {
            write_timeout,
            ..HttpLimits::default()
        }),
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let (cut_after, sent) = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let request = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(50);
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut sent = 0usize;
        loop {
            match tcp.write(&request) {
                Ok(n) => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // Reset or broken pipe: the server closed the connection.
                Err(_) => return (last_progress.elapsed(), sent),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the connection was never cut ({sent} bytes of requests sent)"
            );
        }
    })
    .await
    .unwrap();
    assert!(sent > 0);
    assert!(
        cut_after < write_timeout + Duration::from_secs(5),
        "cut {cut_after:?} after the server stopped reading"
    );
    // The server still serves everyone else.
    let answer = raw_async(addr, get("/healthz", "127.0.0.1", "")).await;
    assert_eq!(status_of(&answer), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_at_its_age_after_its_request() {
    let server = start(Options {
        limits: Some(HttpLimits {
            max_connection_age: Duration::from_secs(1),
            ..HttpLimits::default()
        }),
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let (lived, answered) = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut answered = 0;
        let mut buf = vec![0u8; 65536];
        while started.elapsed() < Duration::from_secs(10) {
            if tcp
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .is_err()
            {
                break;
            }
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                    answered += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (started.elapsed(), answered)
    })
    .await
    .unwrap();
    assert!(answered >= 5, "{answered} answers before the close");
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(3),
        "a keep-alive connection lived {lived:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let server = start(Options {
        limits: Some(HttpLimits {
            max_connections_per_ip: 4,
            ..HttpLimits::default()
        }),
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_async(addr, get("/healthz", "127.0.0.1", "")).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_async(addr, get("/healthz", "127.0.0.1", "")).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

/// Every slot held by idle sockets (the kind anyone who reaches the port
/// can open; 4,000 of them for 2,048 slots, the rest waiting in the
/// kernel's queue): `/healthz` still answers within 1 s, as a container
/// probe needs, because the longest-idle connections are closed to make
/// room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_a_second_while_4000_idle_sockets_hold_every_slot() {
    let server = start(Options {
        limits: Some(HttpLimits {
            max_connections: 2048,
            max_connections_per_ip: 100_000,
            ..HttpLimits::default()
        }),
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let connects = (0..4000).map(|_| {
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
    });
    let idle: Vec<tokio::net::TcpStream> = futures_util::future::join_all(connects)
        .await
        .into_iter()
        .filter_map(|c| c.ok().and_then(Result::ok))
        .collect();
    assert!(idle.len() >= 2048, "only {} idle sockets", idle.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            raw_async(addr, get("/healthz", "127.0.0.1", "")),
        )
        .await
        .expect("no answer within 5 s");
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz took {:?}",
            started.elapsed()
        );
    }
    drop(idle);
}

/// Usernames match `[A-Za-z0-9_.-]{1,64}`: a direction override, fullwidth
/// letters or URL syntax is refused with 422 and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_outside_the_rule_are_refused() {
    let server = start(Options::default()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/jobs", server.addr);
    let long = "a".repeat(65);
    for bad in [
        "a\u{202e}b",
        "ａlice",
        "a?b",
        "a#b",
        "a%2F",
        "a b",
        "..",
        &long,
    ] {
        let response = client
            .post(&url)
            .json(&json!({"username": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad:?}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("username"),
            "{body}"
        );
    }
    assert!(server.store.list_jobs().await.unwrap().is_empty());
    for good in ["Alice_B.c-9", &"z".repeat(64)] {
        let response = client
            .post(&url)
            .json(&json!({"username": good}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{good:?}");
    }
}
