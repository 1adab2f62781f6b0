//! Every endpoint in process (`oneshot`), against the scripted fake backend.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use pdserve_cluster::protocol::PrefillLocation;
use pdserve_gateway::{GatewayConfig, ReasoningParser};
use serde_json::Value;

#[tokio::test]
async fn chat_non_streaming_has_the_seed_shape() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let req = post(
        "/v1/chat/completions",
        chat_body(r#","max_tokens":3,"stream":false"#),
    );
    let (status, headers, body) = send(&app, req).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(headers["content-type"], "application/json");
    let request_id = headers["x-request-id"].to_str().expect("x-request-id");
    assert_eq!(v["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().expect("created") > 1_700_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "model the token");
    assert!(choice["message"]
        .as_object()
        .expect("obj")
        .contains_key("reasoning_content"));
    assert_eq!(choice["message"]["reasoning_content"], Value::Null);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["logprobs"], Value::Null);

    // The prompt is the chat template's rendering, tokenized without extra BOS.
    let sent = b.submitted();
    assert_eq!(sent.len(), 1);
    let prompt = tokenizer()
        .decode(&sent[0].prompt_tokens, false)
        .expect("decode");
    assert_eq!(
        prompt,
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(sent[0].params.max_tokens, 3);
    assert_eq!(sent[0].reply_to, "pdserve.r.test");
    assert!(sent[0].deadline_unix_ms > pdserve_gateway::unix_now() * 1000);
    assert_eq!(v["id"], format!("chatcmpl-{}", sent[0].id));

    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], sent[0].prompt_tokens.len());
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(usage["total_tokens"], sent[0].prompt_tokens.len() + 3);
    // Nothing was cancelled: the request finished.
    assert!(b.cancelled().is_empty());
}

#[tokio::test]
async fn sampling_fields_reach_the_backend() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let extra = r#","max_completion_tokens":4,"temperature":0.5,"top_p":0.9,"top_k":7,"min_p":0.1,
        "seed":11,"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,
        "stop":["zz"],"ignore_eos":true,"min_tokens":2,"user":"u1","unknown_field":{"a":1},
        "chat_template_kwargs":{"enable_thinking":false}"#;
    let (status, v) = send_json(&app, post("/v1/chat/completions", chat_body(extra))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let p = &b.submitted()[0].params;
    assert_eq!(p.max_tokens, 4);
    assert_eq!(p.temperature, 0.5);
    assert_eq!(p.top_p, 0.9);
    assert_eq!(p.top_k, 7);
    assert_eq!(p.min_p, 0.1);
    assert_eq!(p.seed, Some(11));
    assert_eq!(p.presence_penalty, 0.5);
    assert_eq!(p.frequency_penalty, -0.5);
    assert_eq!(p.repetition_penalty, 1.1);
    assert_eq!(p.stop, vec!["zz".to_string()]);
    assert!(p.ignore_eos);
    assert_eq!(p.min_tokens, 2);
}

#[tokio::test]
async fn completions_non_streaming() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(
        &app,
        post("/v1/completions", completion_body(r#","max_tokens":2"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "model the");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // A text prompt is encoded with the tokenizer's special tokens.
    let sent = b.submitted();
    assert_eq!(
        sent[0].prompt_tokens,
        tokenizer().encode("Hello", true).expect("encode")
    );
    assert_eq!(v["usage"]["prompt_tokens"], sent[0].prompt_tokens.len());

    // Token-id prompts and several prompts: n choices per prompt, in order.
    let body =
        format!(r#"{{"model":"{MODEL}","prompt":[[5,6],[7]],"n":2,"max_tokens":1,"seed":3}}"#);
    let (status, v) = send_json(&app, post("/v1/completions", body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"].as_array().expect("choices").len(), 4);
    let sent = &b.submitted()[1..];
    let prompts: Vec<Vec<u32>> = sent.iter().map(|r| r.prompt_tokens.clone()).collect();
    assert_eq!(prompts, vec![vec![5, 6], vec![5, 6], vec![7], vec![7]]);
    let seeds: Vec<Option<u64>> = sent.iter().map(|r| r.params.seed).collect();
    assert_eq!(seeds, vec![Some(3), Some(4), Some(3), Some(4)]);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn n_choices_are_distinct_requests() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(r#","n":3,"seed":1,"max_tokens":2"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let sent = b.submitted();
    assert_eq!(sent.len(), 3);
    let mut ids: Vec<_> = sent.iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct request ids");
    let texts: Vec<&str> = (0..3)
        .map(|i| {
            v["choices"][i]["message"]["content"]
                .as_str()
                .expect("content")
        })
        .collect();
    // The fake starts its word cycle at the seed: seeds 1, 2, 3.
    assert_eq!(texts, vec![" the token", " token is", " is and"]);
    for i in 0..3 {
        assert_eq!(v["choices"][i]["index"], i);
    }
    assert_eq!(v["usage"]["completion_tokens"], 6);
    // Without a seed every choice gets none (the engine draws a fresh one each).
    let (_, _) = send_json(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(r#","n":2,"max_tokens":1"#),
        ),
    )
    .await;
    assert!(b.submitted()[3..].iter().all(|r| r.params.seed.is_none()));
}

#[tokio::test]
async fn logprobs_in_chat_and_completion_shapes() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(r#","max_tokens":2,"logprobs":true,"top_logprobs":2"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["token"], "model");
    assert_eq!(content[0]["logprob"], -0.5);
    assert_eq!(content[0]["bytes"], serde_json::json!(b"model".to_vec()));
    assert_eq!(content[1]["token"], " the");
    let top = content[0]["top_logprobs"].as_array().expect("top");
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["token"], "A");
    assert_eq!(top[1]["logprob"], -2.0);
    assert_eq!(b.submitted()[0].params.logprobs, Some(2));

    let (status, v) = send_json(
        &app,
        post(
            "/v1/completions",
            completion_body(r#","max_tokens":2,"logprobs":1"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], serde_json::json!(["model", " the"]));
    assert_eq!(lp["token_logprobs"], serde_json::json!([-0.5, -0.5]));
    assert_eq!(lp["top_logprobs"][0]["A"], -1.0);
    assert_eq!(lp["text_offset"], serde_json::json!([0, 5]));
}

#[tokio::test]
async fn reasoning_parser_splits_think_blocks() {
    let texts = [
        "<think>",
        "\nLet me",
        " think.",
        "\n</think>",
        "\n\n",
        "The answer",
        ".",
    ];
    let b = FakeBackend::new(Script::Texts(texts.iter().map(|s| s.to_string()).collect()));
    let config = GatewayConfig {
        reasoning_parser: Some(ReasoningParser::Qwen3),
        ..GatewayConfig::default()
    };
    let app = router(&b, config);
    let (status, v) = send_json(&app, post("/v1/chat/completions", chat_body(""))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let m = &v["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "\nLet me think.\n");
    assert_eq!(m["content"], "The answer.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], texts.len());

    let (_, _, body) = send(
        &app,
        post("/v1/chat/completions", chat_body(r#","stream":true"#)),
    )
    .await;
    let chunks = sse_chunks(&body);
    assert_eq!(
        chat_stream_text(&chunks, 0, "reasoning_content"),
        "\nLet me think.\n"
    );
    assert_eq!(chat_stream_text(&chunks, 0, "content"), "The answer.");
    assert!(chunks.iter().all(|c| !c.to_string().contains("think>")));

    // Without the parser the text passes through unchanged; completions never parse.
    let b = FakeBackend::new(Script::Texts(texts.iter().map(|s| s.to_string()).collect()));
    let app = router(&b, GatewayConfig::default());
    let (_, v) = send_json(&app, post("/v1/chat/completions", chat_body(""))).await;
    assert_eq!(v["choices"][0]["message"]["content"], texts.concat());
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], Value::Null);
}

#[tokio::test]
async fn models_list_and_lookup() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "pdserve");
    assert_eq!(v["data"][0]["max_model_len"], 256);
    let (status, v) = send_json(&app, get(&format!("/v1/models/{MODEL}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["id"], MODEL);
    let (status, v) = send_json(&app, get("/v1/models/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn health_follows_the_served_models_and_live_is_always_up() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["models"][0], MODEL);
    b.models.lock().expect("lock").clear();
    let (status, v) = send_json(&app, get("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"]["message"].is_string());
    let (status, _, body) = send(&app, get("/live")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"ok");
}

#[tokio::test]
async fn metrics_count_requests_tokens_prefills_and_worker_load() {
    let b = FakeBackend::new(Script::Words {
        stop_after: None,
        delay: Duration::from_millis(2),
    });
    b.workers
        .lock()
        .expect("lock")
        .push(worker_load("n1/decode/0", 30, 40, 3));
    let app = router(&b, GatewayConfig::default());
    send_json(
        &app,
        post("/v1/chat/completions", chat_body(r#","max_tokens":3"#)),
    )
    .await;
    *b.prefill.lock().expect("lock") = PrefillLocation::Remote;
    send_json(
        &app,
        post(
            "/v1/completions",
            completion_body(r#","max_tokens":2,"n":2"#),
        ),
    )
    .await;
    send_json(&app, get("/nope")).await;
    let (status, headers, body) = send(&app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).expect("utf-8");
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"pdserve_http_requests_total{endpoint="chat_completions",status="200"} 1"#),
        "{text}"
    );
    assert!(has(
        r#"pdserve_http_requests_total{endpoint="completions",status="200"} 1"#
    ));
    assert!(has(
        r#"pdserve_http_requests_total{endpoint="other",status="404"} 1"#
    ));
    assert!(
        has(r#"pdserve_prefill_total{location="local"} 1"#),
        "{text}"
    );
    assert!(has(r#"pdserve_prefill_total{location="remote"} 2"#));
    assert!(has("pdserve_generation_tokens_total 7"));
    let prompt_tokens: usize = b.submitted().iter().map(|r| r.prompt_tokens.len()).sum();
    assert!(has(&format!("pdserve_prompt_tokens_total {prompt_tokens}")));
    assert!(has("pdserve_time_to_first_token_seconds_count 3"), "{text}");
    assert!(has("pdserve_inter_token_latency_seconds_count 4"), "{text}");
    assert!(has(
        r#"pdserve_request_duration_seconds_count{endpoint="chat"} 1"#
    ));
    assert!(has("pdserve_requests_inflight 0"));
    let w = r#"{worker="n1/decode/0",role="decode",model="tiny"}"#;
    assert!(
        has(&format!("pdserve_worker_kv_used_blocks{w} 10")),
        "{text}"
    );
    assert!(has(&format!("pdserve_worker_kv_total_blocks{w} 40")));
    assert!(has(&format!("pdserve_worker_kv_usage_ratio{w} 0.25")));
    assert!(has(&format!("pdserve_worker_queue_depth_requests{w} 3")));
    // Every metric is ours and typed.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.starts_with("pdserve_"), "{l}");
    }
    // A worker that left disappears at the next scrape.
    b.workers.lock().expect("lock").clear();
    let (_, _, body) = send(&app, get("/metrics")).await;
    assert!(!String::from_utf8(body)
        .expect("utf-8")
        .contains("n1/decode/0"));
}

#[tokio::test]
async fn openapi_document_is_served() {
    let b = FakeBackend::words();
    let app = router(&b, GatewayConfig::default());
    let (status, v) = send_json(&app, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/v1/chat/completions"]["post"].is_object());
    assert!(
        v["components"]["schemas"]["ChatCompletionRequest"]["properties"]["chat_template_kwargs"]
            .is_object()
    );
}
