//! Per-request sampling: logits processors (penalties, temperature, top-k, top-p,
//! min-p), seeded random choice, logprobs, and stop conditions.
//!
//! OWNER: helper D. The public API of this file is fixed; the work is split into
//! [`processors`] (penalties, masking), [`truncation`] (temperature, top-k/p, min-p and
//! the draw), [`fastmath`] (vectorisable exp), [`select`] (partial top-N selection), [`rng`] (the seeded generator),
//! [`validate`] (request checks) and [`stop`] (stop strings over streamed text).
//!
//! # Order of operations in [`SequenceSampler::sample`] (vLLM-like)
//! 1. repetition penalty (HF: positive logits divided, others multiplied) over the
//!    distinct tokens of prompt + output;
//! 2. presence / frequency penalties (OpenAI: `-= count * freq + presence`) over the
//!    output tokens only;
//! 3. while fewer than `min_tokens` tokens are out: eos ids (unless `ignore_eos`) and
//!    `stop_token_ids` set to `-inf`;
//! 4. sanitising: NaN becomes `-inf` (never chosen), `+inf` becomes `f32::MAX`;
//! 5. `temperature == 0` → argmax, ties to the lowest id; otherwise softmax of
//!    `logits / temperature`, truncated by top-k, then top-p (smallest best-first set
//!    reaching the mass, at least one token), then min-p (keeps `p >= min_p * p_max`),
//!    and one inverse-CDF draw.
//!
//! After the call the slice holds the logits after steps 1–4 (temperature and
//! truncation never write to it).
//!
//! # Logprobs
//! `SampledToken::logprob` and `top_logprobs` are the log-softmax of the logits after
//! steps 1–4, i.e. after penalties and the min_tokens mask but **before** temperature
//! and truncation (like vLLM's default "raw" logprobs, except that penalties count).
//! A token that could not be chosen there has logprob `-inf`, reported as
//! [`MIN_LOGPROB`] so the value stays finite on the wire; alternatives only list
//! selectable tokens, best first, ties to the lowest id.
//!
//! # Randomness
//! Each sequence owns a xoshiro256** generator seeded from `SamplingParams::seed`
//! (or [`rng::fresh_seed`] when absent). Every `sample` call with `temperature > 0`
//! consumes exactly one 64-bit draw and greedy calls consume none, so a sequence's
//! tokens depend only on its seed and its logits, never on its batch-mates.

pub mod device;
pub mod fastmath;
pub mod processors;
pub mod rng;
pub mod select;
pub mod stop;
pub mod truncation;
pub mod validate;

#[cfg(test)]
mod tests;

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

    /// Range checks with messages fit for an HTTP 400 (names the field and the value).
    pub fn validate(&self) -> crate::Result<()> {
        validate::check(self)
    }
}

/// Logprob reported for a token whose processed logit is `-inf` (finite on the wire).
pub const MIN_LOGPROB: f32 = -9999.0;

/// One sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledToken {
    pub token: u32,
    /// log-softmax of the logits after penalties and the min_tokens mask, before
    /// temperature and truncation (see the module docs); at least [`MIN_LOGPROB`].
    pub logprob: f32,
    /// Top alternatives (token, logprob), best first; empty unless asked.
    pub top_logprobs: Vec<(u32, f32)>,
}

thread_local! {
    /// Candidate buffer reused by all samplers on this thread, so a sequence does not
    /// keep a vocabulary-sized buffer alive between steps.
    static SCRATCH: std::cell::RefCell<Vec<(f32, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sampling state of one sequence: its rng and token counts for penalties.
pub struct SequenceSampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    min_tokens: usize,
    logprobs: Option<usize>,
    /// Tokens that end the sequence: eos ids (unless ignore_eos) + stop_token_ids,
    /// deduplicated. Also the tokens masked before `min_tokens`.
    stop_ids: Vec<u32>,
    seed: u64,
    rng: rng::Rng,
    generated: usize,
    /// Generated token → occurrences (presence/frequency penalties).
    output_counts: std::collections::HashMap<u32, u32>,
    /// Distinct prompt + generated tokens; only kept when repetition_penalty != 1.
    seen: Option<std::collections::HashSet<u32>>,
}

impl SequenceSampler {
    /// `eos_token_ids`: the model's end tokens (masked until `min_tokens` are out,
    /// together with `stop_token_ids`).
    pub fn new(params: &SamplingParams, prompt_tokens: &[u32], eos_token_ids: &[u32]) -> Self {
        let mut stop_ids: Vec<u32> = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_token_ids);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let seed = params.seed.unwrap_or_else(rng::fresh_seed);
        let seen =
            (params.repetition_penalty != 1.0).then(|| prompt_tokens.iter().copied().collect());
        SequenceSampler {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            min_tokens: params.min_tokens,
            logprobs: params.logprobs,
            stop_ids,
            seed,
            rng: rng::Rng::seed_from_u64(seed),
            generated: 0,
            output_counts: std::collections::HashMap::new(),
            seen,
        }
    }

    /// Chooses the next token from `logits` (modified in place), records it for
    /// penalties and the generated count. On return `logits` holds the processed
    /// logits (after penalties, min_tokens mask and sanitising; see module docs).
    ///
    /// An empty row or one with no selectable entry (all `-inf`/NaN) yields token 0
    /// with logprob [`MIN_LOGPROB`]; a real model never produces one.
    pub fn sample(&mut self, logits: &mut [f32]) -> SampledToken {
        self.process(logits);
        let greedy = self.is_greedy();
        let u = if greedy { 0.0 } else { self.rng.next_f64() };
        let best = processors::sanitize_argmax(logits);
        let Some((argmax, max)) = best else {
            tracing::warn!(
                vocab = logits.len(),
                "no selectable logit; emitting token 0"
            );
            self.record(0);
            return SampledToken {
                token: 0,
                logprob: MIN_LOGPROB,
                top_logprobs: Vec::new(),
            };
        };
        let mut top_logprobs = Vec::new();
        let token = SCRATCH.with(|cell| {
            let mut fallback = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let cands = match guard.as_mut() {
                Ok(v) => &mut **v,
                Err(_) => &mut fallback,
            };
            let token = if greedy {
                argmax
            } else {
                let t = truncation::Truncation {
                    temperature: self.temperature,
                    top_k: self.top_k,
                    top_p: self.top_p,
                    min_p: self.min_p,
                };
                truncation::draw(logits, max, &t, u, cands).unwrap_or(argmax)
            };
            if let Some(n) = self.logprobs {
                select::top_n(logits, n, cands);
                top_logprobs = cands.iter().map(|&(x, id)| (id, x)).collect();
            }
            token
        });
        let lse = processors::log_sum_exp(logits, max);
        let logprob_of = |x: f32| (x - lse).max(MIN_LOGPROB);
        for (_, lp) in &mut top_logprobs {
            *lp = logprob_of(*lp);
        }
        let logprob = logits
            .get(token as usize)
            .map_or(MIN_LOGPROB, |&x| logprob_of(x));
        self.record(token);
        SampledToken {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// How a device may pick this sequence's next token without its logits row
    /// coming to the host ([`device`]), or `None` when the step needs the host
    /// sampler (penalties, truncation, requested logprobs, an active min_tokens
    /// mask). Does not change the state: [`Self::accept_picked`] does.
    pub fn device_pick(&self) -> Option<device::DevicePick> {
        let plain = self.seen.is_none()
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logprobs.is_none()
            && (self.generated >= self.min_tokens || self.stop_ids.is_empty());
        if !plain {
            return None;
        }
        if self.is_greedy() {
            return Some(device::DevicePick::Greedy);
        }
        let untruncated = self.top_k == 0 && self.top_p >= 1.0 && self.min_p <= 0.0;
        // The number the host path would draw next: the step's seed.
        untruncated.then(|| device::DevicePick::Gumbel {
            inv_temperature: 1.0 / self.temperature,
            seed: self.rng.clone().next_u64(),
        })
    }

    /// Records a token a device picked (after [`Self::device_pick`]): the state
    /// advances exactly as if `sample` had chosen it.
    pub fn accept_picked(&mut self, picked: device::Picked) -> SampledToken {
        self.record_token(picked.token);
        SampledToken {
            token: picked.token,
            logprob: picked.logprob,
            top_logprobs: Vec::new(),
        }
    }

    /// Temperature 0 means greedy; so does any value `validate` would reject (negative,
    /// NaN, infinite), so an unvalidated request cannot produce NaN weights.
    fn is_greedy(&self) -> bool {
        !(self.temperature > 0.0 && self.temperature.is_finite())
    }

    /// Steps 1–3 of the module docs: penalties and the min_tokens mask.
    fn process(&self, logits: &mut [f32]) {
        if let Some(seen) = &self.seen {
            processors::repetition_penalty(logits, seen.iter().copied(), self.repetition_penalty);
        }
        processors::presence_frequency(
            logits,
            self.output_counts.iter().map(|(&t, &c)| (t, c)),
            self.presence_penalty,
            self.frequency_penalty,
        );
        if self.generated < self.min_tokens {
            processors::mask(logits, &self.stop_ids);
        }
    }

    fn record(&mut self, token: u32) {
        self.generated += 1;
        *self.output_counts.entry(token).or_insert(0) += 1;
        if let Some(seen) = &mut self.seen {
            seen.insert(token);
        }
    }

    /// Records a token chosen elsewhere (e.g. the first token, sampled on the prefill
    /// node) and advances the generator as `sample` would have, so that afterwards this
    /// sampler is in exactly the state of one that sampled `token` itself.
    pub fn record_token(&mut self, token: u32) {
        if !self.is_greedy() {
            self.rng.next_u64();
        }
        self.record(token);
    }

    /// The seed in use (the request's, or the generated one), for logs and replays.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Restores the state after a preemption-by-recompute? No: generated tokens are
    /// kept, so nothing to do. Kept for symmetry with `new`.
    pub fn num_generated(&self) -> usize {
        self.generated
    }

    /// True when `token` ends the sequence by token id (eos unless ignore_eos, or a
    /// stop token id), honouring `min_tokens`. Call it after `sample` (or
    /// `record_token`) with the token just produced: it stops only once at least
    /// `min_tokens` tokens, this one included, are out.
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.generated >= self.min_tokens && self.stop_ids.binary_search(&token).is_ok()
    }
}
