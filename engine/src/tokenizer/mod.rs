//! Tokenizer, chat template and streaming detokenizer.
//!
//! A [`Tokenizer`] comes either from an HF directory (`tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`, optional `chat_template.jinja`)
//! or from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), and always
//! wraps a `tokenizers::Tokenizer`. Chat templates are the model's own Jinja, rendered
//! by minijinja with Python-compatible string methods (see [`chat_template`]).
//!
//! Submodules: `hf_dir` (HF directory loading), `gguf_vocab` (building a tokenizer
//! from GGUF metadata), `pretok` (llama.cpp pre-tokenizer names → regexes), `spm`
//! (SentencePiece BPE from GGUF),
//! `chat_template` (Jinja rendering), `detok` ([`IncrementalDecoder`]), `eos`
//! (end-of-sequence id discovery).
//!
//! Invariants: a `Tokenizer` is immutable after construction and cheap to clone (one
//! `Arc`); every id in [`Tokenizer::eos_token_ids`] and [`Tokenizer::bos_token_id`]
//! is inside the vocabulary; no input (file, metadata, text, ids, template) can make
//! it panic — failures are `EngineError::Tokenizer` / `BadModelFile` /
//! `ChatTemplate`.
//!
//! Prompt assembly: a rendered chat template already contains the BOS token where the
//! model wants it (e.g. `{{ bos_token }}`), so encode its output with
//! `add_special_tokens = false`. Plain completions use `add_special_tokens = true`.

pub mod chat_template;
mod detok;
mod eos;
mod gguf_vocab;
mod hf_dir;
mod pretok;
mod spm;

#[cfg(test)]
mod real_assets_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod text_tests;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gguf::GgufMetadata;
use crate::{EngineError, Result};

pub use chat_template::FALLBACK_CHATML_TEMPLATE;
pub use detok::IncrementalDecoder;

/// One chat message as given to a chat template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Cheap to clone (shared inside); `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    /// Prepend BOS in `encode(.., true)` when the wrapped tokenizer's post-processor
    /// did not (HF `add_bos_token: true` with a post-processor that ignores it).
    ensure_bos: bool,
    template: chat_template::ChatTemplate,
    has_template: bool,
}

/// What a loader found, before eos discovery and template compilation.
pub(crate) struct Parts {
    pub tok: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    /// The tokenizer's own eos (first) plus generation-config / GGUF eot ids.
    pub eos_ids: Vec<u32>,
    pub ensure_bos: bool,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// From an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        Ok(Self::assemble(hf_dir::load(dir)?))
    }

    /// From GGUF metadata (`tokenizer.ggml.model` = "gpt2" byte-level BPE, and
    /// "llama" SentencePiece-style BPE with byte fallback).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Tokenizer> {
        Ok(Self::assemble(gguf_vocab::load(meta)?))
    }

    /// Wraps an already built `tokenizers::Tokenizer` (tests, tools). `eos_token` /
    /// `bos_token` name tokens of its vocabulary.
    pub fn from_parts(
        tok: tokenizers::Tokenizer,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        chat_template: Option<String>,
    ) -> Result<Tokenizer> {
        let lookup = |name: Option<&str>, what: &str| -> Result<Option<u32>> {
            match name {
                None => Ok(None),
                Some(n) => tok.token_to_id(n).map(Some).ok_or_else(|| {
                    EngineError::Tokenizer(format!("{what} token `{n}` is not in the vocabulary"))
                }),
            }
        };
        let bos_id = lookup(bos_token, "bos")?;
        let eos_ids = lookup(eos_token, "eos")?.into_iter().collect();
        Ok(Self::assemble(Parts {
            tok,
            bos_id,
            eos_ids,
            ensure_bos: false,
            chat_template,
        }))
    }

    fn assemble(parts: Parts) -> Tokenizer {
        let Parts {
            tok,
            bos_id,
            eos_ids,
            ensure_bos,
            chat_template,
        } = parts;
        let eos_ids = eos::collect(&tok, &eos_ids);
        let token_text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        let bos_text = token_text(bos_id);
        let eos_text = token_text(eos_ids.first().copied());
        let has_template = chat_template.is_some();
        let source = chat_template.unwrap_or_else(|| FALLBACK_CHATML_TEMPLATE.to_string());
        let template = chat_template::ChatTemplate::new(source, bos_text, eos_text);
        Tokenizer {
            inner: Arc::new(Inner {
                tok,
                bos_id,
                eos_ids,
                ensure_bos: ensure_bos && bos_id.is_some(),
                template,
                has_template,
            }),
        }
    }

    /// Encodes text. `add_special_tokens` adds BOS where the model wants it. Special
    /// tokens written in the text (`<|im_start|>`) are recognised as such.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tok
            .encode(text, add_special_tokens)
            .map_err(|e| EngineError::Tokenizer(format!("encode failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.inner.ensure_bos {
            if let Some(bos) = self.inner.bos_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| EngineError::Tokenizer(format!("decode failed: {e}")))
    }

    /// Number of ids the tokenizer knows (model vocabulary plus added tokens). The
    /// model's embedding table may be larger (padding rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    /// End-of-sequence ids known to the tokenizer side (eos token, `generation_config`
    /// eos ids, chat end-of-turn tokens such as `<|im_end|>`). The primary eos comes
    /// first; no duplicates.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_ids.clone()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    /// Whether the model ships its own chat template. Without one,
    /// [`Tokenizer::apply_chat_template`] uses [`FALLBACK_CHATML_TEMPLATE`].
    pub fn has_chat_template(&self) -> bool {
        self.inner.has_template
    }

    /// Renders the chat template. `extra` holds template kwargs such as
    /// `{"enable_thinking": false}` (a JSON object; null for none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        self.inner
            .template
            .render(messages, add_generation_prompt, extra)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }

    /// The token's text as the vocabulary stores it (byte-level / `▁` form).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.inner.bos_id)
            .field("eos_ids", &self.inner.eos_ids)
            .field("has_chat_template", &self.inner.has_template)
            .finish()
    }
}
