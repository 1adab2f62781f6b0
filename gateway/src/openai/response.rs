//! OpenAI response bodies, exactly as clients expect them: full responses, stream
//! chunks, usage, logprobs in the chat and the legacy completion shapes, and the
//! model list.
//!
//! Invariants: field order and names follow OpenAI's; optional fields that OpenAI
//! always sends (`logprobs`, `finish_reason`, `message.content`,
//! `message.reasoning_content`) serialize as `null` rather than disappearing, while
//! stream deltas carry only what changed. `usage` in chunks is absent unless
//! `stream_options.include_usage`, then `null` except in the final usage chunk.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

// ---- chat -------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

// ---- completions ------------------------------------------------------------

/// A full completion response; also the shape of a completion stream chunk
/// (OpenAI uses `text_completion` for both).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

// ---- models -----------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Prompt + completion tokens one request may use (vLLM's extension).
    pub max_model_len: usize,
}

pub const CHAT_OBJECT: &str = "chat.completion";
pub const CHAT_CHUNK_OBJECT: &str = "chat.completion.chunk";
pub const COMPLETION_OBJECT: &str = "text_completion";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_has_the_seed_shape() {
        let r = ChatCompletion {
            id: "chatcmpl-1".into(),
            object: CHAT_OBJECT,
            created: 1,
            model: "qwen3".into(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessageOut {
                    role: "assistant",
                    content: Some("hi".into()),
                    reasoning_content: None,
                },
                logprobs: None,
                finish_reason: Some("length"),
            }],
            usage: Usage::new(25, 29),
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(
            v["choices"][0]["message"]["reasoning_content"],
            serde_json::Value::Null
        );
        assert!(v["choices"][0]["message"]
            .as_object()
            .expect("obj")
            .contains_key("reasoning_content"));
        assert_eq!(v["usage"]["total_tokens"], 54);
        assert_eq!(v["object"], "chat.completion");
    }

    #[test]
    fn chunk_usage_is_absent_null_or_set() {
        let mut c = ChatCompletionChunk {
            id: "x".into(),
            object: CHAT_CHUNK_OBJECT,
            created: 0,
            model: "m".into(),
            choices: vec![],
            usage: None,
        };
        let v = serde_json::to_value(&c).expect("json");
        assert!(!v.as_object().expect("obj").contains_key("usage"));
        c.usage = Some(None);
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["usage"], serde_json::Value::Null);
        assert!(v.as_object().expect("obj").contains_key("usage"));
        c.usage = Some(Some(Usage::new(1, 2)));
        assert_eq!(
            serde_json::to_value(&c).expect("json")["usage"]["total_tokens"],
            3
        );
        let d = serde_json::to_value(ChatDelta::default()).expect("json");
        assert_eq!(d, serde_json::json!({}));
    }
}
