//! The HTTP surface under hostile traffic, over raw TCP against the real
//! server (our accept loop, the real router, a real SQLite file; no engine):
//! idle and slowloris connections are cut at the header-read timeout, a
//! stalled body at the request timeout, 1,000 idle connections do not keep
//! `/status` from answering, 10,000 malformed requests leave the server up
//! and the database unchanged; 405 carries `Allow`, `HEAD` works where `GET`
//! does, and every answer carries the security headers. (The `/status` p99
//! under this load is a benchmark figure: `cargo bench --bench api`.)

use mapillary_downloader::api::{self, AppState, Limits};
use mapillary_downloader::store::Store;
use mld_testkit::server::ServerTask;
use reqwest::StatusCode;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    addr: SocketAddr,
    store: Arc<Store>,
    _task: ServerTask,
    _dir: tempfile::TempDir,
}

const HEADER_READ: Duration = Duration::from_millis(800);
const REQUEST: Duration = Duration::from_millis(1500);

async fn start() -> Server {
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await.unwrap());
    let state = AppState::standalone(store.clone());
    let limits = Limits {
        header_read_timeout: HEADER_READ,
        request_timeout: REQUEST,
        max_connections: 4096,
        // A thousand idle sockets from one address: the per-address cap
        // (`http_safety.rs`) would refuse most of them.
        max_connections_per_ip: 100_000,
        ..Limits::default()
    };
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

/// This test process opens over a thousand sockets.
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

/// Sends `request` raw and reads the whole answer (the server closes, or
/// `Connection: close` is in the request).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = tcp.write_all(request);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// How long until the server closes a connection we keep silent on after
/// sending `prefix`.
fn closed_after(addr: SocketAddr, prefix: &[u8]) -> (Duration, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    tcp.write_all(prefix).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    (
        start.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_slowloris_and_stalled_body_connections_are_cut() {
    let server = start().await;
    let addr = server.addr;
    // Nothing sent at all.
    let (idle, answer) = tokio::task::spawn_blocking(move || closed_after(addr, b""))
        .await
        .unwrap();
    assert!(
        idle >= HEADER_READ && idle < HEADER_READ * 3,
        "idle connection closed after {idle:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Half a request head, then a byte every 200 ms, never finishing.
    let slow = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = Instant::now();
        tcp.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        loop {
            if tcp.write_all(b"X").is_err() {
                return start.elapsed();
            }
            match tcp.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return start.elapsed(),
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "slowloris never cut"
            );
        }
    })
    .await
    .unwrap();
    assert!(slow < HEADER_READ * 3, "slowloris cut after {slow:?}");
    // A complete head, then a body that never comes: 408 at the request timeout.
    let (stalled, answer) = tokio::task::spawn_blocking(move || {
        closed_after(
            addr,
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("longer than"), "{answer}");
    assert!(stalled >= REQUEST && stalled < REQUEST * 3, "{stalled:?}");
    // Keep-alive: an idle gap after a first request is cut the same way.
    let (gap, answer) = tokio::task::spawn_blocking(move || {
        closed_after(addr, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(gap < HEADER_READ * 3, "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_idle_connections_and_a_slowloris_do_not_stop_status() {
    let server = start().await;
    let addr = server.addr;
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let slowloris = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        let _ = tcp.write_all(b"GET /status HTTP/1.1\r\n");
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            if tcp.write_all(b"X-A: b\r\n").is_err() {
                break;
            }
        }
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/status");
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let start = Instant::now();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
        slowest = slowest.max(start.elapsed());
    }
    // A correctness bound, not the latency target (the bench measures that):
    // an answer never waits behind the idle connections.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest /status {slowest:?}"
    );
    slowloris.await.unwrap();
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_malformed_requests_leave_the_server_up_and_the_database_unchanged() {
    let server = start().await;
    let addr = server.addr;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("http://{addr}/jobs"))
        .json(&json!({"username": "kept"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let before = server.store.list_jobs().await.unwrap();
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let huge_header = format!(
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let kinds: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /status HTTP/9.9\r\n\r\n".to_vec(),
        b"BREW /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"userna".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\n[1,]".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{\"username\": \"../etc\"}".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\nConnection: close\r\n\r\nzz\r\n".to_vec(),
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n{".to_vec(),
        b"GET /jobs/%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /jobs/99999999999999999999999 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /jobs/abc/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        b"DELETE /jobs/-1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
        long_path.into_bytes(),
        huge_header.into_bytes(),
    ];
    let kinds = Arc::new(kinds);
    let mut tasks = Vec::new();
    for worker in 0..50usize {
        let kinds = kinds.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut answered = 0;
            for i in 0..200usize {
                let request = &kinds[(worker * 200 + i) % kinds.len()];
                let answer = raw(addr, request);
                if answer.starts_with("HTTP/1.1 5") {
                    panic!(
                        "a server error for {:?}: {answer}",
                        String::from_utf8_lossy(&request[..request.len().min(80)])
                    );
                }
                if answer.starts_with("HTTP/1.1 4") {
                    answered += 1;
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert!(
        answered > 5000,
        "most malformed requests got a 4xx answer ({answered})"
    );
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        server.store.list_jobs().await.unwrap(),
        before,
        "the database is unchanged"
    );
}

#[tokio::test]
async fn methods_head_and_security_headers() {
    let server = start().await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let response = client.put(format!("{base}/jobs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response.headers()["allow"].to_str().unwrap().to_string();
    for method in ["GET", "HEAD", "POST"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    let response = client
        .get(format!("{base}/jobs/1/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    for path in ["/status", "/jobs", "/healthz", "/metrics"] {
        let get = client.get(format!("{base}{path}")).send().await.unwrap();
        let head = client.head(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        assert_eq!(
            head.headers()["content-type"],
            get.headers()["content-type"],
            "{path}"
        );
        for header in [
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "content-security-policy",
        ] {
            assert!(get.headers().contains_key(header), "{path} lacks {header}");
        }
        assert_eq!(get.headers()["x-content-type-options"], "nosniff");
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "{path}: HEAD has no body"
        );
    }
}
