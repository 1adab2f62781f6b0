//! The load generator against a fake OpenAI server on 127.0.0.1:0 (axum, in this
//! process): a completions stream of five content chunks 20 ms apart, frames
//! split across writes, a usage chunk and `[DONE]`; plus routes that fail, stall
//! or end early. Loopback only; every test is bounded by short timeouts.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream;
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::client::{http_client, BaseUrl};
use super::runner::{self, Load, Target};
use super::stats::{Slo, Summary};
use super::*;

const GAP: Duration = Duration::from_millis(20);
const CHUNKS: usize = 5;

#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    bodies: std::sync::Mutex<Vec<Value>>,
}

fn sse_pieces() -> Vec<(Duration, Bytes)> {
    let mut out = Vec::new();
    for i in 0..CHUNKS {
        let frame = format!("data: {{\"choices\":[{{\"index\":0,\"text\":\"t{i}\"}}]}}\n\n");
        // Each frame arrives in two writes, split inside the JSON.
        let (a, b) = frame.split_at(frame.len() / 2);
        out.push((GAP, Bytes::from(a.to_string())));
        out.push((Duration::from_millis(2), Bytes::from(b.to_string())));
    }
    let usage = format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        CHUNKS + 1
    );
    out.push((Duration::ZERO, Bytes::from(usage)));
    out
}

fn stream_body(pieces: Vec<(Duration, Bytes)>) -> Response {
    let s = stream::unfold(pieces.into_iter(), |mut it| async move {
        let (wait, bytes) = it.next()?;
        tokio::time::sleep(wait).await;
        Some((Ok::<Bytes, Infallible>(bytes), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(s))
        .unwrap()
}

async fn completions(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.bodies.lock().unwrap().push(body.clone());
    match body["model"].as_str() {
        Some("fail") => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "overloaded"}})),
        )
            .into_response(),
        Some("stall") => stream_body(vec![(Duration::from_secs(30), Bytes::new())]),
        Some("cut") => {
            let mut p = sse_pieces();
            p.truncate(3);
            stream_body(p)
        }
        _ => stream_body(sse_pieces()),
    }
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
}

async fn fake_server() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn bodies(model: &str, n: usize) -> Vec<Bytes> {
    let p = prompts::Payload::Tokens(vec![101, 102, 103, 104]);
    (0..n)
        .map(|_| {
            let b = prompts::request_body(Endpoint::Completions, model, &p, CHUNKS as u32 + 1);
            Bytes::from(b.to_string())
        })
        .collect()
}

async fn target(url: &str, timeout: Duration) -> Arc<Target> {
    Arc::new(Target {
        client: http_client(),
        uri: BaseUrl::parse(url)
            .unwrap()
            .join("/v1/completions")
            .unwrap(),
        timeout,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_measures_ttft_and_every_itl() {
    let (url, seen) = fake_server().await;
    let t = target(&url, Duration::from_secs(10)).await;
    let bar = ProgressBar::hidden();
    let records = runner::run(t, bodies("fake-model", 6), Load::Concurrency(3), &bar).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    assert_eq!(bar.position(), 6);
    assert_eq!(records.len(), 6);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.index, i);
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!(r.content_chunks, CHUNKS as u64);
        // Tokens come from the usage chunk, not from counting chunks.
        assert_eq!(r.output_tokens, CHUNKS as u64 + 1);
        assert_eq!(r.prompt_tokens, Some(4));
        assert_eq!(r.itl_ms.len(), CHUNKS - 1);
        let ttft = r.ttft_ms.unwrap();
        assert!((20.0..2000.0).contains(&ttft), "ttft {ttft}");
        // The server sleeps 5 × 22 ms before the last chunk: the first token and the
        // gaps add up to at least that (single gaps shrink when a busy client reads a
        // chunk late, so only the sum is bounded).
        let gaps: f64 = r.itl_ms.iter().sum();
        assert!(
            r.itl_ms.iter().all(|&g| g > 0.0 && g < 2000.0),
            "{:?}",
            r.itl_ms
        );
        assert!(ttft + gaps >= 105.0, "ttft {ttft} + gaps {gaps}");
        assert!(r.e2e_ms.unwrap() >= ttft + gaps - 0.01);
    }
    // Three clients, two rounds: the second round starts after the first ended.
    let mut starts: Vec<f64> = records.iter().map(|r| r.start_s).collect();
    starts.sort_by(f64::total_cmp);
    assert!(starts[3] * 1000.0 >= 100.0, "{starts:?}");
    let s = Summary::of(&records, CHUNKS as u64 + 1, Slo::default());
    assert_eq!((s.completed, s.failed, s.output_len_mismatches), (6, 0, 0));
    assert!(s.output_throughput > 0.0 && s.request_throughput > 0.0);
    assert_eq!(s.itl_ms.unwrap().count, 6 * (CHUNKS - 1));
    let body = &seen.bodies.lock().unwrap()[0];
    assert_eq!(body["stream"], true);
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["max_tokens"], CHUNKS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_not_fatal() {
    let (url, _) = fake_server().await;
    let t = target(&url, Duration::from_millis(300)).await;
    let bar = ProgressBar::hidden();
    let mut all = bodies("fail", 1);
    all.extend(bodies("stall", 1));
    all.extend(bodies("cut", 1));
    all.extend(bodies("fake-model", 1));
    let started = std::time::Instant::now();
    let records = runner::run(t, all, Load::Concurrency(4), &bar).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let errors: Vec<Option<String>> = records.iter().map(|r| r.error.clone()).collect();
    assert_eq!(errors[0].as_deref(), Some("HTTP 503: overloaded"));
    assert!(errors[1]
        .as_deref()
        .unwrap()
        .starts_with("timed out after 0.3 s"));
    assert!(errors[2].as_deref().unwrap().contains("without [DONE]"));
    assert_eq!(errors[3], None);
    // Nothing listens on a closed port: a connection error, also just counted.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let t = target(&dead_url, Duration::from_secs(5)).await;
    let r = runner::run(t, bodies("x", 2), Load::Concurrency(1), &bar).await;
    assert!(r
        .iter()
        .all(|r| r.error.as_deref().unwrap().starts_with("request failed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_open_loop_sends_everything() {
    let (url, seen) = fake_server().await;
    let t = target(&url, Duration::from_secs(10)).await;
    let load = Load::Rate {
        per_s: 100.0,
        seed: 5,
    };
    let records = runner::run(t, bodies("fake-model", 8), load, &ProgressBar::hidden()).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 8);
    assert!(records.iter().all(|r| r.ok()));
    let plan = runner::poisson_schedule(8, 100.0, 5);
    for (r, at) in records.iter().zip(plan) {
        // Sent at its planned time (timers may be late, never early).
        assert!(r.start_s >= at - 0.001, "{} < {at}", r.start_s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_run_writes_json_and_plot() {
    let (url, seen) = fake_server().await;
    let dir = tempfile::tempdir().unwrap();
    let (json_path, png) = (dir.path().join("b.json"), dir.path().join("b.png"));
    let args = BenchLoadArgs {
        url,
        model: None,
        concurrency: Some(2),
        request_rate: None,
        num_requests: 4,
        input_len: 8,
        output_len: CHUNKS as u32 + 1,
        dataset: None,
        prefix_len: 2,
        tokenizer: None,
        seed: 1,
        json: Some(json_path.clone()),
        plot: Some(png.clone()),
        slo_ttft_ms: Some(10_000.0),
        slo_itl_ms: None,
        endpoint: None,
        warmup: 1,
        timeout_s: 10.0,
    };
    let p = plan(&args).unwrap();
    run_plan(&args, p).await.unwrap();
    // One warm-up request plus four measured.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    let sent = seen.bodies.lock().unwrap();
    assert!(sent.iter().all(|b| b["model"] == "fake-model"));
    assert!(sent
        .iter()
        .all(|b| b["prompt"].as_array().unwrap().len() == 8));
    let head = |b: &Value| b["prompt"].as_array().unwrap()[..2].to_vec();
    assert!(sent.iter().all(|b| head(b) == head(&sent[0])));
    let doc: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(doc["config"]["model"], "fake-model");
    assert_eq!(doc["summary"]["completed"], 4);
    assert_eq!(doc["summary"]["good_requests"], 4);
    assert_eq!(doc["requests"].as_array().unwrap().len(), 4);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn bad_arguments_fail_before_any_request() {
    let base = BenchLoadArgs {
        url: "http://127.0.0.1:9".into(),
        model: Some("m".into()),
        concurrency: None,
        request_rate: None,
        num_requests: 1,
        input_len: 4,
        output_len: 1,
        dataset: None,
        prefix_len: 0,
        tokenizer: None,
        seed: 0,
        json: None,
        plot: None,
        slo_ttft_ms: None,
        slo_itl_ms: None,
        endpoint: None,
        warmup: 0,
        timeout_s: 1.0,
    };
    let err = |a: BenchLoadArgs| format!("{:#}", plan(&a).err().expect("should fail"));
    assert!(err(BenchLoadArgs {
        prefix_len: 5,
        ..base.clone()
    })
    .contains("--prefix-len 5 is longer"));
    assert!(err(BenchLoadArgs {
        request_rate: Some(0.0),
        ..base.clone()
    })
    .contains("--request-rate must be a positive"));
    assert!(err(BenchLoadArgs {
        url: "https://x".into(),
        ..base.clone()
    })
    .contains("plain http://"));
    let bad = err(BenchLoadArgs {
        dataset: Some("/nonexistent/d.json".into()),
        ..base.clone()
    });
    assert!(bad.starts_with("dataset /nonexistent/d.json"), "{bad}");
    let p = plan(&BenchLoadArgs {
        endpoint: Some(Endpoint::Chat),
        ..base
    })
    .unwrap();
    assert!(p.approximate);
    assert_eq!(p.load, Load::Concurrency(1));
}
