//! The real server on 127.0.0.1: HTTP over TCP, disconnect → cancel, drain on
//! shutdown, header read timeout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pdserve_gateway::{serve_on, GatewayConfig, ServingBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(b: &Arc<FakeBackend>, config: GatewayConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let backend: Arc<dyn ServingBackend> = b.clone();
    let task = tokio::spawn(serve_on(listener, config, backend, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one request on a fresh connection and reads the response to EOF (≤ 10 s).
async fn roundtrip(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until `needle` has been seen (≤ 5 s).
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = end.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before {needle:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_http_over_tcp() {
    let b = FakeBackend::words();
    let srv = start(&b, GatewayConfig::default()).await;
    let r = roundtrip(srv.addr, &request("GET", "/live", "")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = roundtrip(
        srv.addr,
        &request(
            "POST",
            "/v1/chat/completions",
            &chat_body(r#","max_tokens":2"#),
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(r#""content":"model the""#), "{r}");
    let r = roundtrip(
        srv.addr,
        &request(
            "POST",
            "/v1/chat/completions",
            &chat_body(r#","max_tokens":2,"stream":true"#),
        ),
    )
    .await;
    assert!(r.contains("text/event-stream"), "{r}");
    // Chunked: the last chunk is [DONE], then the terminating empty chunk.
    assert!(r.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{r}");
    srv.task.abort();
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_within_100ms() {
    let b = FakeBackend::new(Script::Hang { tokens: 1 });
    let srv = start(&b, GatewayConfig::default()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let raw = request(
        "POST",
        "/v1/chat/completions",
        &chat_body(r#","stream":true"#),
    );
    s.write_all(raw.as_bytes()).await.expect("write");
    read_until(&mut s, "model").await;
    let id = b.submitted()[0].id;
    assert!(b.cancelled().is_empty());
    drop(s);
    let t0 = Instant::now();
    assert!(
        b.wait_cancelled(id, Duration::from_millis(100)).await,
        "not cancelled within 100 ms"
    );
    assert!(t0.elapsed() <= Duration::from_millis(150));
    srv.task.abort();
}

#[tokio::test]
async fn shutdown_drains_in_flight_then_returns() {
    let b = FakeBackend::new(Script::Words {
        stop_after: None,
        delay: Duration::from_millis(30),
    });
    let mut srv = start(&b, GatewayConfig::default()).await;
    // A stream of 10 tokens × 30 ms is in flight when shutdown begins.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let raw = request(
        "POST",
        "/v1/chat/completions",
        &chat_body(r#","stream":true,"max_tokens":10"#),
    );
    s.write_all(raw.as_bytes()).await.expect("write");
    read_until(&mut s, "model").await;
    srv.stop.take().expect("stop").send(()).expect("signal");
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Draining: health is 503 and new requests are refused with 503.
    let r = roundtrip(srv.addr, &request("GET", "/health", "")).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    let r = roundtrip(
        srv.addr,
        &request("POST", "/v1/chat/completions", &chat_body("")),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        !srv.task.is_finished(),
        "must wait for the stream in flight"
    );

    // The stream in flight finishes normally.
    let rest = read_until(&mut s, "data: [DONE]").await;
    assert!(rest.contains(r#""finish_reason":"length""#), "{rest}");
    let done = tokio::time::timeout(Duration::from_secs(8), srv.task)
        .await
        .expect("serve returns after the drain")
        .expect("task");
    assert!(done.is_ok());
    assert!(
        b.cancelled().is_empty(),
        "the drained request was not cut off"
    );
    assert_eq!(
        b.submitted().len(),
        1,
        "the refused request never reached the backend"
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let b = FakeBackend::words();
    let config = GatewayConfig {
        header_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let srv = start(&b, config).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "connection still open after 5 s");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    srv.task.abort();
}
