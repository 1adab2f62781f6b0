//! Tokenizer, chat template and streaming detokenizer.
//!
//! A [`Tokenizer`] comes either from an HF directory (`tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`) or from GGUF metadata
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`), and always wraps a
//! `tokenizers::Tokenizer`. Chat templates are the model's own Jinja, rendered by
//! minijinja with Python-compatible string methods.
//!
//! OWNER: helper B. Public API below is fixed; fill in bodies, add submodules
//! (`chat_template`, `gguf_vocab`, `detok`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::gguf::GgufMetadata;
use crate::Result;

/// One chat message as given to a chat template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Cheap to clone (shared inside); `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    // helper B
}

impl Tokenizer {
    /// From an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let _ = dir;
        todo!("helper B")
    }
    /// From GGUF metadata (`tokenizer.ggml.model` = "gpt2" byte-level BPE, and
    /// "llama" SentencePiece-style if feasible).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Tokenizer> {
        let _ = meta;
        todo!("helper B")
    }
    /// Encodes text. `add_special_tokens` adds BOS where the model wants it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let _ = (text, add_special_tokens);
        todo!("helper B")
    }
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let _ = (ids, skip_special_tokens);
        todo!("helper B")
    }
    pub fn vocab_size(&self) -> usize {
        todo!("helper B")
    }
    /// End-of-sequence ids known to the tokenizer side (eos token, `generation_config`
    /// eos ids, chat end-of-turn tokens such as `<|im_end|>`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        todo!("helper B")
    }
    pub fn bos_token_id(&self) -> Option<u32> {
        todo!("helper B")
    }
    pub fn has_chat_template(&self) -> bool {
        todo!("helper B")
    }
    /// Renders the chat template. `extra` holds template kwargs such as
    /// `{"enable_thinking": false}` (a JSON object; null for none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let _ = (messages, add_generation_prompt, extra);
        todo!("helper B")
    }
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        todo!("helper B")
    }
}

/// Turns a token stream into text deltas that never split a UTF-8 character (a
/// byte-fallback or byte-level token that ends mid-character is held back).
/// Holds no reference to the tokenizer so that an engine can keep one per sequence.
pub struct IncrementalDecoder {
    // helper B
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        let _ = skip_special_tokens;
        todo!("helper B")
    }
    /// Adds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        let _ = (tokenizer, token);
        todo!("helper B")
    }
    /// Whatever is still held back at end of stream (lossy-decoded).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> String {
        let _ = tokenizer;
        todo!("helper B")
    }
}
