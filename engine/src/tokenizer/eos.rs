//! End-of-sequence id discovery.
//!
//! The list is: the ids the loader found (the tokenizer's eos first, then
//! `generation_config.json` eos ids or GGUF eot/eom ids), then chat end-of-turn
//! markers that the vocabulary has as *special* tokens. Only well-known marker
//! names are considered and only when they are special/control tokens, so a plain
//! text token that happens to be spelled `<|end|>` is never taken for an end marker.
//!
//! Document-end markers (`<|endoftext|>`, `<|end_of_text|>`) are added when they are
//! the eos, or when the vocabulary also has a chat end-of-turn marker: chat models
//! of those families (Qwen2/2.5/3, Llama 3, SmolLM2) list both in their own
//! `generation_config.json`, and neither ever appears inside a chat reply.

use std::collections::HashSet;

/// Markers that end an assistant turn in common chat formats.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",            // ChatML (Qwen, SmolLM, Hermes, ...)
    "<|eot_id|>",            // Llama 3
    "<|eom_id|>",            // Llama 3.1 (end of message before a tool result)
    "<end_of_turn>",         // Gemma
    "<|end|>",               // Phi-3
    "<|END_OF_TURN_TOKEN|>", // Command-R
    "<|return|>",            // gpt-oss (harmony)
];

/// Markers that end a whole document.
const END_OF_DOCUMENT: &[&str] = &["<|endoftext|>", "<|end_of_text|>"];

/// Returns `found` (deduplicated, order kept, out-of-vocabulary ids dropped) plus the
/// special end markers of the vocabulary.
pub(super) fn collect(tok: &tokenizers::Tokenizer, found: &[u32]) -> Vec<u32> {
    let vocab = tok.get_vocab_size(true) as u32;
    let mut out: Vec<u32> = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |id: u32, out: &mut Vec<u32>| {
        if id < vocab && seen.insert(id) {
            out.push(id);
        }
    };
    for &id in found {
        push(id, &mut out);
    }
    let added = tok.get_added_tokens_decoder();
    let special_id = |name: &str| -> Option<u32> {
        let id = tok.token_to_id(name)?;
        added.get(&id).filter(|t| t.special).map(|_| id)
    };
    let mut has_turn_marker = false;
    for name in END_OF_TURN {
        if let Some(id) = special_id(name) {
            has_turn_marker = true;
            push(id, &mut out);
        }
    }
    if has_turn_marker {
        for name in END_OF_DOCUMENT {
            if let Some(id) = special_id(name) {
                push(id, &mut out);
            }
        }
    }
    out
}
