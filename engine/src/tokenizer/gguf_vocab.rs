//! Building a `tokenizers::Tokenizer` from GGUF `tokenizer.ggml.*` metadata.
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE. `tokens` are the vocabulary in
//!   byte-level form, `merges` are `"left right"` strings in rank order, and the
//!   pre-tokenizer comes from `tokenizer.ggml.pre` (see `pretok`).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE (see `spm`).
//!
//! In both, `token_type` 3 (control) and 2 (unknown) tokens become special added tokens (matched in
//! input text, skipped by `skip_special_tokens`) and type 4 (user-defined) tokens
//! become non-special added tokens. Special ids (`bos/eos/eot/eom_token_id`) outside
//! the vocabulary are ignored with a warning. BOS/EOS insertion
//! (`add_bos_token`/`add_eos_token`) is the tokenizer's post-processor, so
//! `inner().encode(text, true)` behaves like [`super::Tokenizer::encode`].
//!
//! Invariant: every malformed value yields `EngineError::Tokenizer` naming the key.

use serde_json::json;
use tokenizers::models::bpe::Vocab;
use tokenizers::{AddedToken, PostProcessorWrapper};

use super::{pretok, spm, Parts};
use crate::gguf::{GgufMetadata, GgufValue};
use crate::{EngineError, Result};

pub(super) const TYPE_NORMAL: i64 = 1;
pub(super) const TYPE_UNKNOWN: i64 = 2;
pub(super) const TYPE_CONTROL: i64 = 3;
pub(super) const TYPE_USER_DEFINED: i64 = 4;
pub(super) const TYPE_BYTE: i64 = 6;

/// Typed view of the `tokenizer.ggml.*` keys.
pub(super) struct GgufVocab<'a> {
    pub tokens: Vec<&'a str>,
    /// One per token; `TYPE_NORMAL` when the key is absent.
    pub types: Vec<i64>,
    pub meta: &'a GgufMetadata,
}

pub(super) fn err(msg: impl Into<String>) -> EngineError {
    EngineError::Tokenizer(format!("GGUF metadata: {}", msg.into()))
}

impl<'a> GgufVocab<'a> {
    pub fn read(meta: &'a GgufMetadata) -> Result<Self> {
        let tokens = str_array(meta, "tokenizer.ggml.tokens")?
            .ok_or_else(|| err("`tokenizer.ggml.tokens` is missing"))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(err(format!(
                "`tokenizer.ggml.tokens` has {} entries",
                tokens.len()
            )));
        }
        let types = match int_array(meta, "tokenizer.ggml.token_type")? {
            Some(t) if t.len() == tokens.len() => t,
            Some(t) => {
                return Err(err(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )))
            }
            None => vec![TYPE_NORMAL; tokens.len()],
        };
        Ok(GgufVocab {
            tokens,
            types,
            meta,
        })
    }

    /// A special id key (`tokenizer.ggml.bos_token_id`, ...) if present and inside
    /// the vocabulary.
    pub fn special_id(&self, key: &str) -> Option<u32> {
        let id = self.meta.get(key)?.as_u64()?;
        if id < self.tokens.len() as u64 {
            Some(id as u32)
        } else {
            tracing::warn!(
                key,
                id,
                n_tokens = self.tokens.len(),
                "ignoring out-of-range GGUF token id"
            );
            None
        }
    }

    pub fn flag(&self, key: &str) -> Option<bool> {
        match self.meta.get(key)? {
            GgufValue::Bool(b) => Some(*b),
            other => other.as_u64().map(|v| v != 0),
        }
    }

    /// First id of each token string (GGUF vocabularies may repeat a string).
    pub fn vocab_map(&self) -> Vocab {
        let mut vocab = Vocab::with_capacity(self.tokens.len());
        for (id, t) in self.tokens.iter().enumerate() {
            vocab.entry((*t).to_string()).or_insert(id as u32);
        }
        vocab
    }

    /// Added tokens for control (special) and user-defined (non-special) types.
    pub fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, ty) in self.tokens.iter().zip(&self.types) {
            if t.is_empty() {
                continue;
            }
            match *ty {
                TYPE_CONTROL | TYPE_UNKNOWN => {
                    special.push(AddedToken::from(*t, true).normalized(false))
                }
                TYPE_USER_DEFINED => user.push(AddedToken::from(*t, false).normalized(false)),
                _ => {}
            }
        }
        (special, user)
    }
}

pub(super) fn load(meta: &GgufMetadata) -> Result<Parts> {
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| err("`tokenizer.ggml.model` is missing or not a string"))?;
    let vocab = GgufVocab::read(meta)?;
    let (mut tok, add_bos_default) = match model {
        "gpt2" => build_gpt2(&vocab)?,
        "llama" => (spm::build(&vocab)?, true),
        other => {
            return Err(err(format!(
                "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
            )))
        }
    };
    let (special, user) = vocab.added_tokens();
    tok.add_special_tokens(special)
        .map_err(|e| err(format!("cannot add control tokens: {e}")))?;
    tok.add_tokens(user)
        .map_err(|e| err(format!("cannot add user-defined tokens: {e}")))?;

    let bos_id = vocab.special_id("tokenizer.ggml.bos_token_id");
    let mut eos_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        eos_ids.extend(vocab.special_id(key));
    }
    let add_bos = vocab
        .flag("tokenizer.ggml.add_bos_token")
        .unwrap_or(add_bos_default);
    let add_eos = vocab.flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let bos = if add_bos { bos_id } else { None };
    let eos = if add_eos {
        eos_ids.first().copied()
    } else {
        None
    };
    if bos.is_some() || eos.is_some() {
        tok.with_post_processor(Some(post_processor(&vocab, bos, eos)?));
    }
    let chat_template = match meta.get("tokenizer.chat_template") {
        None => None,
        Some(GgufValue::String(s)) => Some(s.clone()),
        Some(_) => return Err(err("`tokenizer.chat_template` is not a string")),
    };
    Ok(Parts {
        tok,
        bos_id,
        eos_ids,
        ensure_bos: false,
        chat_template,
    })
}

fn build_gpt2(vocab: &GgufVocab<'_>) -> Result<(tokenizers::Tokenizer, bool)> {
    let merges_raw = str_array(vocab.meta, "tokenizer.ggml.merges")?
        .ok_or_else(|| err("`tokenizer.ggml.merges` is missing (required for gpt2)"))?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        // The separator is the first space after the first character: byte-level
        // tokens never contain a raw space, but a left part may start with one.
        let split = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p)
            .ok_or_else(|| err(format!("merge #{i} `{m}` has no separator")))?;
        merges.push((m[..split].to_string(), m[split + 1..].to_string()));
    }
    let pre_name = vocab
        .meta
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let spec = pretok::spec_for(pre_name);
    if !spec.known {
        tracing::warn!(
            pre = pre_name,
            "unknown tokenizer.ggml.pre; using llama.cpp's default pre-tokenizer"
        );
    }
    let bpe = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab.vocab_map(), merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| err(format!("inconsistent BPE vocabulary/merges: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pretok::build(&spec)?));
    let decoder: tokenizers::DecoderWrapper = serde_json::from_value(json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    }))
    .map_err(|e| err(format!("cannot build decoder: {e}")))?;
    tok.with_decoder(Some(decoder));
    Ok((tok, spec.add_bos_default))
}

/// `[bos] $A [eos]` (and the same around `$B` for pairs).
fn post_processor(
    vocab: &GgufVocab<'_>,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<PostProcessorWrapper> {
    let mut specials = serde_json::Map::new();
    let mut piece = |id: u32| {
        let name = vocab.tokens[id as usize].to_string();
        specials.insert(
            name.clone(),
            json!({"id": name, "ids": [id], "tokens": [name]}),
        );
        json!({"SpecialToken": {"id": name, "type_id": 0}})
    };
    let bos_piece = bos.map(&mut piece);
    let eos_piece = eos.map(&mut piece);
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let wrap = |inner: Vec<serde_json::Value>| {
        let mut v: Vec<serde_json::Value> = bos_piece.iter().cloned().collect();
        v.extend(inner);
        v.extend(eos_piece.iter().cloned());
        v
    };
    let single = wrap(vec![seq("A", 0)]);
    let mut pair = single.clone();
    pair.extend(wrap(vec![seq("B", 1)]));
    serde_json::from_value(json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    }))
    .map_err(|e| err(format!("cannot build BOS/EOS post-processor: {e}")))
}

fn array<'a>(meta: &'a GgufMetadata, key: &str) -> Result<Option<&'a [GgufValue]>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| err(format!("`{key}` is not an array"))),
    }
}

/// Every element of the array at `key` converted by `conv`; `what` names the
/// expected element kind in the error.
fn typed_array<'a, T>(
    meta: &'a GgufMetadata,
    key: &str,
    what: &str,
    conv: impl Fn(&'a GgufValue) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let Some(items) = array(meta, key)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| conv(v).ok_or_else(|| err(format!("`{key}`[{i}] is not {what}"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub(super) fn str_array<'a>(meta: &'a GgufMetadata, key: &str) -> Result<Option<Vec<&'a str>>> {
    typed_array(meta, key, "a string", |v| v.as_str())
}

pub(super) fn int_array(meta: &GgufMetadata, key: &str) -> Result<Option<Vec<i64>>> {
    typed_array(meta, key, "an integer", |v| match *v {
        GgufValue::I8(x) => Some(x as i64),
        GgufValue::I16(x) => Some(x as i64),
        GgufValue::I32(x) => Some(x as i64),
        GgufValue::I64(x) => Some(x),
        ref other => other.as_u64().and_then(|x| i64::try_from(x).ok()),
    })
}

pub(super) fn f32_array(meta: &GgufMetadata, key: &str) -> Result<Option<Vec<f32>>> {
    typed_array(meta, key, "a number", |v| v.as_f64().map(|x| x as f32))
}
