//! Synthetic prompts of exact token lengths, and the request bodies that carry them.
//!
//! - Completions (the default): `prompt` is a list of token ids, so the server runs
//!   exactly `--input-len` prompt tokens (it takes id prompts as they are: no BOS,
//!   no template). Ids are drawn by a seeded RNG from a pool that holds no special
//!   token: with `--tokenizer` every id of that vocabulary except its special/added,
//!   BOS and EOS ids; without it ids 100..10000, which are ordinary tokens in the
//!   default SmolLM2 vocabulary (its special tokens are ids 0..17) and in the
//!   GPT-2-, Llama- and Qwen-style vocabularies alike.
//! - Chat: text. With `--tokenizer`, the text is a run of whole-word tokens
//!   (`" word"`) that re-encodes to exactly the asked length (checked, and fixed up
//!   by re-encoding); without it, the text is `--input-len` common English words,
//!   about one token each — approximate, and the run says so. The chat template adds
//!   its own tokens on the server; `usage.prompt_tokens` records the real count.
//!
//! `--prefix-len P` makes the first P tokens of every prompt the same.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use pdserve_engine::gguf::GgufFile;
use pdserve_engine::hub::{self, ModelLocation, ResolveOptions};
use pdserve_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::bench_engine::SplitMix64;

/// Which API the requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// One prompt as sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Tokens(Vec<u32>),
    Text(String),
}

/// The request body: streamed, fixed output length, greedy.
pub fn request_body(endpoint: Endpoint, model: &str, prompt: &Payload, max_tokens: u32) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
        "temperature": 0.0,
    });
    let prompt_value = match prompt {
        Payload::Tokens(ids) => json!(ids),
        Payload::Text(t) => json!(t),
    };
    match endpoint {
        Endpoint::Completions => body["prompt"] = prompt_value,
        Endpoint::Chat => {
            let content = match prompt {
                Payload::Text(t) => t.clone(),
                // Chat needs text; ids reach here only through a caller's mistake.
                Payload::Tokens(ids) => ids.iter().map(|i| format!(" {i}")).collect(),
            };
            body["messages"] = json!([{"role": "user", "content": content}]);
        }
    }
    body
}

/// Loads only the tokenizer of a model spec (GGUF file, HF directory, HF repo id in
/// the local cache, or `default`).
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    let resolved = hub::resolve(spec, &ResolveOptions::default())
        .with_context(|| format!("--tokenizer {spec}"))?;
    let tok = match &resolved.location {
        ModelLocation::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            Tokenizer::from_gguf(&gguf.metadata).with_context(|| format!("{}", path.display()))?
        }
        ModelLocation::HfDir(dir) => {
            Tokenizer::from_hf_dir(dir).with_context(|| format!("{}", dir.display()))?
        }
    };
    Ok(tok)
}

/// The default id pool (see the module header).
pub fn default_pool() -> Vec<u32> {
    (100..10_000).collect()
}

/// Every id of the tokenizer's vocabulary but special, added, BOS and EOS ids.
pub fn tokenizer_pool(tok: &Tokenizer) -> Vec<u32> {
    let mut special: HashSet<u32> = tok.inner().get_added_tokens_decoder().into_keys().collect();
    special.extend(tok.eos_token_ids());
    special.extend(tok.bos_token_id());
    (0..tok.vocab_size() as u32)
        .filter(|id| !special.contains(id))
        .collect()
}

/// Ids that decode to a space and 2+ ASCII letters: text made of them re-encodes to
/// the same ids in byte-level and SentencePiece vocabularies alike.
fn word_pool(tok: &Tokenizer, pool: &[u32]) -> Vec<u32> {
    pool.iter()
        .copied()
        .filter(|&id| {
            tok.decode(&[id], false).is_ok_and(|t| {
                t.len() >= 3
                    && t.starts_with(' ')
                    && t[1..].bytes().all(|b| b.is_ascii_alphabetic())
            })
        })
        .collect()
}

pub fn random_ids(rng: &mut SplitMix64, pool: &[u32], len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| pool[(rng.next() % pool.len() as u64) as usize])
        .collect()
}

/// `n` token-id prompts of `len` ids sharing their first `prefix` ids.
pub fn token_prompts(
    rng: &mut SplitMix64,
    pool: &[u32],
    n: usize,
    len: usize,
    prefix: usize,
) -> Vec<Payload> {
    let shared = random_ids(rng, pool, prefix.min(len));
    (0..n)
        .map(|_| {
            let mut ids = shared.clone();
            ids.extend(random_ids(rng, pool, len - shared.len()));
            Payload::Tokens(ids)
        })
        .collect()
}

/// Common English words, about one token each in BPE vocabularies.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its", "may",
    "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "my", "new",
    "about", "out", "also", "two", "any", "up", "first", "could", "our", "then", "most", "see",
    "me", "should", "after", "said", "your", "very", "between", "many", "over", "like", "those",
    "did", "now", "even", "well", "where", "must", "people", "through", "how", "same", "work",
    "being", "because", "what", "year", "good", "world", "life", "day", "water", "long",
];

/// Text prompts of about `len` tokens sharing about `prefix` leading tokens, without
/// a tokenizer: one common word per token.
pub fn word_prompts(rng: &mut SplitMix64, n: usize, len: usize, prefix: usize) -> Vec<Payload> {
    let mut words = |k: usize| -> String {
        (0..k)
            .map(|_| format!(" {}", WORDS[(rng.next() % WORDS.len() as u64) as usize]))
            .collect()
    };
    let shared = words(prefix.min(len));
    (0..n)
        .map(|_| Payload::Text(format!("{shared}{}", words(len - prefix.min(len)))))
        .collect()
}

/// Text of exactly `len` tokens under `tok` (`encode(text, false)`), from `pool`
/// (word tokens preferred). Fast path: decode random ids and re-encode, fixing the
/// count a few times (word tokens settle at once). Fallback, for vocabularies whose
/// pieces merge across boundaries: grow the text one piece at a time, keeping a
/// piece only when the whole text still encodes to at most `len` tokens.
fn exact_text(tok: &Tokenizer, rng: &mut SplitMix64, pool: &[u32], len: usize) -> Result<String> {
    let mut ids = random_ids(rng, pool, len);
    for _ in 0..4 {
        let text = tok.decode(&ids, false)?;
        let again = tok.encode(&text, false)?;
        if again.len() == len {
            return Ok(text);
        }
        ids = again;
        ids.truncate(len);
        let missing = len - ids.len();
        ids.extend(random_ids(rng, pool, missing));
    }
    let (mut text, mut n) = (String::new(), 0);
    for _ in 0..(64 * len + 64) {
        if n == len {
            return Ok(text);
        }
        let candidate = text.clone() + &tok.decode(&random_ids(rng, pool, 1), false)?;
        let m = tok.encode(&candidate, false)?.len();
        if m > n && m <= len {
            (text, n) = (candidate, m);
        }
    }
    if n == len {
        return Ok(text);
    }
    bail!("could not build a text of exactly {len} tokens with this tokenizer")
}

/// Text prompts of exactly `len` tokens (as the user message's own tokens) sharing
/// their first `prefix` tokens.
pub fn exact_text_prompts(
    tok: &Tokenizer,
    rng: &mut SplitMix64,
    n: usize,
    len: usize,
    prefix: usize,
) -> Result<Vec<Payload>> {
    let all = tokenizer_pool(tok);
    let words = word_pool(tok, &all);
    let pool = if words.len() >= 256 { &words } else { &all };
    if pool.is_empty() {
        bail!("the tokenizer has no ordinary tokens to build prompts from");
    }
    let prefix = prefix.min(len);
    let shared = if prefix > 0 {
        exact_text(tok, rng, pool, prefix)?
    } else {
        String::new()
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut text = String::new();
        for _ in 0..16 {
            let rest = exact_text(tok, rng, pool, len - prefix)?;
            text = format!("{shared}{rest}");
            if tok.encode(&text, false)?.len() == len {
                break;
            }
        }
        out.push(Payload::Text(text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_prompts_are_exact_seeded_and_share_the_prefix() {
        let pool = default_pool();
        let a = token_prompts(&mut SplitMix64(7), &pool, 5, 64, 16);
        let b = token_prompts(&mut SplitMix64(7), &pool, 5, 64, 16);
        let c = token_prompts(&mut SplitMix64(8), &pool, 5, 64, 16);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let ids: Vec<&Vec<u32>> = a
            .iter()
            .map(|p| match p {
                Payload::Tokens(t) => t,
                Payload::Text(_) => panic!("text"),
            })
            .collect();
        assert!(ids.iter().all(|t| t.len() == 64));
        assert!(ids.iter().all(|t| t[..16] == ids[0][..16]));
        assert_ne!(ids[0][16..], ids[1][16..]);
        assert!(ids
            .iter()
            .flat_map(|t| t.iter())
            .all(|&i| (100..10_000).contains(&i)));
    }

    #[test]
    fn word_prompts_have_one_word_per_token() {
        let p = word_prompts(&mut SplitMix64(1), 3, 20, 5);
        let texts: Vec<&str> = p
            .iter()
            .map(|x| match x {
                Payload::Text(t) => t.as_str(),
                Payload::Tokens(_) => panic!("ids"),
            })
            .collect();
        assert!(texts.iter().all(|t| t.split_whitespace().count() == 20));
        let head = |t: &str| t.split_whitespace().take(5).collect::<Vec<_>>().join(" ");
        assert_eq!(head(texts[0]), head(texts[1]));
    }

    #[test]
    fn bodies_stream_with_fixed_lengths() {
        let b = request_body(Endpoint::Completions, "m", &Payload::Tokens(vec![1, 2]), 9);
        assert_eq!(b["prompt"], json!([1, 2]));
        assert_eq!(b["max_tokens"], 9);
        assert_eq!(b["stream"], true);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        let c = request_body(Endpoint::Chat, "m", &Payload::Text("hi".into()), 3);
        assert_eq!(c["messages"][0]["content"], "hi");
        assert!(c.get("prompt").is_none());
        assert_eq!(Endpoint::Chat.path(), "/v1/chat/completions");
    }

    #[test]
    fn exact_text_with_a_real_tokenizer() {
        // The engine fixtures' tiny byte-level BPE vocabulary (built in code).
        use pdserve_engine::fixtures::{TinyVocab, ENDOFTEXT};
        let inner = TinyVocab::new(512).unwrap().tokenizer().unwrap();
        let tok = Tokenizer::from_parts(inner, None, Some(ENDOFTEXT), None).unwrap();
        let prompts = exact_text_prompts(&tok, &mut SplitMix64(3), 4, 12, 4).unwrap();
        for p in &prompts {
            let Payload::Text(t) = p else { panic!("ids") };
            assert_eq!(tok.encode(t, false).unwrap().len(), 12, "{t:?}");
        }
        let pool = tokenizer_pool(&tok);
        assert!(!pool.is_empty());
        assert!(tok.eos_token_ids().iter().all(|e| !pool.contains(e)));
    }
}
