//! The API's OpenAPI 3.1 description (`/openapi.json`), written next to nothing but
//! the request and response types it describes.
//!
//! Each type in [`crate::openai`] has one schema here; tests check that every schema
//! lists exactly the fields serde reads or writes for its type, so the document
//! cannot drift from the code silently. The request schemas' property names are also
//! the "known fields" list used to log unknown request fields.
//!
//! Invariant: every `$ref` points at a schema in `components.schemas`.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

fn string() -> Value {
    json!({"type": "string"})
}
fn integer() -> Value {
    json!({"type": "integer"})
}
fn number() -> Value {
    json!({"type": "number"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
fn nullable(v: Value) -> Value {
    json!({"anyOf": [v, {"type": "null"}]})
}
fn any_of(vs: Vec<Value>) -> Value {
    json!({ "anyOf": vs })
}
fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}
fn constant(s: &str) -> Value {
    json!({"type": "string", "const": s})
}
fn described(mut v: Value, d: &str) -> Value {
    v["description"] = Value::from(d);
    v
}
fn object(props: Vec<(&str, Value)>, required: &[&str]) -> Value {
    let mut p = Map::new();
    for (k, v) in props {
        p.insert(k.to_string(), v);
    }
    json!({"type": "object", "properties": p, "required": required})
}

fn sampling_props() -> Vec<(&'static str, Value)> {
    vec![
        (
            "max_tokens",
            described(integer(), "Most tokens to generate (>= 1)."),
        ),
        (
            "temperature",
            described(
                number(),
                "Sampling temperature (>= 0; 0 = greedy). Default 1.",
            ),
        ),
        (
            "top_p",
            described(number(), "Nucleus sampling mass, in (0, 1]."),
        ),
        (
            "top_k",
            described(
                integer(),
                "Keep the k most likely tokens; 0 or -1 disables.",
            ),
        ),
        (
            "min_p",
            described(number(), "Keep tokens with p >= min_p * p_max, in [0, 1]."),
        ),
        ("n", described(integer(), "Choices per prompt (>= 1).")),
        ("stop", any_of(vec![string(), array(string())])),
        (
            "seed",
            described(integer(), "Seed (>= 0); choice j of n uses seed + j."),
        ),
        ("presence_penalty", described(number(), "In [-2, 2].")),
        ("frequency_penalty", described(number(), "In [-2, 2].")),
        (
            "repetition_penalty",
            described(number(), "Multiplicative, > 0; 1 disables."),
        ),
        ("stream", boolean()),
        ("stream_options", r("StreamOptions")),
        ("ignore_eos", boolean()),
        (
            "min_tokens",
            described(integer(), "Generate at least this many tokens."),
        ),
        ("user", string()),
    ]
}

fn schemas() -> Map<String, Value> {
    let usage = object(
        vec![
            ("prompt_tokens", integer()),
            ("completion_tokens", integer()),
            ("total_tokens", integer()),
        ],
        &["prompt_tokens", "completion_tokens", "total_tokens"],
    );
    let mut chat_req = vec![
        ("model", string()),
        ("messages", array(r("ChatMessage"))),
        (
            "max_completion_tokens",
            described(integer(), "Preferred over max_tokens."),
        ),
        ("logprobs", boolean()),
        (
            "top_logprobs",
            described(integer(), "0..=20; needs logprobs: true."),
        ),
        (
            "chat_template_kwargs",
            described(
                json!({"type": "object"}),
                "Extra chat template variables (enable_thinking, ...).",
            ),
        ),
    ];
    chat_req.extend(sampling_props());
    let mut completion_req = vec![
        ("model", string()),
        (
            "prompt",
            any_of(vec![
                string(),
                array(string()),
                array(integer()),
                array(array(integer())),
            ]),
        ),
        (
            "logprobs",
            described(integer(), "Alternatives per token, 0..=20."),
        ),
    ];
    completion_req.extend(sampling_props());
    let top_logprob = object(
        vec![
            ("token", string()),
            ("logprob", number()),
            ("bytes", array(integer())),
        ],
        &["token", "logprob", "bytes"],
    );
    let token_logprob = object(
        vec![
            ("token", string()),
            ("logprob", number()),
            ("bytes", array(integer())),
            ("top_logprobs", array(r("TopLogprob"))),
        ],
        &["token", "logprob", "bytes", "top_logprobs"],
    );
    let finish = nullable(json!({"type": "string", "enum": ["stop", "length"]}));
    let entries: Vec<(&str, Value)> = vec![
        (
            "ChatCompletionRequest",
            object(chat_req, &["model", "messages"]),
        ),
        (
            "CompletionRequest",
            object(completion_req, &["model", "prompt"]),
        ),
        (
            "ChatMessage",
            object(
                vec![
                    (
                        "role",
                        json!({"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]}),
                    ),
                    (
                        "content",
                        nullable(any_of(vec![string(), array(r("ContentPart"))])),
                    ),
                    ("name", string()),
                ],
                &["role"],
            ),
        ),
        (
            "ContentPart",
            object(
                vec![("type", constant("text")), ("text", string())],
                &["type", "text"],
            ),
        ),
        (
            "StreamOptions",
            object(vec![("include_usage", boolean())], &[]),
        ),
        ("Usage", usage),
        (
            "ChatCompletion",
            object(
                vec![
                    ("id", string()),
                    ("object", constant("chat.completion")),
                    ("created", integer()),
                    ("model", string()),
                    ("choices", array(r("ChatChoice"))),
                    ("usage", r("Usage")),
                ],
                &["id", "object", "created", "model", "choices", "usage"],
            ),
        ),
        (
            "ChatChoice",
            object(
                vec![
                    ("index", integer()),
                    ("message", r("ChatCompletionMessage")),
                    ("logprobs", nullable(r("ChatLogprobs"))),
                    ("finish_reason", finish.clone()),
                ],
                &["index", "message", "logprobs", "finish_reason"],
            ),
        ),
        (
            "ChatCompletionMessage",
            object(
                vec![
                    ("role", constant("assistant")),
                    ("content", nullable(string())),
                    ("reasoning_content", nullable(string())),
                ],
                &["role", "content", "reasoning_content"],
            ),
        ),
        (
            "ChatCompletionChunk",
            object(
                vec![
                    ("id", string()),
                    ("object", constant("chat.completion.chunk")),
                    ("created", integer()),
                    ("model", string()),
                    ("choices", array(r("ChatChunkChoice"))),
                    ("usage", nullable(r("Usage"))),
                ],
                &["id", "object", "created", "model", "choices"],
            ),
        ),
        (
            "ChatChunkChoice",
            object(
                vec![
                    ("index", integer()),
                    ("delta", r("ChatDelta")),
                    ("logprobs", nullable(r("ChatLogprobs"))),
                    ("finish_reason", finish.clone()),
                ],
                &["index", "delta", "logprobs", "finish_reason"],
            ),
        ),
        (
            "ChatDelta",
            object(
                vec![
                    ("role", constant("assistant")),
                    ("content", string()),
                    ("reasoning_content", string()),
                ],
                &[],
            ),
        ),
        (
            "ChatLogprobs",
            object(
                vec![("content", array(r("ChatTokenLogprob")))],
                &["content"],
            ),
        ),
        ("ChatTokenLogprob", token_logprob),
        ("TopLogprob", top_logprob),
        (
            "Completion",
            described(
                object(
                    vec![
                        ("id", string()),
                        ("object", constant("text_completion")),
                        ("created", integer()),
                        ("model", string()),
                        ("choices", array(r("CompletionChoice"))),
                        ("usage", nullable(r("Usage"))),
                    ],
                    &["id", "object", "created", "model", "choices"],
                ),
                "A completion; also the shape of each completion stream chunk.",
            ),
        ),
        (
            "CompletionChoice",
            object(
                vec![
                    ("index", integer()),
                    ("text", string()),
                    ("logprobs", nullable(r("CompletionLogprobs"))),
                    ("finish_reason", finish),
                ],
                &["index", "text", "logprobs", "finish_reason"],
            ),
        ),
        (
            "CompletionLogprobs",
            object(
                vec![
                    ("tokens", array(string())),
                    ("token_logprobs", array(number())),
                    (
                        "top_logprobs",
                        array(
                            json!({"type": "object", "additionalProperties": {"type": "number"}}),
                        ),
                    ),
                    ("text_offset", array(integer())),
                ],
                &["tokens", "token_logprobs", "top_logprobs", "text_offset"],
            ),
        ),
        (
            "ModelList",
            object(
                vec![("object", constant("list")), ("data", array(r("Model")))],
                &["object", "data"],
            ),
        ),
        (
            "Model",
            object(
                vec![
                    ("id", string()),
                    ("object", constant("model")),
                    ("created", integer()),
                    ("owned_by", string()),
                    ("max_model_len", integer()),
                ],
                &["id", "object", "created", "owned_by", "max_model_len"],
            ),
        ),
        (
            "ErrorResponse",
            object(
                vec![(
                    "error",
                    object(
                        vec![
                            ("message", string()),
                            ("type", string()),
                            ("param", nullable(string())),
                            ("code", nullable(string())),
                        ],
                        &["message", "type", "param", "code"],
                    ),
                )],
                &["error"],
            ),
        ),
    ];
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn errors(codes: &[&str]) -> Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            (
                c.to_string(),
                json!({"description": "OpenAI error", "content": json_content(r("ErrorResponse"))}),
            )
        })
        .collect()
}

fn generation_op(summary: &str, req: &str, resp: &str, chunk: &str) -> Value {
    let mut responses = errors(&["400", "401", "404", "413", "429", "503", "504", "500"]);
    responses.insert(
        "200".into(),
        json!({
            "description": "The response, or with stream: true an SSE stream of chunks ending with data: [DONE]",
            "content": {
                "application/json": {"schema": r(resp)},
                "text/event-stream": {"schema": described(string(), &format!("data: <{chunk} JSON> frames"))},
            }
        }),
    );
    json!({"post": {
        "summary": summary,
        "requestBody": {"required": true, "content": json_content(r(req))},
        "responses": responses,
    }})
}

fn plain_get(summary: &str, ok: &str, content_type: &str) -> Value {
    json!({"get": {"summary": summary, "responses": {
        "200": {"description": ok, "content": {content_type: {"schema": string()}}},
    }}})
}

fn build() -> Value {
    let mut model_responses = errors(&["401", "404"]);
    model_responses.insert(
        "200".into(),
        json!({"description": "The model", "content": json_content(r("Model"))}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pdserve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "OpenAI-compatible API of pdserve (prefill/decode disaggregated LLM serving).",
        },
        "paths": {
            "/v1/chat/completions": generation_op("Chat completion", "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk"),
            "/v1/completions": generation_op("Text completion", "CompletionRequest", "Completion", "Completion"),
            "/v1/models": {"get": {"summary": "Models served now", "responses": {
                "200": {"description": "The model list", "content": json_content(r("ModelList"))},
                "401": errors(&["401"])["401"].clone(),
            }}},
            "/v1/models/{model}": {"get": {
                "summary": "One served model",
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": string()}],
                "responses": model_responses,
            }},
            "/health": {"get": {"summary": "Ready to serve", "responses": {
                "200": {"description": "A decode worker serves a model and the server is not draining"},
                "503": {"description": "No worker, or draining", "content": json_content(r("ErrorResponse"))},
            }}},
            "/live": plain_get("The process is up", "Always", "text/plain"),
            "/metrics": plain_get("Prometheus metrics", "Text exposition format 0.0.4", "text/plain"),
            "/openapi.json": plain_get("This document", "OpenAPI 3.1", "application/json"),
        },
        "components": {"schemas": schemas()},
    })
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// Property names of a schema in the document (request field lists).
pub fn fields_of(schema: &str) -> Vec<&'static str> {
    document()["components"]["schemas"][schema]["properties"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
