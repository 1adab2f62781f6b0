//! Parse, don't validate: a raw OpenAI request becomes a [`ValidRequest`] — sampling
//! parameters range-checked by the engine's own rules, `n`, logprobs and the prompt
//! source resolved — or a 400 naming the field.
//!
//! Invariants: a `ValidRequest` holds no value the engine would reject except what
//! depends on the model (prompt length, token ids, the default `max_tokens`), which
//! [`crate::prompt`] checks once the model is known; every message names the field.

use pdserve_engine::sampling::validate::MAX_LOGPROBS;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::tokenizer::ChatMessage;
use pdserve_engine::EngineError;
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::request::{
    ChatCompletionRequest, CompletionRequest, MessageContent, Prompt, SamplingFields, Stop,
};

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

/// Where the prompt tokens come from.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    /// Rendered with the model's chat template, then tokenized.
    Chat {
        messages: Vec<ChatMessage>,
        /// A JSON object (or null) of extra template variables.
        template_kwargs: Value,
    },
    /// One completion (× n) per text.
    Texts(Vec<String>),
    /// One completion (× n) per id list; ids not yet checked against the vocabulary.
    Tokens(Vec<Vec<u32>>),
}

impl PromptSource {
    pub fn count(&self) -> usize {
        match self {
            PromptSource::Chat { .. } => 1,
            PromptSource::Texts(t) => t.len(),
            PromptSource::Tokens(t) => t.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub source: PromptSource,
    /// Checked with `SamplingParams::validate`; `max_tokens` is a placeholder when
    /// [`ValidRequest::max_tokens`] is `None`.
    pub params: SamplingParams,
    /// What the client asked for; `None` = as much as the context allows.
    pub max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
}

impl ValidRequest {
    /// Choices in the response: `n` per prompt.
    pub fn choices(&self) -> usize {
        self.n * self.source.count()
    }
}

/// Default `max_tokens` of a completion request (OpenAI's legacy default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

pub fn chat(req: ChatCompletionRequest, max_choices: usize) -> Result<ValidRequest, ApiError> {
    let c = req.chat;
    if c.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(c.messages.len());
    for (i, m) in c.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" | "tool" => m.role,
            "developer" => "system".to_string(),
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("messages[{i}].role must be one of system, user, assistant, tool; got {other:?}"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t,
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => texts.push(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                format!("messages[{i}].content[{j}] has no text"),
                            ))
                        }
                        (other, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].type"),
                                format!("messages[{i}].content[{j}]: only text parts are supported, got {other:?}"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    let max_tokens = c.max_completion_tokens.or(req.sampling.max_tokens);
    let max_field = if c.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let logprobs = match (c.logprobs.unwrap_or(false), c.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ))
        }
        (false, None) => None,
        (true, top) => {
            let top = non_negative("top_logprobs", top.unwrap_or(0))?;
            if top > MAX_LOGPROBS {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be <= {MAX_LOGPROBS}, got {top}"),
                ));
            }
            Some(top)
        }
    };
    let template_kwargs = c.chat_template_kwargs.map_or(Value::Null, Value::Object);
    build(
        Endpoint::Chat,
        c.model,
        PromptSource::Chat {
            messages,
            template_kwargs,
        },
        &req.sampling,
        (max_field, max_tokens),
        logprobs,
        max_choices,
    )
}

pub fn completion(req: CompletionRequest, max_choices: usize) -> Result<ValidRequest, ApiError> {
    let c = req.completion;
    let source = match c.prompt {
        Prompt::Text(t) => PromptSource::Texts(vec![t]),
        Prompt::Texts(t) => PromptSource::Texts(t),
        Prompt::Tokens(ids) => PromptSource::Tokens(vec![token_ids(0, ids)?]),
        Prompt::TokenLists(lists) => PromptSource::Tokens(
            lists
                .into_iter()
                .enumerate()
                .map(|(i, ids)| token_ids(i, ids))
                .collect::<Result<_, _>>()?,
        ),
    };
    if source.count() == 0 {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    let logprobs = c
        .logprobs
        .map(|k| non_negative("logprobs", k))
        .transpose()?;
    build(
        Endpoint::Completions,
        c.model,
        source,
        &req.sampling,
        ("max_tokens", req.sampling.max_tokens),
        logprobs,
        max_choices,
    )
}

fn token_ids(prompt: usize, ids: Vec<i64>) -> Result<Vec<u32>, ApiError> {
    ids.into_iter()
        .map(|id| {
            u32::try_from(id).map_err(|_| {
                ApiError::invalid(
                    "prompt",
                    format!("prompt {prompt}: token id {id} is out of range"),
                )
            })
        })
        .collect()
}

fn non_negative(field: &str, v: i64) -> Result<usize, ApiError> {
    usize::try_from(v)
        .map_err(|_| ApiError::invalid(field, format!("{field} must be >= 0, got {v}")))
}

fn finite(field: &str, v: Option<f64>, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => Ok(x as f32),
        Some(x) => Err(ApiError::invalid(
            field,
            format!("{field} must be a finite number, got {x}"),
        )),
    }
}

fn build(
    endpoint: Endpoint,
    model: String,
    source: PromptSource,
    s: &SamplingFields,
    (max_field, max_tokens): (&str, Option<i64>),
    logprobs: Option<usize>,
    max_choices: usize,
) -> Result<ValidRequest, ApiError> {
    let n = s.n.unwrap_or(1);
    if n < 1 {
        return Err(ApiError::invalid("n", format!("n must be >= 1, got {n}")));
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n.saturating_mul(source.count()) > max_choices {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n ({n}) × prompts ({}) exceeds the limit of {max_choices} choices",
                source.count()
            ),
        ));
    }
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                max_field,
                format!("{max_field} must be >= 1, got {m}"),
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
    };
    let seed = match s.seed {
        Some(v) if v < 0 => {
            return Err(ApiError::invalid(
                "seed",
                format!("seed must be >= 0, got {v}"),
            ))
        }
        v => v.map(|v| v as u64),
    };
    let top_k = match s.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k < -1 => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be >= 1, or 0 / -1 to disable; got {k}"),
            ))
        }
        k => usize::try_from(k).unwrap_or(usize::MAX),
    };
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(x)) => vec![x.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let params = SamplingParams {
        temperature: finite("temperature", s.temperature, 1.0)?,
        top_k,
        top_p: finite("top_p", s.top_p, 1.0)?,
        min_p: finite("min_p", s.min_p, 0.0)?,
        seed,
        repetition_penalty: finite("repetition_penalty", s.repetition_penalty, 1.0)?,
        presence_penalty: finite("presence_penalty", s.presence_penalty, 0.0)?,
        frequency_penalty: finite("frequency_penalty", s.frequency_penalty, 0.0)?,
        stop,
        stop_token_ids: Vec::new(),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        min_tokens: non_negative("min_tokens", s.min_tokens.unwrap_or(0))?,
        // Placeholder until the model's context is known (see `prompt`).
        max_tokens: max_tokens.unwrap_or(usize::MAX),
        logprobs,
    };
    check_params(&params)?;
    let stream = s.stream.unwrap_or(false);
    Ok(ValidRequest {
        endpoint,
        model,
        source,
        params,
        max_tokens,
        n,
        stream,
        include_usage: stream
            && s.stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        user: s.user.clone(),
    })
}

/// The engine's range checks, as a 400 whose `param` is the field the message
/// starts with.
pub fn check_params(p: &SamplingParams) -> Result<(), ApiError> {
    p.validate().map_err(|e| match e {
        EngineError::InvalidRequest(message) => {
            let param = message
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .filter(|w| !w.is_empty())
                .map(str::to_string);
            ApiError::InvalidField { param, message }
        }
        other => ApiError::internal(format!("sampling params check: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_req(extra: &str) -> Result<ValidRequest, ApiError> {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        chat(ChatCompletionRequest::parse(body.as_bytes())?, 128)
    }

    fn param_of(r: Result<ValidRequest, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidField { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_openai() {
        let v = chat_req("").expect("valid");
        assert_eq!(v.params.temperature, 1.0);
        assert_eq!(v.params.top_p, 1.0);
        assert_eq!(v.n, 1);
        assert_eq!(v.max_tokens, None);
        assert!(!v.stream && !v.include_usage);
        assert_eq!(v.params.logprobs, None);
    }

    #[test]
    fn every_out_of_range_value_is_a_400_naming_its_field() {
        let cases = [
            (r#","temperature":-0.5"#, "temperature"),
            (r#","top_p":0"#, "top_p"),
            (r#","top_p":1.5"#, "top_p"),
            (r#","n":0"#, "n"),
            (r#","n":1000"#, "n"),
            (r#","max_tokens":0"#, "max_tokens"),
            (r#","max_completion_tokens":-3"#, "max_completion_tokens"),
            (r#","seed":-1"#, "seed"),
            (r#","top_k":-2"#, "top_k"),
            (r#","min_p":2"#, "min_p"),
            (r#","presence_penalty":3"#, "presence_penalty"),
            (r#","frequency_penalty":-3"#, "frequency_penalty"),
            (r#","repetition_penalty":0"#, "repetition_penalty"),
            (r#","min_tokens":-1"#, "min_tokens"),
            (r#","max_tokens":2,"min_tokens":3"#, "min_tokens"),
            (r#","logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#","top_logprobs":2"#, "top_logprobs"),
            (r#","stop":["a",""]"#, "stop"),
            (r#","temperature":1e300"#, "temperature"),
        ];
        for (extra, field) in cases {
            assert_eq!(param_of(chat_req(extra)), field, "{extra}");
        }
    }

    #[test]
    fn messages_are_checked() {
        let bad = |body: &str| {
            chat(
                ChatCompletionRequest::parse(body.as_bytes()).expect("parse"),
                128,
            )
        };
        assert_eq!(param_of(bad(r#"{"model":"m","messages":[]}"#)), "messages");
        assert_eq!(
            param_of(bad(
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#
            )),
            "messages[0].role"
        );
        assert_eq!(
            param_of(bad(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
            )),
            "messages[0].content[0].type"
        );
        let v = bad(r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant"}]}"#)
            .expect("valid");
        match v.source {
            PromptSource::Chat { messages, .. } => {
                assert_eq!(messages[0], ChatMessage::new("system", "a\nb"));
                assert_eq!(messages[1], ChatMessage::new("assistant", ""));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chat_options_map_to_params() {
        let v = chat_req(
            r#","max_tokens":5,"max_completion_tokens":7,"logprobs":true,"top_logprobs":3,
            "seed":42,"stop":"x","stream":true,"stream_options":{"include_usage":true},
            "top_k":-1,"temperature":0,"ignore_eos":true,"min_tokens":2,"n":3,
            "chat_template_kwargs":{"enable_thinking":false}"#,
        )
        .expect("valid");
        assert_eq!(v.max_tokens, Some(7));
        assert_eq!(v.params.logprobs, Some(3));
        assert_eq!(v.params.seed, Some(42));
        assert_eq!(v.params.stop, vec!["x".to_string()]);
        assert_eq!(v.params.top_k, 0);
        assert!(v.params.ignore_eos);
        assert_eq!(v.params.min_tokens, 2);
        assert!(v.stream && v.include_usage);
        assert_eq!(v.choices(), 3);
        match v.source {
            PromptSource::Chat {
                template_kwargs, ..
            } => assert_eq!(template_kwargs["enable_thinking"], false),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn completion_prompts() {
        let parse = |p: &str| {
            let body = format!(r#"{{"model":"m","prompt":{p},"n":2}}"#);
            completion(CompletionRequest::parse(body.as_bytes())?, 128)
        };
        let v = parse(r#"["a","b","c"]"#).expect("valid");
        assert_eq!(v.choices(), 6);
        assert_eq!(v.max_tokens, None);
        assert_eq!(param_of(parse("[]")), "prompt");
        assert_eq!(param_of(parse("[1,-2]")), "prompt");
        let v = parse("[[1,2],[3]]").expect("valid");
        assert_eq!(v.source, PromptSource::Tokens(vec![vec![1, 2], vec![3]]));
        let body = br#"{"model":"m","prompt":"x","logprobs":-1}"#;
        assert_eq!(
            param_of(completion(
                CompletionRequest::parse(body).expect("parse"),
                128
            )),
            "logprobs"
        );
    }
}
