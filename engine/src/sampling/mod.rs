//! Per-request sampling: logits processors (penalties, temperature, top-k, top-p,
//! min-p), seeded random choice, logprobs, and stop conditions.
//!
//! OWNER: helper D. Public API below is fixed; fill in bodies, add submodules.

pub mod stop;

use serde::{Deserialize, Serialize};

/// What the client asked for; validated by `validate()` before reaching the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0.0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables; must be in (0, 1].
    pub top_p: f32,
    /// 0.0 disables; in [0, 1].
    pub min_p: f32,
    /// Per-request seed: same seed + same logits sequence → same tokens, whatever
    /// else runs in the batch.
    pub seed: Option<u64>,
    /// HF-style multiplicative penalty over prompt + generated tokens; 1.0 disables.
    pub repetition_penalty: f32,
    /// OpenAI-style additive penalties over generated tokens; 0.0 disables.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    pub max_tokens: usize,
    /// `Some(k)`: return the chosen token's logprob and the top-k alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            min_tokens: 0,
            max_tokens: 256,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            max_tokens,
            ..Default::default()
        }
    }

    /// Range checks with messages fit for an HTTP 400 (names the field).
    pub fn validate(&self) -> crate::Result<()> {
        todo!("helper D")
    }
}

/// One sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledToken {
    pub token: u32,
    /// log-softmax of the *unmodified* logits (after penalties? see module docs).
    pub logprob: f32,
    /// Top alternatives (token, logprob), best first; empty unless asked.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Sampling state of one sequence: its rng and token counts for penalties.
pub struct SequenceSampler {
    // helper D
}

impl SequenceSampler {
    /// `eos_token_ids`: the model's end tokens (masked until `min_tokens` are out,
    /// together with `stop_token_ids`).
    pub fn new(params: &SamplingParams, prompt_tokens: &[u32], eos_token_ids: &[u32]) -> Self {
        let _ = (params, prompt_tokens, eos_token_ids);
        todo!("helper D")
    }

    /// Chooses the next token from `logits` (modified in place), records it for
    /// penalties and the generated count.
    pub fn sample(&mut self, logits: &mut [f32]) -> SampledToken {
        let _ = logits;
        todo!("helper D")
    }

    /// Restores the state after a preemption-by-recompute? No: generated tokens are
    /// kept, so nothing to do. Kept for symmetry with `new`.
    pub fn num_generated(&self) -> usize {
        todo!("helper D")
    }

    /// True when `token` ends the sequence by token id (eos unless ignore_eos, or a
    /// stop token id), honouring `min_tokens`.
    pub fn is_stop_token(&self, token: u32) -> bool {
        let _ = token;
        todo!("helper D")
    }
}
