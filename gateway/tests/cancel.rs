//! Cancellation: a client that goes away (stream body dropped, non-streaming request
//! future dropped) cancels its backend requests within 100 ms.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use http_body_util::BodyExt;
use pdserve_gateway::GatewayConfig;
use tower::ServiceExt;

#[tokio::test]
async fn dropping_the_stream_cancels_within_100ms() {
    let b = FakeBackend::new(Script::Hang { tokens: 2 });
    let app = router(&b, GatewayConfig::default());
    let resp = app
        .clone()
        .oneshot(post(
            "/v1/chat/completions",
            chat_body(r#","stream":true,"n":2"#),
        ))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Role chunks for both choices, then tokens: read a few frames.
    let mut seen = String::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("frame in time")
            .expect("a frame")
            .expect("no error");
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().expect("data")));
    }
    assert!(seen.contains("model"), "{seen}");
    let ids: Vec<_> = b.submitted().iter().map(|r| r.id).collect();
    assert!(
        b.cancelled().is_empty(),
        "nothing cancelled while streaming"
    );
    drop(body);
    for id in ids {
        assert!(
            b.wait_cancelled(id, Duration::from_millis(100)).await,
            "{id} not cancelled"
        );
    }
    let (_, _, m) = send(&app, get("/metrics")).await;
    let m = String::from_utf8(m).expect("utf-8");
    assert!(
        m.contains(r#"pdserve_requests_cancelled_total{reason="client_disconnect"} 1"#),
        "{m}"
    );
    assert!(m.contains("pdserve_requests_inflight 0\n"), "{m}");
}

#[tokio::test]
async fn dropping_a_non_streaming_request_cancels_within_100ms() {
    let b = FakeBackend::new(Script::Hang { tokens: 1 });
    let app = router(&b, GatewayConfig::default());
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            app.oneshot(post("/v1/chat/completions", chat_body("")))
                .await
        }
    });
    let id = b.wait_submitted(1).await[0].id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(b.cancelled().is_empty());
    task.abort();
    assert!(b.wait_cancelled(id, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn finished_requests_are_not_cancelled() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    for body in [
        chat_body(r#","max_tokens":2"#),
        chat_body(r#","max_tokens":2,"stream":true,"n":3"#),
    ] {
        let (status, _, _) = send(&app, post("/v1/chat/completions", body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(b.submitted().len(), 4);
    assert!(b.cancelled().is_empty());
}
