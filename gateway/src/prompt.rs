//! From a [`ValidRequest`] and the model that will serve it to prompt token ids:
//! chat template, tokenization, vocabulary and context checks, and the final
//! `max_tokens`.
//!
//! Invariants: every returned prompt is non-empty, holds only ids inside the
//! tokenizer's vocabulary and leaves room for at least one generated token; the
//! returned params pass `SamplingParams::validate` with `max_tokens` no larger than
//! what the shortest remaining context allows.

use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::EngineError;

use crate::backend::ServedModel;
use crate::error::ApiError;
use crate::validate::{
    check_params, Endpoint, PromptSource, ValidRequest, DEFAULT_COMPLETION_MAX_TOKENS,
};

/// Tokenized prompts (one per prompt of the request) and the final params.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub prompts: Vec<Vec<u32>>,
    pub params: SamplingParams,
}

/// Renders and tokenizes on a blocking thread (long prompts take milliseconds).
pub async fn prepare(req: &ValidRequest, model: &ServedModel) -> Result<Prepared, ApiError> {
    let source = req.source.clone();
    let tokenizer = model.tokenizer.clone();
    let prompts = tokio::task::spawn_blocking(move || tokenize(&source, &tokenizer))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    finish(req, model, prompts)
}

fn tokenize(
    source: &PromptSource,
    tokenizer: &pdserve_engine::tokenizer::Tokenizer,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode_err = |e: EngineError| ApiError::internal(format!("tokenize: {e}"));
    match source {
        PromptSource::Chat {
            messages,
            template_kwargs,
        } => {
            let text = tokenizer
                .apply_chat_template(messages, true, template_kwargs)
                .map_err(|e| match e {
                    // Template errors are about the conversation (roles that do not
                    // alternate, `raise_exception` in the template): the client's.
                    EngineError::ChatTemplate(m) => ApiError::invalid("messages", m),
                    other => encode_err(other),
                })?;
            Ok(vec![tokenizer.encode(&text, false).map_err(encode_err)?])
        }
        PromptSource::Texts(texts) => texts
            .iter()
            .map(|t| tokenizer.encode(t, true).map_err(encode_err))
            .collect(),
        PromptSource::Tokens(lists) => {
            let vocab = tokenizer.vocab_size();
            for (i, ids) in lists.iter().enumerate() {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "prompt {i}: token id {bad} is outside the vocabulary (size {vocab})"
                        ),
                    ));
                }
            }
            Ok(lists.clone())
        }
    }
}

fn finish(
    req: &ValidRequest,
    model: &ServedModel,
    prompts: Vec<Vec<u32>>,
) -> Result<Prepared, ApiError> {
    let ctx = model.max_model_len;
    let mut longest = 0;
    for p in &prompts {
        if p.is_empty() {
            let param = if req.endpoint == Endpoint::Chat {
                "messages"
            } else {
                "prompt"
            };
            return Err(ApiError::invalid(
                param,
                format!("{param} must not be empty"),
            ));
        }
        if p.len() >= ctx {
            return Err(ApiError::PromptTooLong {
                prompt_tokens: p.len(),
                max_context: ctx,
            });
        }
        longest = longest.max(p.len());
    }
    let room = ctx - longest;
    let wanted = match (req.max_tokens, req.endpoint) {
        (Some(m), _) => m,
        (None, Endpoint::Chat) => room,
        (None, Endpoint::Completions) => DEFAULT_COMPLETION_MAX_TOKENS,
    };
    let mut params = req.params.clone();
    // The engine stops at the context limit anyway (finish_reason "length");
    // asking for more than fits is not an error.
    params.max_tokens = wanted.min(room);
    check_params(&params)?;
    Ok(Prepared { prompts, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
    use crate::validate;
    use pdserve_engine::fixtures::{write_tokenizer_files, TinyModelSpec};
    use pdserve_engine::tokenizer::Tokenizer;

    fn model(max_model_len: usize) -> (tempfile::TempDir, ServedModel) {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tokenizer_files(&TinyModelSpec::tiny_llama(), dir.path()).expect("write");
        let tokenizer = Tokenizer::from_hf_dir(dir.path()).expect("load");
        (
            dir,
            ServedModel {
                name: "tiny".into(),
                tokenizer,
                max_model_len,
            },
        )
    }

    fn run(req: ValidRequest, m: &ServedModel) -> Result<Prepared, ApiError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(prepare(&req, m))
    }

    fn chat(body: &str) -> ValidRequest {
        validate::chat(
            ChatCompletionRequest::parse(body.as_bytes()).expect("parse"),
            128,
        )
        .expect("valid")
    }

    fn completion(body: &str) -> ValidRequest {
        validate::completion(
            CompletionRequest::parse(body.as_bytes()).expect("parse"),
            128,
        )
        .expect("valid")
    }

    #[test]
    fn chat_is_templated_and_fills_max_tokens_from_the_context() {
        let (_d, m) = model(512);
        let p = run(
            chat(r#"{"model":"tiny","messages":[{"role":"user","content":"Hello world"}]}"#),
            &m,
        )
        .expect("prepared");
        let text = m.tokenizer.decode(&p.prompts[0], false).expect("decode");
        assert_eq!(
            text,
            "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(p.params.max_tokens, 512 - p.prompts[0].len());
    }

    #[test]
    fn completion_defaults_to_16_and_clamps_to_the_context() {
        let (_d, m) = model(20);
        let p = run(completion(r#"{"model":"tiny","prompt":"Hello"}"#), &m).expect("ok");
        assert_eq!(p.params.max_tokens, 16);
        let p = run(
            completion(r#"{"model":"tiny","prompt":[1,2,3,4,5,6,7,8,9,10],"max_tokens":100}"#),
            &m,
        )
        .expect("ok");
        assert_eq!(p.params.max_tokens, 10);
    }

    #[test]
    fn too_long_prompts_and_bad_ids_are_400s() {
        let (_d, m) = model(8);
        let long = format!(r#"{{"model":"tiny","prompt":[{}]}}"#, ["1"; 9].join(","));
        match run(completion(&long), &m) {
            Err(ApiError::PromptTooLong {
                prompt_tokens: 9,
                max_context: 8,
            }) => {}
            other => panic!("{other:?}"),
        }
        match run(completion(r#"{"model":"tiny","prompt":[1, 5000]}"#), &m) {
            Err(ApiError::InvalidField { message, .. }) => {
                assert!(message.contains("5000"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match run(completion(r#"{"model":"tiny","prompt":""}"#), &m) {
            Err(ApiError::InvalidField { param, .. }) => {
                assert_eq!(param.as_deref(), Some("prompt"))
            }
            other => panic!("{other:?}"),
        }
    }
}
