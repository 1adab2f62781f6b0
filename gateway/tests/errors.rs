//! Every error status the API promises, with OpenAI error JSON.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use pdserve_cluster::protocol::ErrorKind;
use pdserve_gateway::{GatewayConfig, SubmitError};
use serde_json::Value;

/// Checks the OpenAI error shape and returns the error object.
async fn error_of(app: &axum::Router, req: Request<Body>, want: StatusCode) -> Value {
    let (status, v) = send_json(app, req).await;
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    let keys: Vec<&String> = e.as_object().expect("obj").keys().collect();
    assert_eq!(keys.len(), 4, "message, type, param, code: {v}");
    e.clone()
}

#[tokio::test]
async fn bad_requests_are_400s() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let chat = |body: &str| post("/v1/chat/completions", body.to_string());
    let e = error_of(&app, chat("{not json"), StatusCode::BAD_REQUEST).await;
    assert_eq!(e["type"], "invalid_request_error");
    error_of(&app, chat("[]"), StatusCode::BAD_REQUEST).await;
    let e = error_of(
        &app,
        chat(&chat_body(r#","temperature":"hot""#)),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "temperature");
    for (extra, param) in [
        (r#","temperature":-1"#, "temperature"),
        (r#","top_p":0"#, "top_p"),
        (r#","top_p":1.01"#, "top_p"),
        (r#","n":0"#, "n"),
        (r#","max_tokens":0"#, "max_tokens"),
        (r#","seed":-5"#, "seed"),
        (r#","presence_penalty":9"#, "presence_penalty"),
    ] {
        let e = error_of(&app, chat(&chat_body(extra)), StatusCode::BAD_REQUEST).await;
        assert_eq!(e["param"], param, "{extra}");
    }
    let e = error_of(
        &app,
        chat(&format!(r#"{{"model":"{MODEL}","messages":[]}}"#)),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "messages");
    let e = error_of(
        &app,
        post(
            "/v1/completions",
            format!(r#"{{"model":"{MODEL}","prompt":[1,99999]}}"#),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e["message"].as_str().expect("msg").contains("99999"));
    // The model's context is 256 tokens: the message names both numbers.
    let long = format!(
        r#"{{"model":"{MODEL}","prompt":[{}]}}"#,
        vec!["5"; 300].join(",")
    );
    let e = error_of(&app, post("/v1/completions", long), StatusCode::BAD_REQUEST).await;
    let m = e["message"].as_str().expect("msg");
    assert!(m.contains("300") && m.contains("256"), "{m}");
    assert_eq!(e["code"], "context_length_exceeded");
    // A backend rejection before any token is a 400 too (not a stream).
    let b2 = FakeBackend::new(Script::FailAfter {
        tokens: 0,
        kind: ErrorKind::InvalidRequest,
        message: "prompt needs more KV blocks than exist".into(),
    });
    let app2 = router(&b2, GatewayConfig::default());
    let e = error_of(
        &app2,
        chat(&chat_body(r#","stream":true"#)),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e["message"].as_str().expect("msg").contains("KV blocks"));
    assert!(
        b.submitted().is_empty(),
        "no invalid request reached the backend"
    );
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let b = FakeBackend::words();
    let config = GatewayConfig {
        api_key: Some("sekrit".into()),
        ..GatewayConfig::default()
    };
    let app = router(&b, config);
    let e = error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(e["code"], "invalid_api_key");
    let wrong = Request::get("/v1/models")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .expect("req");
    error_of(&app, wrong, StatusCode::UNAUTHORIZED).await;
    let right = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sekrit")
        .body(Body::from(chat_body(r#","max_tokens":1"#)))
        .expect("req");
    let (status, _) = send_json(&app, right).await;
    assert_eq!(status, StatusCode::OK);
    // Probes and metrics stay open.
    let (status, _) = send_json(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.submitted().len(), 1);
}

#[tokio::test]
async fn unknown_models_routes_and_methods() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let body = r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#;
    let e = error_of(
        &app,
        post("/v1/chat/completions", body),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    assert!(
        e["message"].as_str().expect("msg").contains(MODEL),
        "lists served models: {e}"
    );
    error_of(&app, get("/v1/nothing"), StatusCode::NOT_FOUND).await;
    error_of(
        &app,
        get("/v1/chat/completions"),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    error_of(&app, post("/health", ""), StatusCode::METHOD_NOT_ALLOWED).await;
    // The router may also reject a model the gateway thought it had.
    *b.submit_error.lock().expect("lock") = Some(SubmitError::UnknownModel {
        model: MODEL.into(),
        served: vec!["other".into()],
    });
    error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let b = FakeBackend::words();
    let config = GatewayConfig {
        max_body_bytes: 1000,
        ..GatewayConfig::default()
    };
    let app = router(&b, config);
    let big = chat_body(&format!(r#","user":"{}""#, "x".repeat(2000)));
    let e = error_of(
        &app,
        post("/v1/chat/completions", big),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(e["message"].as_str().expect("msg").contains("1000"));
    let (status, _) = send_json(
        &app,
        post("/v1/chat/completions", chat_body(r#","max_tokens":1"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admission_limit_is_429_and_frees_on_completion() {
    let b = FakeBackend::new(Script::Hang { tokens: 1 });
    let config = GatewayConfig {
        max_inflight: 1,
        ..GatewayConfig::default()
    };
    let app = router(&b, config);
    let resp = tower::ServiceExt::oneshot(
        app.clone(),
        post("/v1/chat/completions", chat_body(r#","stream":true"#)),
    )
    .await
    .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, headers, _) = send(&app, post("/v1/chat/completions", chat_body(""))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let (_, _, m) = send(&app, get("/metrics")).await;
    assert!(String::from_utf8(m)
        .expect("utf-8")
        .contains("pdserve_requests_inflight 1\n"));
    drop(resp); // the stream goes away: its slot is free again
    *b.script.lock().expect("lock") = Script::Words {
        stop_after: None,
        delay: Duration::ZERO,
    };
    let (status, v) = send_json(
        &app,
        post("/v1/chat/completions", chat_body(r#","max_tokens":1"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The router's own overload is a 429 as well.
    *b.submit_error.lock().expect("lock") = Some(SubmitError::Overloaded);
    error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
}

/// Runs `f` on the backend `ms` milliseconds from now, in the background.
fn after(
    b: &std::sync::Arc<FakeBackend>,
    ms: u64,
    f: impl FnOnce(&FakeBackend) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let b = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        f(&b);
    })
}

/// A worker reports the model but its tokenizer is still loading (a frontend's
/// first moments): the request waits for it and is served, not refused.
#[tokio::test]
async fn a_pending_model_is_waited_for() {
    use std::sync::atomic::Ordering;
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let listed = std::mem::take(&mut *b.models.lock().expect("lock"));
    b.pending.store(true, Ordering::Release);
    let loader = after(&b, 150, move |b| {
        *b.models.lock().expect("lock") = listed;
        b.pending.store(false, Ordering::Release);
    });
    let t0 = std::time::Instant::now();
    let (status, v) = send_json(&app, post("/v1/chat/completions", chat_body(""))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "served before the model was listed"
    );
    assert_eq!(b.submitted().len(), 1);
    loader.await.expect("loader");

    // The load fails: pending ends, and the waiting request gets the 503 then.
    b.models.lock().expect("lock").clear();
    b.pending.store(true, Ordering::Release);
    let failer = after(&b, 100, |b| b.pending.store(false, Ordering::Release));
    let t0 = std::time::Instant::now();
    let e = error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(e["type"], "service_unavailable");
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "refused while still pending"
    );
    failer.await.expect("failer");
}

#[tokio::test]
async fn no_worker_is_503() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    *b.submit_error.lock().expect("lock") = Some(SubmitError::NoWorkers {
        model: MODEL.into(),
    });
    let e = error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(e["type"], "service_unavailable");
    *b.submit_error.lock().expect("lock") = None;
    b.models.lock().expect("lock").clear();
    error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    // A worker lost mid-request (non-streaming) is a 503 without the backend's text.
    let b = FakeBackend::new(Script::FailAfter {
        tokens: 1,
        kind: ErrorKind::WorkerLost,
        message: "node 10.1.2.3 vanished".into(),
    });
    let app = router(&b, GatewayConfig::default());
    let e = error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(!e["message"].as_str().expect("msg").contains("10.1.2.3"));
}

#[tokio::test]
async fn internal_errors_are_500_without_details() {
    let b = FakeBackend::new(Script::FailAfter {
        tokens: 1,
        kind: ErrorKind::Internal,
        message: "index out of bounds in /home/build/engine.rs".into(),
    });
    let app = router(&b, GatewayConfig::default());
    let (status, _, body) = send(&app, post("/v1/chat/completions", chat_body(""))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        !text.contains("engine.rs") && !text.contains("bounds"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["error"]["type"], "server_error");
}

#[tokio::test]
async fn deadline_ends_the_request_and_cancels_it() {
    let b = FakeBackend::new(Script::Hang { tokens: 1 });
    let config = GatewayConfig {
        request_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let app = router(&b, config);
    let t0 = std::time::Instant::now();
    let e = error_of(
        &app,
        post("/v1/chat/completions", chat_body("")),
        StatusCode::GATEWAY_TIMEOUT,
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(e["type"], "timeout_error");
    let id = b.submitted()[0].id;
    assert!(b.wait_cancelled(id, Duration::from_millis(100)).await);
    let deadline = b.submitted()[0].deadline_unix_ms;
    let now_ms = pdserve_gateway::unix_now() * 1000;
    assert!(
        deadline <= now_ms + 1000,
        "deadline {deadline} is about 200 ms after arrival"
    );

    // Streaming: the error arrives as an event, then [DONE].
    let (status, _, body) = send(
        &app,
        post("/v1/chat/completions", chat_body(r#","stream":true"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks.last().expect("error")["error"]["type"],
        "timeout_error"
    );
    let (_, _, m) = send(&app, get("/metrics")).await;
    let m = String::from_utf8(m).expect("utf-8");
    assert!(
        m.contains(r#"pdserve_requests_cancelled_total{reason="timeout"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_app_keeps_serving() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    b.panic_in_models
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let e = error_of(&app, get("/v1/models"), StatusCode::INTERNAL_SERVER_ERROR).await;
    assert!(!e["message"]
        .as_str()
        .expect("msg")
        .contains("fake backend bug"));
    b.panic_in_models
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, _) = send_json(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, m) = send(&app, get("/metrics")).await;
    let m = String::from_utf8(m).expect("utf-8");
    assert!(
        m.contains(r#"pdserve_http_requests_total{endpoint="models",status="500"} 1"#),
        "{m}"
    );
}
