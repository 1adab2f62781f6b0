//! Hermetic tests of tokenizer loading: tokenizers built in code (GGUF metadata maps,
//! HF directories in a temp dir). Shared fixtures for `text_tests`.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::gguf::GgufValue;

/// GPT-2's byte → printable-char mapping (bytes that are printable map to
/// themselves, the rest to U+0100 onwards in byte order).
pub(super) fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn bl(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

fn strs(v: &[String]) -> GgufValue {
    GgufValue::Array(v.iter().map(|s| GgufValue::String(s.clone())).collect())
}

/// A tiny byte-level BPE vocabulary in GGUF form: 3 control tokens, all 256 bytes,
/// a few merges, a user-defined `<think>` and a *normal* token spelled `<|end|>`.
pub(super) struct TinyGpt2 {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
}

impl TinyGpt2 {
    pub fn new() -> Self {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![3, 3, 3];
        for b in 0..=255u8 {
            tokens.push(byte_char(b).to_string());
            types.push(1);
        }
        let merges_plain = [
            ("h", "e"),
            (" ", "t"),
            (" t", "he"),
            ("l", "l"),
            ("he", "ll"),
            ("hell", "o"),
            ("1", "2"),
            ("12", "3"),
            (" ", "w"),
        ];
        let mut merges = Vec::new();
        for (a, b) in merges_plain {
            let (a, b) = (bl(a), bl(b));
            merges.push(format!("{a} {b}"));
            tokens.push(format!("{a}{b}"));
            types.push(1);
        }
        tokens.push("<think>".into());
        types.push(4);
        tokens.push("<|end|>".into());
        types.push(1);
        TinyGpt2 {
            tokens,
            types,
            merges,
        }
    }

    pub fn id(&self, plain: &str) -> u32 {
        let t = bl(plain);
        self.tokens.iter().position(|x| *x == t).unwrap() as u32
    }

    pub fn meta(&self, pre: &str) -> GgufMetadata {
        let mut m = BTreeMap::new();
        m.insert(
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        );
        m.insert("tokenizer.ggml.pre".into(), GgufValue::String(pre.into()));
        m.insert("tokenizer.ggml.tokens".into(), strs(&self.tokens));
        m.insert(
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(self.types.iter().map(|&t| GgufValue::I32(t)).collect()),
        );
        m.insert("tokenizer.ggml.merges".into(), strs(&self.merges));
        m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
        m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
        m.insert(
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(false),
        );
        m
    }
}

pub(super) fn tiny(pre: &str) -> (TinyGpt2, Tokenizer) {
    let t = TinyGpt2::new();
    let tok = Tokenizer::from_gguf(&t.meta(pre)).unwrap();
    (t, tok)
}

#[test]
fn gguf_gpt2_encodes_with_merges_and_round_trips() {
    let (t, tok) = tiny("gpt-2");
    let ids = tok.encode("hello the world", false).unwrap();
    let mut want = vec![t.id("hello"), t.id(" the"), t.id(" w")];
    want.extend("orld".chars().map(|c| t.id(&c.to_string())));
    assert_eq!(ids, want);
    for text in ["hello the world", "日本語 😀 café\n\n  x", "", " \t\r\n"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(tok.vocab_size(), t.tokens.len());
    // Ids outside the vocabulary (model padding rows) decode to nothing.
    assert_eq!(tok.decode(&[u32::MAX, t.id("he")], false).unwrap(), "he");
}

#[test]
fn gguf_control_tokens_are_special_and_user_tokens_are_not() {
    let (t, tok) = tiny("gpt-2");
    let think = t.tokens.iter().position(|x| x == "<think>").unwrap() as u32;
    let ids = tok
        .encode("<|im_start|>hello<think><|im_end|>", false)
        .unwrap();
    assert_eq!(ids, vec![1, t.id("hello"), think, 2]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello<think>");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>hello<think><|im_end|>"
    );
}

#[test]
fn gguf_pre_tokenizer_follows_tokenizer_ggml_pre() {
    let t = TinyGpt2::new();
    let enc = |pre: &str, text: &str| {
        Tokenizer::from_gguf(&t.meta(pre))
            .unwrap()
            .encode(text, false)
            .unwrap()
    };
    let d = |s: &str| t.id(s);
    // GPT-2 keeps digit runs together, so merges apply.
    assert_eq!(enc("gpt-2", "1234"), vec![d("123"), d("4")]);
    // SmolLM splits every digit first.
    assert_eq!(enc("smollm", "1234"), vec![d("1"), d("2"), d("3"), d("4")]);
    assert_eq!(enc("qwen2", "1234"), vec![d("1"), d("2"), d("3"), d("4")]);
    // Llama 3 groups digits by three.
    assert_eq!(enc("llama-bpe", "1234"), vec![d("123"), d("4")]);
    assert_eq!(enc("llama-bpe", "12345"), vec![d("123"), d("4"), d("5")]);
    // Space handling: qwen2/llama3 attach a lone space to the following word.
    assert_eq!(enc("qwen2", "a  the"), vec![d("a"), d(" "), d(" the")]);
    // "default" (llama.cpp) isolates punctuation runs first.
    assert_eq!(enc("default", "he!"), vec![d("he"), d("!")]);
    // Unknown names fall back to the default list instead of failing.
    assert_eq!(enc("no-such-pre", "hello"), vec![d("hello")]);
}

#[test]
fn every_known_pre_tokenizer_builds_and_round_trips() {
    let t = TinyGpt2::new();
    let names = [
        "llama3",
        "llama-bpe",
        "dbrx",
        "smaug-bpe",
        "qwen2",
        "stablelm2",
        "gpt-2",
        "mpt",
        "olmo",
        "smollm",
        "starcoder",
        "command-r",
        "falcon",
        "gpt-4o",
        "llama4",
        "tekken",
        "default",
        "chatglm-bpe",
    ];
    let text = "Hello WORLD it's 1234\n\n  x\t!? 日本 😀";
    for pre in names {
        assert!(pretok::spec_for(pre).known, "{pre}");
        let tok = Tokenizer::from_gguf(&t.meta(pre)).unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
    }
    assert!(!pretok::spec_for("something-new").known);
}

#[test]
fn gguf_bos_follows_add_bos_token() {
    let t = TinyGpt2::new();
    let mut meta = t.meta("gpt-2");
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.encode("he", true).unwrap(), vec![t.id("he")]);
    meta.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true));
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    assert_eq!(tok.encode("he", true).unwrap(), vec![1, t.id("he")]);
    assert_eq!(tok.encode("he", false).unwrap(), vec![t.id("he")]);
    assert_eq!(
        tok.inner().encode("he", true).unwrap().get_ids(),
        &[1, t.id("he")]
    );
    // Llama 3 style pre-tokenizers add BOS when the key is absent.
    meta.remove("tokenizer.ggml.add_bos_token");
    meta.insert(
        "tokenizer.ggml.pre".into(),
        GgufValue::String("llama-bpe".into()),
    );
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    assert_eq!(tok.encode("he", true).unwrap(), vec![1, t.id("he")]);
}

#[test]
fn eos_ids_include_turn_markers_but_not_plain_tokens() {
    let (t, tok) = tiny("gpt-2");
    // eos <|im_end|> first, then <|endoftext|> (a chat vocabulary's document end);
    // the *normal* token spelled `<|end|>` is not an end marker.
    assert_eq!(tok.eos_token_ids(), vec![2, 0]);
    let end = t.tokens.iter().position(|x| x == "<|end|>").unwrap() as u32;
    assert!(!tok.eos_token_ids().contains(&end));

    // eot id from metadata is included; out-of-range ids are ignored.
    let mut meta = t.meta("gpt-2");
    meta.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(0));
    meta.insert("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(2));
    meta.insert(
        "tokenizer.ggml.eom_token_id".into(),
        GgufValue::U32(999_999),
    );
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    assert_eq!(tok.eos_token_ids(), vec![0, 2]);
}

#[test]
fn gguf_bad_metadata_is_an_error_not_a_panic() {
    let t = TinyGpt2::new();
    let check = |meta: GgufMetadata, needle: &str| {
        let e = Tokenizer::from_gguf(&meta).unwrap_err().to_string();
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
    };
    let mut m = t.meta("gpt-2");
    m.remove("tokenizer.ggml.tokens");
    check(m, "tokenizer.ggml.tokens");
    let mut m = t.meta("gpt-2");
    m.remove("tokenizer.ggml.model");
    check(m, "tokenizer.ggml.model");
    let mut m = t.meta("gpt-2");
    m.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("t5".into()),
    );
    check(m, "t5");
    let mut m = t.meta("gpt-2");
    m.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(vec![GgufValue::I32(1)]),
    );
    check(m, "token_type");
    let mut m = t.meta("gpt-2");
    m.insert("tokenizer.ggml.merges".into(), strs(&["zz qq".to_string()]));
    check(m, "merges");
    let mut m = t.meta("gpt-2");
    m.insert(
        "tokenizer.ggml.merges".into(),
        strs(&["nospace".to_string()]),
    );
    check(m, "separator");
    let mut m = t.meta("gpt-2");
    m.insert("tokenizer.ggml.tokens".into(), GgufValue::U32(3));
    check(m, "not an array");
    let mut m = t.meta("gpt-2");
    m.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(vec![GgufValue::U8(1)]),
    );
    check(m, "not a string");
    let mut m = t.meta("gpt-2");
    m.insert("tokenizer.chat_template".into(), GgufValue::U32(1));
    check(m, "chat_template");
}

/// A tiny SentencePiece vocabulary: `<unk> <s> </s>`, 256 byte tokens, pieces.
pub(super) fn tiny_spm() -> (Vec<String>, GgufMetadata) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "llo", "▁he", "▁hello", "▁w",
        "or", "▁wor", "ld", "▁world", "é",
    ];
    let first_piece = tokens.len();
    for p in pieces {
        tokens.push(p.to_string());
        types.push(1);
    }
    // Longer pieces score higher so that they win merges.
    let scores: Vec<GgufValue> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = if i >= first_piece {
                t.chars().count() as f32
            } else {
                0.0
            };
            GgufValue::F32(s)
        })
        .collect();
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("llama".into()),
    );
    m.insert("tokenizer.ggml.tokens".into(), strs(&tokens));
    m.insert("tokenizer.ggml.scores".into(), GgufValue::Array(scores));
    m.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(types.iter().map(|&t| GgufValue::I32(t)).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    m.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0));
    (tokens, m)
}

#[test]
fn gguf_llama_spm_with_byte_fallback() {
    let (tokens, meta) = tiny_spm();
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    let id = |s: &str| tokens.iter().position(|t| t == s).unwrap() as u32;
    assert_eq!(
        tok.encode("hello world", true).unwrap(),
        vec![1, id("▁hello"), id("▁world")]
    );
    // "ü" is not in the vocabulary: UTF-8 bytes C3 BC via byte fallback.
    assert_eq!(
        tok.encode("hü", false).unwrap(),
        vec![id("▁h"), id("<0xC3>"), id("<0xBC>")]
    );
    for text in ["hello world", "hü wé 😀", "  hello"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(tok.decode(&[1, id("▁hello"), 2], true).unwrap(), "hello");
    assert_eq!(tok.eos_token_ids(), vec![2]);
    assert_eq!(tok.bos_token_id(), Some(1));
}

fn write_hf_dir(dir: &std::path::Path, config: serde_json::Value, gen: Option<serde_json::Value>) {
    let (_, tok) = tiny("gpt-2");
    tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    if let Some(g) = gen {
        std::fs::write(dir.join("generation_config.json"), g.to_string()).unwrap();
    }
}

#[test]
fn hf_dir_reads_config_variants() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        json!({
            "bos_token": {"content": "<|im_start|>", "special": true},
            "eos_token": "<|endoftext|>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}DEFAULT{{ eos_token }}"}
            ]
        }),
        Some(json!({"eos_token_id": [0, 2], "bos_token_id": 1})),
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), vec![0, 2]);
    assert!(tok.has_chat_template());
    assert_eq!(
        tok.apply_chat_template(&[], false, &serde_json::Value::Null)
            .unwrap(),
        "<|im_start|>DEFAULT<|endoftext|>"
    );

    // chat_template.jinja overrides the config; add_bos_token forces BOS.
    std::fs::write(dir.path().join("chat_template.jinja"), "JINJA").unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"bos_token": "<|im_start|>", "add_bos_token": true, "eos_token": null}).to_string(),
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.apply_chat_template(&[], true, &serde_json::Value::Null)
            .unwrap(),
        "JINJA"
    );
    assert_eq!(tok.encode("he", true).unwrap()[0], 1);
    assert_eq!(tok.encode("he", false).unwrap().len(), 1);
}

#[test]
fn hf_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");

    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not a valid"),
        "{e}"
    );

    write_hf_dir(dir.path(), json!({}), None);
    std::fs::write(dir.path().join("tokenizer_config.json"), "[1,").unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json"), "{e}");

    write_hf_dir(dir.path(), json!({"chat_template": 5}), None);
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("chat_template"),
        "{e}"
    );

    write_hf_dir(dir.path(), json!({}), None);
    std::fs::write(dir.path().join("generation_config.json"), "nope").unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("generation_config.json"), "{e}");
}
