//! Turning backend token deltas into OpenAI output: per-choice state
//! ([`ChoiceOutput`]: reasoning split, logprobs, token count, finish reason) shared
//! by both response modes, and the non-streaming response ([`collect`]).
//!
//! Invariants: the text of a choice is exactly the concatenation of its deltas
//! (minus the reasoning tags when a parser is on); `usage.completion_tokens` is the
//! number of sampled tokens received; `finish_reason` is set from the backend's
//! final event, never guessed.

use axum::response::{IntoResponse, Response};
use pdserve_engine::engine::FinishReason;
use pdserve_engine::tokenizer::Tokenizer;

use crate::config::ReasoningParser;
use crate::error::ApiError;
use crate::generate::{Generation, TokenDelta};
use crate::logprobs;
use crate::openai::response::{
    ChatChoice, ChatCompletion, ChatLogprobs, ChatMessageOut, ChatTokenLogprob, Completion,
    CompletionChoice, CompletionLogprobs, Usage, CHAT_OBJECT, COMPLETION_OBJECT,
};
use crate::reasoning::ReasoningSplitter;
use crate::validate::Endpoint;

/// What every response (and chunk) of one request shares.
pub struct ResponseContext {
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    pub created: u64,
    /// The model name as the client sent it.
    pub model: String,
    pub endpoint: Endpoint,
    pub tokenizer: Tokenizer,
    pub logprobs: bool,
    pub reasoning: Option<ReasoningParser>,
    pub include_usage: bool,
    /// Prompt tokens of all prompts (each counted once, whatever `n`).
    pub prompt_tokens: usize,
}

/// What one delta adds to one choice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Piece {
    pub content: String,
    pub reasoning: String,
    pub chat_logprobs: Vec<ChatTokenLogprob>,
    pub completion_logprobs: CompletionLogprobs,
    pub tokens: usize,
    pub finish_reason: Option<&'static str>,
}

pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

pub struct ChoiceOutput {
    splitter: Option<ReasoningSplitter>,
    text_offset: usize,
    pub completion_tokens: usize,
}

impl ChoiceOutput {
    pub fn new(ctx: &ResponseContext) -> Self {
        let parse = ctx.endpoint == Endpoint::Chat && ctx.reasoning.is_some();
        ChoiceOutput {
            splitter: parse.then(ReasoningSplitter::new),
            text_offset: 0,
            completion_tokens: 0,
        }
    }

    pub fn apply(&mut self, ctx: &ResponseContext, d: &TokenDelta) -> Piece {
        self.completion_tokens += d.tokens.len();
        let mut piece = Piece {
            tokens: d.tokens.len(),
            finish_reason: d.finish.map(finish_reason),
            ..Piece::default()
        };
        match &mut self.splitter {
            None => piece.content = d.text.clone(),
            Some(s) => {
                let mut x = s.push(&d.text);
                if d.finish.is_some() {
                    let rest = s.finish();
                    x.reasoning.push_str(&rest.reasoning);
                    x.content.push_str(&rest.content);
                }
                piece.content = x.content;
                piece.reasoning = x.reasoning;
            }
        }
        if ctx.logprobs {
            match ctx.endpoint {
                Endpoint::Chat => piece.chat_logprobs = logprobs::chat(&ctx.tokenizer, &d.tokens),
                Endpoint::Completions => {
                    piece.completion_logprobs =
                        logprobs::completion(&ctx.tokenizer, &d.tokens, &mut self.text_offset)
                }
            }
        }
        piece
    }
}

/// Runs the generation to the end and answers with one JSON response.
pub async fn collect(mut gen: Generation, ctx: ResponseContext) -> Result<Response, ApiError> {
    let n = gen.choices();
    let mut outputs: Vec<ChoiceOutput> = (0..n).map(|_| ChoiceOutput::new(&ctx)).collect();
    let mut acc: Vec<Piece> = vec![Piece::default(); n];
    while let Some(d) = gen.next().await? {
        let p = outputs[d.choice].apply(&ctx, &d);
        let a = &mut acc[d.choice];
        a.content.push_str(&p.content);
        a.reasoning.push_str(&p.reasoning);
        a.chat_logprobs.extend(p.chat_logprobs);
        a.completion_logprobs.extend(p.completion_logprobs);
        a.finish_reason = p.finish_reason.or(a.finish_reason);
    }
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    let usage = Usage::new(ctx.prompt_tokens, completion_tokens);
    let body = match ctx.endpoint {
        Endpoint::Chat => {
            let parsing = ctx.reasoning.is_some();
            let choices = acc
                .into_iter()
                .enumerate()
                .map(|(index, a)| ChatChoice {
                    index,
                    message: ChatMessageOut {
                        role: "assistant",
                        content: (!parsing || !a.content.is_empty()).then_some(a.content),
                        reasoning_content: (!a.reasoning.is_empty()).then_some(a.reasoning),
                    },
                    logprobs: ctx.logprobs.then_some(ChatLogprobs {
                        content: a.chat_logprobs,
                    }),
                    finish_reason: a.finish_reason,
                })
                .collect();
            serde_json::to_vec(&ChatCompletion {
                id: ctx.id,
                object: CHAT_OBJECT,
                created: ctx.created,
                model: ctx.model,
                choices,
                usage,
            })
        }
        Endpoint::Completions => {
            let choices = acc
                .into_iter()
                .enumerate()
                .map(|(index, a)| CompletionChoice {
                    index,
                    text: a.content,
                    logprobs: ctx.logprobs.then_some(a.completion_logprobs),
                    finish_reason: a.finish_reason,
                })
                .collect();
            serde_json::to_vec(&Completion {
                id: ctx.id,
                object: COMPLETION_OBJECT,
                created: ctx.created,
                model: ctx.model,
                choices,
                usage: Some(Some(usage)),
            })
        }
    }
    .map_err(|e| ApiError::internal(format!("serialize response: {e}")))?;
    gen.record_first_byte(false);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
