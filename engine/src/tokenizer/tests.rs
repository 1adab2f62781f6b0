//! Hermetic tests: tokenizers built in code (GGUF metadata maps, HF directories in a
//! temp dir), chat templates, and the incremental decoder.

use std::collections::BTreeMap;

use proptest::prelude::*;
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

fn tiny(pre: &str) -> (TinyGpt2, Tokenizer) {
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
fn tiny_spm() -> (Vec<String>, GgufMetadata) {
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

/// A Qwen3-like template exercising pycompat methods, namespace and loop state.
const QWEN_LIKE: &str = r#"{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and not message.content.startswith('<tool_response>') %}
        {%- set ns.last_query_index = index %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>user\n' + message.content.strip() + '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}
    {%- elif message.role != "system" %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"#;

fn templated(template: Option<&str>) -> Tokenizer {
    let (_, tok) = tiny("gpt-2");
    Tokenizer::from_parts(
        tok.inner().clone(),
        None,
        Some("<|im_end|>"),
        template.map(str::to_string),
    )
    .unwrap()
}

fn conv() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "<think>\nhmm\n</think>\n\nHello."),
        ChatMessage::new("user", "Bye"),
    ]
}

#[test]
fn template_renders_system_multi_turn_and_generation_prompt() {
    let tok = templated(Some(QWEN_LIKE));
    let base = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n";
    let null = serde_json::Value::Null;
    assert_eq!(
        tok.apply_chat_template(&conv(), false, &null).unwrap(),
        base
    );
    assert_eq!(
        tok.apply_chat_template(&conv(), true, &null).unwrap(),
        format!("{base}<|im_start|>assistant\n")
    );
    assert_eq!(
        tok.apply_chat_template(&conv(), true, &json!({"enable_thinking": false}))
            .unwrap(),
        format!("{base}<|im_start|>assistant\n<think>\n\n</think>\n\n")
    );
    assert_eq!(
        tok.apply_chat_template(&conv(), true, &json!({"enable_thinking": true}))
            .unwrap(),
        format!("{base}<|im_start|>assistant\n")
    );
}

#[test]
fn template_errors_are_chat_template_errors() {
    let tok = templated(Some(QWEN_LIKE));
    let msgs = [ChatMessage::new("robot", "x")];
    let e = tok
        .apply_chat_template(&msgs, false, &serde_json::Value::Null)
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::ChatTemplate(m) if m.contains("unknown role robot")),
        "{e}"
    );

    let e = tok
        .apply_chat_template(&msgs, false, &json!([1]))
        .unwrap_err();
    assert!(matches!(e, EngineError::ChatTemplate(_)));

    // A template that does not parse still loads; rendering reports why.
    let broken = templated(Some("{% for x in %}"));
    assert!(broken.has_chat_template());
    let e = broken
        .apply_chat_template(&msgs, false, &serde_json::Value::Null)
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::ChatTemplate(m) if m.contains("parse")),
        "{e}"
    );
}

#[test]
fn missing_template_falls_back_to_chatml() {
    let tok = templated(None);
    assert!(!tok.has_chat_template());
    let msgs = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        tok.apply_chat_template(&msgs, true, &serde_json::Value::Null)
            .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn template_helpers_match_python() {
    let t = r#"{{ {"a": [1, 2.5, true, none], "b": "é\"<"} | tojson }}|{{ [1, {"x": 1}] | tojson(indent=2) }}|{{ x | tojson }}|{{ "a,b".split(",") | length }}|{{ strftime_now("%Y") | length }}"#;
    let tok = templated(Some(t));
    let out = tok
        .apply_chat_template(&[], false, &json!({"x": {}}))
        .unwrap();
    assert_eq!(
        out,
        "{\"a\": [1, 2.5, true, null], \"b\": \"é\\\"<\"}|[\n  1,\n  {\n    \"x\": 1\n  }\n]|{}|2|4"
    );
    // Fixed instants: 1970-01-01 (Thursday), 2024-02-29 13:05:09 UTC (Thursday).
    assert_eq!(
        chat_template::strftime("%Y-%m-%d %a %j", 0),
        "1970-01-01 Thu 001"
    );
    assert_eq!(
        chat_template::strftime("%d %b %Y %H:%M:%S %A %B %-d %j %I%p %%", 1_709_211_909),
        "29 Feb 2024 13:05:09 Thursday February 29 060 01PM %"
    );
}

/// Pushes every id through an incremental decoder; returns the deltas.
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
    let mut dec = IncrementalDecoder::new(skip);
    let mut out: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    out.push(dec.flush(tok));
    out
}

#[test]
fn incremental_decoder_holds_back_partial_characters() {
    let (t, tok) = tiny("gpt-2");
    // "😀" is four byte tokens: nothing comes out until the fourth.
    let ids = tok.encode("a😀", false).unwrap();
    assert_eq!(ids.len(), 5);
    let deltas = stream(&tok, &ids, false);
    assert_eq!(deltas, vec!["a", "", "", "", "😀", ""]);

    // Special tokens: kept or skipped.
    let ids = vec![1, t.id("hello"), t.id(" the"), 2];
    assert_eq!(
        stream(&tok, &ids, false).concat(),
        "<|im_start|>hello the<|im_end|>"
    );
    assert_eq!(stream(&tok, &ids, true).concat(), "hello the");

    // A truncated character is still emitted (lossy) by flush.
    let ids = tok.encode("é", false).unwrap();
    let deltas = stream(&tok, &ids[..1], false);
    assert_eq!(deltas, vec!["", "\u{FFFD}"]);
}

#[test]
fn incremental_decoder_keeps_spm_spaces() {
    let (tokens, meta) = tiny_spm();
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    let id = |s: &str| tokens.iter().position(|t| t == s).unwrap() as u32;
    let ids = [
        id("▁hello"),
        id("▁world"),
        id("<0xC3>"),
        id("<0xBC>"),
        id("▁he"),
    ];
    assert_eq!(
        stream(&tok, &ids, false),
        vec!["hello", " world", "", "ü", " he", ""]
    );
    // With the prompt as context the first token keeps its space.
    let mut dec = IncrementalDecoder::with_prefix(false, &[1, id("▁hello")]);
    assert_eq!(dec.push(&tok, id("▁world")).unwrap(), " world");
}

#[test]
fn incremental_decoder_gives_up_holding_after_a_while() {
    let (_, tok) = tiny("gpt-2");
    // Lone continuation bytes never form a character.
    let cont = tok.encode("é", false).unwrap()[1];
    let mut dec = IncrementalDecoder::new(false);
    let mut out = String::new();
    for _ in 0..40 {
        out.push_str(&dec.push(&tok, cont).unwrap());
    }
    assert!(!out.is_empty());
    out.push_str(&dec.flush(&tok));
    assert_eq!(out.chars().count(), 40);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn incremental_decoder_equals_full_decode(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("hello"), Just(" the"), Just(" "), Just("\n"), Just("123"), Just("😀"),
                Just("日本語"), Just("é"), Just("<|im_end|>"), Just("한"), Just("a")
            ],
            0..12,
        )
    ) {
        let (_, tok) = tiny("gpt-2");
        let text: String = parts.concat();
        let ids = tok.encode(&text, false).unwrap();
        for skip in [false, true] {
            let deltas = stream(&tok, &ids, skip);
            for d in &deltas {
                prop_assert!(!d.contains('\u{FFFD}'), "delta {d:?}");
            }
            prop_assert_eq!(deltas.concat(), tok.decode(&ids, skip).unwrap());
        }
    }
}
