//! Server-Sent Events: framing, chunk order, `[DONE]`, usage, n > 1, and failures
//! after the stream began.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use pdserve_cluster::protocol::ErrorKind;
use pdserve_gateway::GatewayConfig;
use serde_json::Value;

#[tokio::test]
async fn chat_stream_framing_role_content_finish_done() {
    let b = FakeBackend::new(Script::Words {
        stop_after: None,
        delay: Duration::from_millis(1),
    });
    let app = router(&b, GatewayConfig::default());
    let (status, headers, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(r#","max_tokens":3,"stream":true"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let chunks = sse_chunks(&body);
    // role chunk, three content chunks (the last with finish_reason).
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    let id = chunks[0]["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], MODEL);
        assert!(
            c.get("usage").is_none(),
            "no usage without include_usage: {c}"
        );
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        serde_json::json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chat_stream_text(&chunks, 0, "content"), "model the token");
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert!(b.cancelled().is_empty());
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let body =
        chat_body(r#","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}"#);
    let (_, _, body) = send(&app, post("/v1/chat/completions", body)).await;
    let chunks = sse_chunks(&body);
    let (last, rest) = chunks.split_last().expect("chunks");
    assert_eq!(last["choices"], serde_json::json!([]));
    let prompt = b.submitted()[0].prompt_tokens.len();
    assert_eq!(last["usage"]["prompt_tokens"], prompt);
    assert_eq!(last["usage"]["completion_tokens"], 2);
    assert_eq!(last["usage"]["total_tokens"], prompt + 2);
    for c in rest {
        assert!(c.as_object().expect("obj").contains_key("usage"));
        assert_eq!(c["usage"], Value::Null);
    }
    // include_usage without stream changes nothing.
    let body = chat_body(r#","max_tokens":2,"stream_options":{"include_usage":true}"#);
    let (status, v) = send_json(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn completion_stream_and_usage() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let body = completion_body(
        r#","max_tokens":2,"stream":true,"stream_options":{"include_usage":true},"logprobs":0"#,
    );
    let (_, _, body) = send(&app, post("/v1/completions", body)).await;
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks.len(),
        3,
        "two text chunks and the usage chunk: {chunks:?}"
    );
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["id"].as_str().expect("id").starts_with("cmpl-"));
    }
    assert_eq!(chunks[0]["choices"][0]["text"], "model");
    assert_eq!(
        chunks[0]["choices"][0]["logprobs"]["tokens"],
        serde_json::json!(["model"])
    );
    assert_eq!(chunks[1]["choices"][0]["text"], " the");
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["text_offset"],
        serde_json::json!([5])
    );
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[2]["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn n_choices_stream_interleaved_with_their_indices() {
    let b = FakeBackend::new(Script::Words {
        stop_after: Some(2),
        delay: Duration::from_millis(1),
    });
    let app = router(&b, GatewayConfig::default());
    let body = chat_body(
        r#","n":2,"seed":0,"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}"#,
    );
    let (_, _, body) = send(&app, post("/v1/chat/completions", body)).await;
    let chunks = sse_chunks(&body);
    assert_eq!(chat_stream_text(&chunks, 0, "content"), "model the");
    assert_eq!(chat_stream_text(&chunks, 1, "content"), " the token");
    for i in 0..2 {
        let roles = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["index"] == i && c["choices"][0]["delta"]["role"] == "assistant"
            })
            .count();
        assert_eq!(roles, 1, "one role chunk per choice");
        let finishes: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, vec!["stop"]);
    }
    assert_eq!(
        chunks.last().expect("usage")["usage"]["completion_tokens"],
        4
    );
}

#[tokio::test]
async fn failure_after_streaming_began_is_an_error_event_then_done() {
    let b = FakeBackend::new(Script::FailAfter {
        tokens: 2,
        kind: ErrorKind::Internal,
        message: "engine exploded at /secret/path".into(),
    });
    let app = router(&b, GatewayConfig::default());
    let (status, _, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(r#","max_tokens":5,"stream":true"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.clone()).expect("utf-8");
    assert!(!text.contains("secret"), "internals leaked: {text}");
    let chunks = sse_chunks(&body);
    let err = chunks.last().expect("error event");
    assert_eq!(err["error"]["type"], "server_error");
    assert_eq!(chat_stream_text(&chunks, 0, "content"), "model the");
    // The stream error is counted.
    let (_, _, m) = send(&app, get("/metrics")).await;
    let m = String::from_utf8(m).expect("utf-8");
    assert!(
        m.contains(r#"pdserve_stream_errors_total{type="server_error"} 1"#),
        "{m}"
    );

    // A channel that closes without a final event is the same kind of failure.
    let b = FakeBackend::new(Script::CloseEarly);
    let app = router(&b, GatewayConfig::default());
    let (status, _, body) = send(
        &app,
        post("/v1/chat/completions", chat_body(r#","stream":true"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks.last().expect("error")["error"]["type"],
        "server_error"
    );
}

#[tokio::test]
async fn sibling_choices_are_cancelled_when_one_fails() {
    let b = FakeBackend::new(Script::Hang { tokens: 1 });
    let app = router(&b, GatewayConfig::default());
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                post("/v1/chat/completions", chat_body(r#","n":2,"stream":true"#)),
            )
            .await
        }
    });
    let sent = b.wait_submitted(2).await;
    // Choice 1 fails; choice 0 is still hanging and must be cancelled.
    b.close(sent[1].id);
    let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stream ends")
        .expect("task");
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks.last().expect("error")["error"]["type"],
        "server_error"
    );
    assert!(b.wait_cancelled(sent[0].id, Duration::from_secs(1)).await);
}
