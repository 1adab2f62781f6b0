//! The OpenAPI document against the types it describes.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::*;
use crate::error::ApiError;
use crate::openai::request::*;
use crate::openai::response::*;

fn keys_of<T: Serialize>(v: &T) -> BTreeSet<String> {
    serde_json::to_value(v)
        .expect("json")
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect()
}

fn schema_keys(name: &str) -> BTreeSet<String> {
    fields_of(name).into_iter().map(String::from).collect()
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get("$ref") {
                out.push(s.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_every_path_is_there() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").expect("local ref");
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling {r}"
        );
    }
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/live",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p}");
    }
}

fn full_sampling() -> SamplingFields {
    SamplingFields {
        max_tokens: Some(1),
        temperature: Some(1.0),
        top_p: Some(1.0),
        top_k: Some(1),
        min_p: Some(0.0),
        n: Some(1),
        stop: Some(Stop::One("x".into())),
        seed: Some(1),
        presence_penalty: Some(0.0),
        frequency_penalty: Some(0.0),
        repetition_penalty: Some(1.0),
        stream: Some(true),
        stream_options: Some(StreamOptions {
            include_usage: Some(true),
        }),
        ignore_eos: Some(true),
        min_tokens: Some(0),
        user: Some("u".into()),
    }
}

#[test]
fn request_schemas_list_exactly_the_fields_serde_reads() {
    let chat = ChatFields {
        model: "m".into(),
        messages: vec![],
        max_completion_tokens: Some(1),
        logprobs: Some(true),
        top_logprobs: Some(1),
        chat_template_kwargs: Some(Map::new()),
    };
    let mut want = keys_of(&chat);
    want.extend(keys_of(&full_sampling()));
    assert_eq!(schema_keys("ChatCompletionRequest"), want);

    let completion = CompletionFields {
        model: "m".into(),
        prompt: Prompt::Text("p".into()),
        logprobs: Some(1),
    };
    let mut want = keys_of(&completion);
    want.extend(keys_of(&full_sampling()));
    assert_eq!(schema_keys("CompletionRequest"), want);

    let msg = ChatMessageIn {
        role: "user".into(),
        content: Some(MessageContent::Text("x".into())),
        name: Some("n".into()),
    };
    assert_eq!(schema_keys("ChatMessage"), keys_of(&msg));
    let part = ContentPart {
        kind: "text".into(),
        text: Some("t".into()),
    };
    assert_eq!(schema_keys("ContentPart"), keys_of(&part));
    assert_eq!(
        schema_keys("StreamOptions"),
        keys_of(&StreamOptions::default())
    );
}

#[test]
fn response_schemas_list_exactly_the_fields_serde_writes() {
    let top = TopLogprob {
        token: "a".into(),
        logprob: -1.0,
        bytes: vec![97],
    };
    let tok = ChatTokenLogprob {
        token: "a".into(),
        logprob: -1.0,
        bytes: vec![97],
        top_logprobs: vec![top.clone()],
    };
    let msg = ChatMessageOut {
        role: "assistant",
        content: None,
        reasoning_content: None,
    };
    let choice = ChatChoice {
        index: 0,
        message: msg.clone(),
        logprobs: None,
        finish_reason: None,
    };
    let chat = ChatCompletion {
        id: "x".into(),
        object: CHAT_OBJECT,
        created: 0,
        model: "m".into(),
        choices: vec![],
        usage: Usage::default(),
    };
    let delta = ChatDelta {
        role: Some("assistant"),
        content: Some("c".into()),
        reasoning_content: Some("r".into()),
    };
    let chunk_choice = ChatChunkChoice {
        index: 0,
        delta: delta.clone(),
        logprobs: None,
        finish_reason: None,
    };
    let chunk = ChatCompletionChunk {
        id: "x".into(),
        object: CHAT_CHUNK_OBJECT,
        created: 0,
        model: "m".into(),
        choices: vec![],
        usage: Some(None),
    };
    let completion = Completion {
        id: "x".into(),
        object: COMPLETION_OBJECT,
        created: 0,
        model: "m".into(),
        choices: vec![],
        usage: Some(None),
    };
    let cchoice = CompletionChoice {
        index: 0,
        text: "t".into(),
        logprobs: None,
        finish_reason: None,
    };
    let card = ModelCard {
        id: "m".into(),
        object: "model",
        created: 0,
        owned_by: "pdserve",
        max_model_len: 1,
    };
    let list = ModelList {
        object: "list",
        data: vec![],
    };
    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("TopLogprob", keys_of(&top)),
        ("ChatTokenLogprob", keys_of(&tok)),
        ("ChatLogprobs", keys_of(&ChatLogprobs::default())),
        ("ChatCompletionMessage", keys_of(&msg)),
        ("ChatChoice", keys_of(&choice)),
        ("ChatCompletion", keys_of(&chat)),
        ("ChatDelta", keys_of(&delta)),
        ("ChatChunkChoice", keys_of(&chunk_choice)),
        ("ChatCompletionChunk", keys_of(&chunk)),
        ("Completion", keys_of(&completion)),
        ("CompletionChoice", keys_of(&cchoice)),
        (
            "CompletionLogprobs",
            keys_of(&CompletionLogprobs::default()),
        ),
        ("Usage", keys_of(&Usage::default())),
        ("Model", keys_of(&card)),
        ("ModelList", keys_of(&list)),
        ("ErrorResponse", keys_of(&ApiError::Timeout.body())),
    ];
    for (name, want) in cases {
        assert_eq!(schema_keys(name), want, "{name}");
    }
    let err = &document()["components"]["schemas"]["ErrorResponse"]["properties"]["error"];
    let err_keys: BTreeSet<String> = err["properties"]
        .as_object()
        .expect("obj")
        .keys()
        .cloned()
        .collect();
    assert_eq!(err_keys, keys_of(&ApiError::Timeout.body().error));
}
