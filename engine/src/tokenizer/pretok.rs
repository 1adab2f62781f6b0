//! Pre-tokenizers for GGUF byte-level BPE vocabularies, chosen by
//! `tokenizer.ggml.pre`.
//!
//! A pre-tokenizer is a list of regexes applied one after the other, each splitting
//! every current piece into matches and the gaps between them (both kept: HF's
//! `Split` with behaviour `Isolated`), followed by byte-level mapping without its own
//! regex. This is how llama.cpp runs them, and for the single-regex cases it equals
//! the HF `tokenizer.json` of the original models (e.g. SmolLM2: individual digits,
//! then the GPT-2 regex; Qwen2: one regex with single digits; Llama 3: one regex
//! with digit runs of up to three).
//!
//! Unknown names fall back to llama.cpp's "default" list (with a warning), as
//! llama.cpp itself does.

use serde_json::json;
use tokenizers::PreTokenizerWrapper;

use crate::{EngineError, Result};

/// GPT-2's regex (HF `ByteLevel(use_regex = true)`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3 / tiktoken cl100k style: case-insensitive contractions, digit runs ≤ 3.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2/2.5/3: as Llama 3 but single digits.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o / Llama 4 (o200k style): words split at case changes.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral Tekken.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DIGIT: &str = r"\p{N}";

/// What a `tokenizer.ggml.pre` value means.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PreSpec {
    /// Regexes applied in order (see module docs).
    pub regexes: Vec<&'static str>,
    /// Look whole pieces up in the vocabulary before merging (Llama 3, Tekken).
    pub ignore_merges: bool,
    /// BOS is added unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos_default: bool,
    /// False when the name was not recognised (the default list is used).
    pub known: bool,
}

pub(super) fn spec_for(pre: &str) -> PreSpec {
    let spec = |regexes: Vec<&'static str>, ignore_merges: bool, add_bos: bool| PreSpec {
        regexes,
        ignore_merges,
        add_bos_default: add_bos,
        known: true,
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => spec(vec![LLAMA3], true, true),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => spec(vec![LLAMA3], false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan" => {
            spec(vec![QWEN2], false, false)
        }
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "mpt" | "olmo" | "jais" | "exaone4"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "trillion" | "granite-docling" => {
            spec(vec![GPT2], false, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(vec![DIGIT, GPT2], false, false)
        }
        "falcon" => spec(
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        "gpt-4o" | "llama4" | "minimax-m2" => spec(vec![GPT4O], false, false),
        "tekken" => spec(vec![TEKKEN], true, true),
        "default" => default_spec(),
        _ => PreSpec {
            known: false,
            ..default_spec()
        },
    }
}

/// llama.cpp's "default" list.
fn default_spec() -> PreSpec {
    PreSpec {
        regexes: vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos_default: false,
        known: true,
    }
}

/// The HF pre-tokenizer for a spec: one `Split(Isolated)` per regex, then byte-level
/// mapping.
pub(super) fn build(spec: &PreSpec) -> Result<PreTokenizerWrapper> {
    let mut steps: Vec<serde_json::Value> = spec
        .regexes
        .iter()
        .map(|r| {
            json!({
                "type": "Split",
                "pattern": {"Regex": r},
                "behavior": "Isolated",
                "invert": false
            })
        })
        .collect();
    steps.push(json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": false,
        "use_regex": false
    }));
    let value = json!({"type": "Sequence", "pretokenizers": steps});
    serde_json::from_value(value)
        .map_err(|e| EngineError::Tokenizer(format!("cannot build pre-tokenizer: {e}")))
}
