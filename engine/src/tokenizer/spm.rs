//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`) from GGUF metadata.
//!
//! SentencePiece BPE repeatedly merges the adjacent pair whose merged piece has the
//! highest score. The `tokenizers` BPE model applies merges by rank instead, so the
//! merge list is derived from the vocabulary: every split of a normal token into two
//! normal tokens is a merge, ranked by the merged token's score (highest first).
//! Spaces become `▁` (with one prepended to every text segment when
//! `tokenizer.ggml.add_space_prefix`, default true); characters not in the
//! vocabulary fall back to `<0xNN>` byte tokens; decoding reverses both and drops the
//! prepended space.

use serde_json::json;

use super::gguf_vocab::{err, f32_array, GgufVocab, TYPE_BYTE, TYPE_NORMAL, TYPE_UNKNOWN};
use crate::Result;

pub(super) fn build(vocab: &GgufVocab<'_>) -> Result<tokenizers::Tokenizer> {
    let n = vocab.tokens.len();
    let scores = match f32_array(vocab.meta, "tokenizer.ggml.scores")? {
        Some(s) if s.len() == n => s,
        Some(s) => {
            return Err(err(format!(
                "`tokenizer.ggml.scores` has {} entries for {n} tokens",
                s.len()
            )))
        }
        None => vec![0.0; n],
    };
    let map = vocab.vocab_map();
    let is_normal = |id: u32| vocab.types[id as usize] == TYPE_NORMAL;

    // (score of merged piece, merged id, left, right)
    let mut candidates: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        let id = id as u32;
        if !is_normal(id) || map.get(*piece) != Some(&id) {
            continue;
        }
        for (k, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(k);
            let both = map.get(l).zip(map.get(r));
            if let Some((&li, &ri)) = both {
                if is_normal(li) && is_normal(ri) {
                    candidates.push((scores[id as usize], id, l.to_string(), r.to_string()));
                }
            }
        }
    }
    candidates.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(b.2.len().cmp(&a.2.len()))
    });
    let merges: Vec<(String, String)> = candidates.into_iter().map(|c| (c.2, c.3)).collect();

    let has_byte_tokens = vocab.types.contains(&TYPE_BYTE);
    let unk = vocab
        .special_id("tokenizer.ggml.unknown_token_id")
        .or_else(|| {
            vocab
                .types
                .iter()
                .position(|&t| t == TYPE_UNKNOWN)
                .map(|p| p as u32)
        })
        .map(|id| vocab.tokens[id as usize].to_string());
    let mut builder = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(map, merges)
        .byte_fallback(has_byte_tokens)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder
        .build()
        .map_err(|e| err(format!("inconsistent SentencePiece vocabulary: {e}")))?;

    let add_space_prefix = vocab
        .flag("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let mut tok = tokenizers::Tokenizer::new(bpe);
    // Every text segment (also one that follows a special token) gets a leading
    // space when `add_space_prefix`, as llama.cpp and legacy HF Llama do.
    let mut norm_steps = Vec::new();
    if add_space_prefix {
        norm_steps.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    norm_steps.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let normalizer: tokenizers::NormalizerWrapper =
        serde_json::from_value(json!({"type": "Sequence", "normalizers": norm_steps}))
            .map_err(|e| err(format!("cannot build normalizer: {e}")))?;
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| err(format!("cannot set normalizer: {e}")))?;
    let mut steps = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder: tokenizers::DecoderWrapper =
        serde_json::from_value(json!({"type": "Sequence", "decoders": steps}))
            .map_err(|e| err(format!("cannot build decoder: {e}")))?;
    tok.with_decoder(Some(decoder));
    Ok(tok)
}
