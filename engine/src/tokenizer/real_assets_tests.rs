//! Tests against real tokenizers on this machine; each skips (with a printed reason)
//! when its asset is absent. Expected ids and strings were produced once with the
//! Python reference (transformers 5.x `AutoTokenizer`, `apply_chat_template`; for
//! the GGUF, transformers' own GGUF tokenizer conversion) and are hard-coded here.

use std::path::PathBuf;

use serde_json::json;

use super::{ChatMessage, Tokenizer};
use crate::gguf::{GgufMetadata, GgufValue};

fn asset(rel: &str) -> Option<PathBuf> {
    crate::fixtures::real_asset(rel)
}

fn qwen3() -> Option<Tokenizer> {
    let dir = asset("qwen3-tokenizer/tokenizer.json")?;
    Some(Tokenizer::from_hf_dir(dir.parent().unwrap()).unwrap())
}

#[test]
fn qwen3_encodes_and_decodes_like_the_reference() {
    let Some(tok) = qwen3() else { return };
    let cases: &[(&str, &[u32])] = &[
        ("Hello, world!", &[9707, 11, 1879, 0]),
        ("The capital of France is", &[785, 6722, 315, 9625, 374]),
        (
            "  leading spaces\n\nand 12345 numbers",
            &[220, 6388, 12621, 271, 437, 220, 16, 17, 18, 19, 20, 5109],
        ),
        (
            "日本語のテキスト 😀🎉 café",
            &[
                101059, 102819, 15767, 56833, 61803, 70534, 90316, 144841, 51950,
            ],
        ),
        (
            "I'm here, WE'LL go.",
            &[40, 2776, 1588, 11, 19677, 6, 4086, 728, 13],
        ),
        (
            "<|im_start|>user\nhi<|im_end|>",
            &[151644, 872, 198, 6023, 151645],
        ),
        (
            "<think>\nok\n</think>\n\n",
            &[151667, 198, 562, 198, 151668, 271],
        ),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(&ids, want, "encoding {text:?}");
        // Qwen adds no BOS.
        assert_eq!(tok.encode(text, true).unwrap(), ids);
        assert_eq!(tok.decode(&ids, false).unwrap(), *text);
    }
    assert_eq!(tok.bos_token_id(), None);
    // eos `<|im_end|>` first, then `<|endoftext|>` (as Qwen3's generation_config).
    assert_eq!(tok.eos_token_ids(), vec![151645, 151643]);
    assert_eq!(tok.vocab_size(), 151669);
}

#[test]
fn qwen3_chat_template_matches_transformers() {
    let Some(tok) = qwen3() else { return };
    assert!(tok.has_chat_template());
    let conv = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "<think>\nsimple math\n</think>\n\n4"),
        ChatMessage::new("user", "And 3+3?"),
    ];
    let hist = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n";
    let null = serde_json::Value::Null;
    let no_think = json!({"enable_thinking": false});
    let think = json!({"enable_thinking": true});
    let r = |m: &[ChatMessage], g: bool, x: &serde_json::Value| {
        tok.apply_chat_template(m, g, x).unwrap()
    };
    assert_eq!(
        r(&conv, true, &null),
        format!("{hist}<|im_start|>assistant\n")
    );
    assert_eq!(r(&conv, false, &null), hist);
    assert_eq!(
        r(&conv, true, &no_think),
        format!("{hist}<|im_start|>assistant\n<think>\n\n</think>\n\n")
    );
    assert_eq!(r(&conv, false, &no_think), hist);

    let hi = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        r(&hi, true, &think),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(r(&hi, false, &think), "<|im_start|>user\nHi<|im_end|>\n");
    assert_eq!(
        r(&hi, true, &no_think),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );

    // The reasoning of an assistant turn after the last user query is kept.
    let last = [
        ChatMessage::new("user", "Q?"),
        ChatMessage::new("assistant", "<think>\nr\n</think>\n\nA."),
    ];
    assert_eq!(
        r(&last, false, &null),
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nA.<|im_end|>\n"
    );
}

/// The metadata of a GGUF file, through the engine's own reader.
fn read_gguf_metadata(path: &std::path::Path) -> GgufMetadata {
    crate::gguf::GgufFile::open(path)
        .expect("open GGUF")
        .metadata
}

fn smollm2() -> Option<(Tokenizer, GgufMetadata)> {
    let path = asset("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let meta = read_gguf_metadata(&path);
    Some((Tokenizer::from_gguf(&meta).unwrap(), meta))
}

#[test]
fn smollm2_gguf_tokenizes_like_the_reference() {
    let Some((tok, meta)) = smollm2() else { return };
    assert_eq!(
        meta.get("tokenizer.ggml.pre").and_then(GgufValue::as_str),
        Some("smollm")
    );
    let cases: &[(&str, &[u32])] = &[
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        ("Hello world! 123", &[19556, 905, 17, 216, 33, 34, 35]),
        (
            "Café déjà vu.",
            &[51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
        ),
        ("  multiple   spaces", &[216, 2701, 256, 5600]),
        (
            "a\n\nb 12345 ü 日本語 😀",
            &[
                81, 198, 198, 82, 216, 33, 34, 35, 36, 37, 5549, 137, 17097, 241, 115, 40993, 179,
                120, 248, 40303, 218,
            ],
        ),
        ("I'm don't WE'LL", &[57, 5248, 1326, 982, 26587, 23, 16421]),
        (
            "<|im_start|>user\nHi<|im_end|>\n",
            &[1, 4093, 198, 26843, 2, 198],
        ),
        ("\ttab  \n  end  ", &[197, 15999, 256, 3805, 1112, 256]),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(&ids, want, "encoding {text:?}");
        // add_bos_token is false for SmolLM2.
        assert_eq!(tok.encode(text, true).unwrap(), ids);
        assert_eq!(tok.decode(&ids, false).unwrap(), *text);
    }
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_token_id(), Some(1));
    // `<|im_end|>` (the GGUF eos) and `<|endoftext|>`.
    assert_eq!(tok.eos_token_ids(), vec![2, 0]);
}

#[test]
fn smollm2_gguf_chat_template() {
    let Some((tok, _)) = smollm2() else { return };
    assert!(tok.has_chat_template());
    let msgs = [ChatMessage::new("user", "What is the capital of France?")];
    let text = tok
        .apply_chat_template(&msgs, true, &serde_json::Value::Null)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 198);
}

#[test]
fn qwen3_streaming_matches_full_decode() {
    let Some(tok) = qwen3() else { return };
    let text = "Über 日本語 😀🎉 naïve — “quotes” 𝔘𝔫𝔦 ok\n\n<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    for skip in [false, true] {
        let mut dec = super::IncrementalDecoder::new(skip);
        let mut out = String::new();
        for &id in &ids {
            let d = dec.push(&tok, id).unwrap();
            assert!(!d.contains('\u{FFFD}'));
            out.push_str(&d);
        }
        out.push_str(&dec.flush(&tok));
        assert_eq!(out, tok.decode(&ids, skip).unwrap());
    }
}

/// The Qwen3 vocabulary rewritten as GGUF metadata (what llama.cpp's converter
/// writes: tokens by id, `"a b"` merges, control/user-defined types, pre `qwen2`)
/// must tokenize exactly like the HF tokenizer.
#[test]
fn qwen3_vocab_as_gguf_metadata_matches_hf() {
    let Some(hf) = qwen3() else { return };
    let Some(path) = asset("qwen3-tokenizer/tokenizer.json") else {
        return;
    };
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let n = hf.vocab_size();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (t, id) in j["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in j["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges: Vec<GgufValue> = j["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = m.as_array().unwrap();
            GgufValue::String(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            ))
        })
        .collect();
    let mut meta = GgufMetadata::new();
    let s = |v: &str| GgufValue::String(v.to_string());
    meta.insert("tokenizer.ggml.model".into(), s("gpt2"));
    meta.insert("tokenizer.ggml.pre".into(), s("qwen2"));
    meta.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
    );
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
    );
    meta.insert("tokenizer.ggml.merges".into(), GgufValue::Array(merges));
    meta.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(151645));
    meta.insert(
        "tokenizer.ggml.padding_token_id".into(),
        GgufValue::U32(151643),
    );
    meta.insert(
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(false),
    );
    let gg = Tokenizer::from_gguf(&meta).unwrap();
    assert_eq!(gg.vocab_size(), n);
    assert_eq!(gg.eos_token_ids(), hf.eos_token_ids());
    for text in [
        "Hello, world! It's 2024-05-01.",
        "  leading spaces\n\nand 12345 numbers\t\ttabs \r\n",
        "日本語のテキスト 😀🎉 café Ünïcödé ДОБРЫЙ день",
        "def f(x):\n    return x**2  # comment\n",
        "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n",
        "I'M here, WE'LL go; they'd've  ...!!!???",
    ] {
        let want = hf.encode(text, true).unwrap();
        assert_eq!(gg.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(
            gg.decode(&want, true).unwrap(),
            hf.decode(&want, true).unwrap()
        );
    }
}
