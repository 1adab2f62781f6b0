//! Hermetic tests of chat template rendering and the incremental decoder, over the
//! tiny tokenizers of `tests`.

use proptest::prelude::*;
use serde_json::json;

use super::tests::{tiny, tiny_spm};
use super::*;

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
