//! OpenAI request bodies as they arrive: every field optional where OpenAI's is,
//! numbers wide (`i64`/`f64`) so that out-of-range values reach validation and get
//! a message naming the field rather than a type error.
//!
//! A request is parsed in two passes over one JSON object: the endpoint's own fields
//! ([`ChatFields`] / [`CompletionFields`]) and the shared [`SamplingFields`]. Serde
//! ignores unknown keys; [`unknown_keys`] lists them for a debug log. Parse errors
//! carry the JSON path of the offending field (`messages[0].content`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Fields shared by `/v1/chat/completions` and `/v1/completions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `/v1/chat/completions` fields besides [`SamplingFields`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatFields {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    /// Preferred over `max_tokens` when both are given.
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// Extra chat template variables, e.g. `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    /// Absent or null for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `/v1/completions` fields besides [`SamplingFields`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionFields {
    pub model: String,
    pub prompt: Prompt,
    /// Number of alternatives per token (0 = only the chosen token's logprob).
    pub logprobs: Option<i64>,
}

/// A prompt: text, several texts (one completion each), token ids, or several
/// token id lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatCompletionRequest {
    pub chat: ChatFields,
    pub sampling: SamplingFields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub completion: CompletionFields,
    pub sampling: SamplingFields,
}

impl ChatCompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    /// From a body already parsed by [`parse_object`].
    pub fn from_object(obj: &Value) -> Result<Self, ApiError> {
        Ok(ChatCompletionRequest {
            chat: from_object(obj)?,
            sampling: from_object(obj)?,
        })
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    /// From a body already parsed by [`parse_object`].
    pub fn from_object(obj: &Value) -> Result<Self, ApiError> {
        Ok(CompletionRequest {
            completion: from_object(obj)?,
            sampling: from_object(obj)?,
        })
    }
}

/// The body as a JSON object, or a 400 that says what is wrong with it.
pub fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadJson {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
    })?;
    if !value.is_object() {
        return Err(ApiError::BadJson {
            message: "the request body must be a JSON object".into(),
            param: None,
        });
    }
    Ok(value)
}

fn from_object<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::BadJson {
                message: inner.to_string(),
                param: None,
            }
        } else {
            ApiError::BadJson {
                message: format!("{path}: {inner}"),
                param: Some(path),
            }
        }
    })
}

/// Keys of `obj` (a JSON object) that are not in `known`.
pub fn unknown_keys(obj: &Value, known: &[&str]) -> Vec<String> {
    obj.as_object()
        .map(|map| {
            map.keys()
                .filter(|k| !known.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_request_parses() {
        let body = br#"{"model": "qwen3", "messages": [{"role": "user", "content": "Explain"}],
            "stream": false, "max_tokens": 30}"#;
        let r = ChatCompletionRequest::parse(body).expect("parse");
        assert_eq!(r.chat.model, "qwen3");
        assert_eq!(r.sampling.max_tokens, Some(30));
        assert_eq!(r.sampling.stream, Some(false));
        assert_eq!(
            r.chat.messages[0].content,
            Some(MessageContent::Text("Explain".into()))
        );
    }

    #[test]
    fn content_parts_stop_and_prompts_in_every_form() {
        let body = br#"{"model": "m", "messages": [{"role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null}], "stop": "x"}"#;
        let r = ChatCompletionRequest::parse(body).expect("parse");
        assert!(
            matches!(r.chat.messages[0].content, Some(MessageContent::Parts(ref p)) if p.len() == 2)
        );
        assert_eq!(r.chat.messages[1].content, None);
        assert_eq!(r.sampling.stop, Some(Stop::One("x".into())));
        for (prompt, want) in [
            (r#""hi""#, Prompt::Text("hi".into())),
            (r#"["a","b"]"#, Prompt::Texts(vec!["a".into(), "b".into()])),
            (r#"[1,2]"#, Prompt::Tokens(vec![1, 2])),
            (
                r#"[[1],[2,3]]"#,
                Prompt::TokenLists(vec![vec![1], vec![2, 3]]),
            ),
        ] {
            let body = format!(r#"{{"model":"m","prompt":{prompt},"stop":["a","b"]}}"#);
            let r = CompletionRequest::parse(body.as_bytes()).expect("parse");
            assert_eq!(r.completion.prompt, want);
            assert_eq!(
                r.sampling.stop,
                Some(Stop::Many(vec!["a".into(), "b".into()]))
            );
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let body = br#"{"model": "m", "messages": [], "temperature": "hot"}"#;
        match ChatCompletionRequest::parse(body) {
            Err(ApiError::BadJson { param, message }) => {
                assert_eq!(param.as_deref(), Some("temperature"));
                assert!(message.contains("temperature"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#;
        match ChatCompletionRequest::parse(body) {
            Err(ApiError::BadJson { param, .. }) => {
                assert_eq!(param.as_deref(), Some("messages[0].content"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_non_object_bodies_are_rejected() {
        for body in [&b"{"[..], b"[1]", b"", b"null", b"\"x\""] {
            assert!(
                matches!(
                    ChatCompletionRequest::parse(body),
                    Err(ApiError::BadJson { .. })
                ),
                "{body:?}"
            );
        }
        match CompletionRequest::parse(br#"{"prompt": "x"}"#) {
            Err(ApiError::BadJson { message, .. }) => {
                assert!(message.contains("model"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_listed() {
        let body = br#"{"model": "m", "tools": [], "foo": 1}"#;
        let mut u = unknown_keys(&parse_object(body).expect("object"), &["model"]);
        u.sort();
        assert_eq!(u, vec!["foo".to_string(), "tools".to_string()]);
        assert!(
            ChatCompletionRequest::parse(br#"{"model":"m","messages":[],"foo":{"x":1}}"#).is_ok()
        );
    }
}
