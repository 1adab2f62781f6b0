//! Sampled tokens' logprobs in OpenAI's two shapes: chat
//! (`{"content":[{token, logprob, bytes, top_logprobs:[…]}]}`) and legacy completions
//! (`{tokens, token_logprobs, top_logprobs:[{text: logprob}], text_offset}`).
//!
//! Invariants: a token's text is its own decoding (special tokens kept), so a token
//! that is part of a multi-byte character shows as U+FFFD, as in other servers;
//! `bytes` are that text's UTF-8 bytes. `text_offset` counts bytes of the token texts
//! from the start of the completion.

use std::collections::BTreeMap;

use pdserve_engine::sampling::SampledToken;
use pdserve_engine::tokenizer::Tokenizer;

use crate::openai::response::{ChatTokenLogprob, CompletionLogprobs, TopLogprob};

fn text_of(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

pub fn chat(tokenizer: &Tokenizer, tokens: &[SampledToken]) -> Vec<ChatTokenLogprob> {
    tokens
        .iter()
        .map(|t| {
            let token = text_of(tokenizer, t.token);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: t.logprob,
                top_logprobs: t
                    .top_logprobs
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = text_of(tokenizer, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// `offset`: bytes of token text before these tokens; advanced past them.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[SampledToken],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let text = text_of(tokenizer, t.token);
        out.text_offset.push(*offset);
        *offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob);
        let mut top = BTreeMap::new();
        for &(id, lp) in &t.top_logprobs {
            // Two ids with the same text: keep the better (first) one.
            top.entry(text_of(tokenizer, id)).or_insert(lp);
        }
        out.top_logprobs.push(top);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pdserve_engine::fixtures::{write_tokenizer_files, TinyModelSpec};

    #[test]
    fn both_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tokenizer_files(&TinyModelSpec::tiny_llama(), dir.path()).expect("write");
        let tok = Tokenizer::from_hf_dir(dir.path()).expect("load");
        let ids = tok.encode("Hi", false).expect("encode");
        let a = ids[0];
        let sampled = vec![
            SampledToken {
                token: a,
                logprob: -0.5,
                top_logprobs: vec![(a, -0.5), (b'x' as u32, -1.5)],
            },
            SampledToken {
                token: a,
                logprob: -0.25,
                top_logprobs: vec![],
            },
        ];
        let c = chat(&tok, &sampled);
        let a_text = tok.decode(&[a], false).expect("decode");
        assert_eq!(c[0].token, a_text);
        assert_eq!(c[0].bytes, a_text.as_bytes());
        assert_eq!(c[0].top_logprobs[1].token, "x");
        assert_eq!(c[1].logprob, -0.25);
        let mut off = 3;
        let l = completion(&tok, &sampled, &mut off);
        assert_eq!(l.text_offset, vec![3, 3 + a_text.len()]);
        assert_eq!(off, 3 + 2 * a_text.len());
        assert_eq!(l.top_logprobs[0].get("x"), Some(&-1.5));
        assert_eq!(l.token_logprobs, vec![-0.5, -0.25]);
    }
}
