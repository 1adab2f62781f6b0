//! Streaming responses: Server-Sent Events, one `data: {json}\n\n` frame per chunk,
//! ending with `data: [DONE]\n\n`.
//!
//! Frame order: (chat) one role chunk per choice, content chunks as tokens arrive,
//! the final chunk of each choice carrying its `finish_reason`, then (with
//! `stream_options.include_usage`) one chunk with empty `choices` and the usage,
//! then `[DONE]`. A failure after the stream began is a `data: {"error":…}` frame
//! (the same body as the HTTP error) followed by `[DONE]`.
//!
//! The first frame handed to hyper records the gateway overhead
//! ([`Generation::record_first_byte`]).
//!
//! Invariants: the stream owns the [`Generation`]: when the client goes away the
//! body is dropped, and with it the generation, which cancels the backend
//! requests; `[DONE]` is always the last frame of a stream that ends.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::error::ApiError;
use crate::generate::Generation;
use crate::openai::response::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, Completion, CompletionChoice,
    Usage, CHAT_CHUNK_OBJECT, COMPLETION_OBJECT,
};
use crate::output::{ChoiceOutput, Piece, ResponseContext};
use crate::validate::Endpoint;

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// A `data:` frame holding `value` as JSON.
pub fn frame<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let mut out = Vec::with_capacity(json.len() + 8);
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        }
        Err(e) => frame(&ApiError::internal(format!("serialize chunk: {e}")).body()),
    }
}

struct SseState {
    gen: Generation,
    ctx: ResponseContext,
    outputs: Vec<ChoiceOutput>,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl SseState {
    fn usage_field(&self) -> Option<Option<Usage>> {
        self.ctx.include_usage.then_some(None)
    }

    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Option<Usage>>) -> Bytes {
        frame(&ChatCompletionChunk {
            id: self.ctx.id.clone(),
            object: CHAT_CHUNK_OBJECT,
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        })
    }

    fn completion_chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Option<Usage>>,
    ) -> Bytes {
        frame(&Completion {
            id: self.ctx.id.clone(),
            object: COMPLETION_OBJECT,
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        })
    }

    fn role_chunks(&mut self) {
        if self.ctx.endpoint != Endpoint::Chat {
            return;
        }
        for index in 0..self.outputs.len() {
            let choice = ChatChunkChoice {
                index,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    reasoning_content: None,
                },
                logprobs: None,
                finish_reason: None,
            };
            let f = self.chat_chunk(vec![choice], self.usage_field());
            self.queue.push_back(f);
        }
    }

    /// The chunk for one piece, or none when it adds nothing visible.
    fn piece_chunk(&self, index: usize, p: Piece) -> Option<Bytes> {
        let empty = p.content.is_empty() && p.reasoning.is_empty() && p.finish_reason.is_none();
        if empty && !(self.ctx.logprobs && p.tokens > 0) {
            return None;
        }
        let usage = self.usage_field();
        Some(match self.ctx.endpoint {
            Endpoint::Chat => {
                let choice = ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: None,
                        content: (!p.content.is_empty()).then_some(p.content),
                        reasoning_content: (!p.reasoning.is_empty()).then_some(p.reasoning),
                    },
                    logprobs: self.ctx.logprobs.then_some(ChatLogprobs {
                        content: p.chat_logprobs,
                    }),
                    finish_reason: p.finish_reason,
                };
                self.chat_chunk(vec![choice], usage)
            }
            Endpoint::Completions => {
                let choice = CompletionChoice {
                    index,
                    text: p.content,
                    logprobs: self.ctx.logprobs.then_some(p.completion_logprobs),
                    finish_reason: p.finish_reason,
                };
                self.completion_chunk(vec![choice], usage)
            }
        })
    }

    fn end(&mut self) {
        if self.ctx.include_usage {
            let completion = self.outputs.iter().map(|o| o.completion_tokens).sum();
            let usage = Some(Some(Usage::new(self.ctx.prompt_tokens, completion)));
            let f = match self.ctx.endpoint {
                Endpoint::Chat => self.chat_chunk(Vec::new(), usage),
                Endpoint::Completions => self.completion_chunk(Vec::new(), usage),
            };
            self.queue.push_back(f);
        }
        self.queue.push_back(Bytes::from_static(DONE));
        self.done = true;
    }

    fn fail(&mut self, e: ApiError) {
        e.log(&self.ctx.id);
        let body = e.body();
        self.gen.metrics().stream_errors.inc(&[&body.error.kind]);
        self.queue.push_back(frame(&body));
        self.queue.push_back(Bytes::from_static(DONE));
        self.done = true;
    }

    /// The next frame, or `None` after `[DONE]`.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                self.gen.record_first_byte(true);
                return Some(f);
            }
            if self.done {
                return None;
            }
            match self.gen.next().await {
                Ok(Some(d)) => {
                    let piece = self.outputs[d.choice].apply(&self.ctx, &d);
                    if let Some(f) = self.piece_chunk(d.choice, piece) {
                        self.queue.push_back(f);
                    }
                }
                Ok(None) => self.end(),
                Err(e) => self.fail(e),
            }
        }
    }
}

/// The streaming response for a primed generation.
pub fn respond(gen: Generation, ctx: ResponseContext) -> Response {
    let outputs = (0..gen.choices())
        .map(|_| ChoiceOutput::new(&ctx))
        .collect();
    let mut state = SseState {
        gen,
        ctx,
        outputs,
        queue: VecDeque::new(),
        done: false,
    };
    state.role_chunks();
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        st.next_frame()
            .await
            .map(|f| (Ok::<Bytes, Infallible>(f), st))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Reverse proxies (nginx) must not buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
