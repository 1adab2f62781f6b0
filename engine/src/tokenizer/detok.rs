//! Streaming detokenization.
//!
//! Decoding one token at a time is wrong in two ways: a byte-level or `<0xNN>`
//! token can end in the middle of a UTF-8 character, and decoders treat the start
//! of a text specially (SentencePiece drops the leading space). So each step decodes
//! a small window — the tokens already emitted by the previous step (`prefix`) plus
//! everything not yet emitted — and emits what the window's text adds to the
//! prefix's text. Text that ends in U+FFFD (an incomplete character) is held back
//! until a later token completes it.
//!
//! Invariants: the concatenation of all `push` results and the final `flush` equals
//! `decode(all tokens)` whenever that decode is valid UTF-8 text (no U+FFFD) and the
//! decoder is prefix-stable; no emitted delta ever contains half a character (they
//! are `String`s); the window holds at most the previous step's tokens plus the
//! held-back ones, and no more than [`MAX_HELD`] tokens are ever held back.

use super::Tokenizer;
use crate::Result;

/// After this many tokens without a complete character, whatever the window decodes
/// to is emitted (replacement characters included), so a model that produces
/// invalid bytes cannot stall the stream or grow the window without bound.
const MAX_HELD: usize = 16;
/// How many prompt tokens [`IncrementalDecoder::with_prefix`] keeps as context.
const PREFIX_CONTEXT: usize = 6;

/// Turns a token stream into text deltas that never split a UTF-8 character (a
/// byte-fallback or byte-level token that ends mid-character is held back).
/// Holds no reference to the tokenizer so that an engine can keep one per sequence.
pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    /// `ids[..prefix_offset]` is context only (never emitted by us);
    /// `ids[prefix_offset..read_offset]` was emitted by the previous step;
    /// `ids[read_offset..]` is held back.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Like [`IncrementalDecoder::new`], with the last few prompt tokens as context so
    /// that the first generated token keeps its leading space (SentencePiece).
    pub fn with_prefix(skip_special_tokens: bool, prompt_ids: &[u32]) -> Self {
        let start = prompt_ids.len().saturating_sub(PREFIX_CONTEXT);
        let ids = prompt_ids[start..].to_vec();
        let n = ids.len();
        IncrementalDecoder {
            skip_special_tokens,
            ids,
            prefix_offset: 0,
            read_offset: n,
        }
    }

    /// Adds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        self.ids.push(token);
        let skip = self.skip_special_tokens;
        let prefix_text =
            tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let new_text = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        let held = self.ids.len() - self.read_offset;
        let complete = new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}');
        if !complete && held < MAX_HELD {
            return Ok(String::new());
        }
        let delta = diff(&prefix_text, &new_text);
        self.advance();
        Ok(delta)
    }

    /// Whatever is still held back at end of stream (lossy-decoded).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> String {
        if self.read_offset >= self.ids.len() {
            return String::new();
        }
        let skip = self.skip_special_tokens;
        let prefix = &self.ids[self.prefix_offset..self.read_offset];
        let prefix_text = tokenizer.decode(prefix, skip).unwrap_or_default();
        let new_text = tokenizer
            .decode(&self.ids[self.prefix_offset..], skip)
            .unwrap_or_default();
        let delta = diff(&prefix_text, &new_text);
        self.advance();
        delta
    }

    /// Marks everything pushed so far as emitted and drops tokens that are no longer
    /// needed as context.
    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
    }
}

/// What `new` adds to `old`. Normally `old` is a prefix of `new`; if a decoder
/// rewrote the boundary, the part of `new` after `old`'s length (rounded down to a
/// character boundary) is taken.
fn diff(old: &str, new: &str) -> String {
    if let Some(rest) = new.strip_prefix(old) {
        return rest.to_string();
    }
    let mut cut = old.len().min(new.len());
    while !new.is_char_boundary(cut) {
        cut -= 1;
    }
    new[cut..].to_string()
}
