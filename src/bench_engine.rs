//! `pdserve bench-engine`: B concurrent requests of exactly P random (seeded,
//! non-special) prompt tokens, each generating exactly G tokens (`ignore_eos`),
//! driven straight through the engine. Reports prefill and decode throughput, ms
//! per step and peak RSS.
//!
//! Phases: *prefill* runs from adding the requests until every request has its
//! first token; *decode* runs from then to the end, and counts only the tokens
//! produced in it, over its own steps.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{bail, Result};

use pdserve_engine::config::ModelConfig;
use pdserve_engine::device::Device;
use pdserve_engine::engine::{Engine, EngineConfig, EngineRequest};
use pdserve_engine::loader::load_model;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::tokenizer::Tokenizer;
use pdserve_engine::SeqId;

use crate::cli::BenchEngineArgs;

/// Results of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    pub model: String,
    pub batch: usize,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub ms_per_step: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub steps: usize,
    pub decode_steps: usize,
    pub peak_rss_mb: Option<f64>,
}

impl BenchResult {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "batch": self.batch,
            "prompt_len": self.prompt_len,
            "gen_len": self.gen_len,
            "prefill_tok_s": round2(self.prefill_tok_s),
            "decode_tok_s": round2(self.decode_tok_s),
            "ms_per_step": round2(self.ms_per_step),
            "prefill_s": round4(self.prefill_s),
            "decode_s": round4(self.decode_s),
            "steps": self.steps,
            "decode_steps": self.decode_steps,
            "peak_rss_mb": self.peak_rss_mb.map(round2),
        })
    }

    pub fn to_text(&self) -> String {
        let rss = self
            .peak_rss_mb
            .map(|m| format!("{m:.1} MB"))
            .unwrap_or_else(|| "n/a".into());
        format!(
            "model: {}\nbatch: {}, prompt len: {}, gen len: {}\n\
             prefill: {:.1} tok/s ({:.3} s)\ndecode: {:.1} tok/s ({:.3} s, {} steps)\n\
             ms/step (decode): {:.2}\npeak RSS: {}",
            self.model,
            self.batch,
            self.prompt_len,
            self.gen_len,
            self.prefill_tok_s,
            self.prefill_s,
            self.decode_tok_s,
            self.decode_s,
            self.decode_steps,
            self.ms_per_step,
            rss
        )
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

pub fn run(args: &BenchEngineArgs) -> Result<()> {
    let (batch, p, g) = (
        args.batch as usize,
        args.prompt_len as usize,
        args.gen_len as usize,
    );
    let model = load_model(&args.model.model, &args.model.load_options())?;
    let name = model.name.clone();
    let max_ctx = model.config.max_position_embeddings;
    if p + g > max_ctx {
        bail!(
            "--prompt-len + --gen-len = {} exceeds the model's context of {max_ctx} tokens",
            p + g
        );
    }
    let engine_config = sized_engine_config(args, &model.config, batch, p + g)?;
    let mut engine = Engine::new(model, engine_config)?;
    let vocab = token_pool(engine.tokenizer(), engine.model_config());
    if vocab.is_empty() {
        bail!("the model has no non-special tokens to build prompts from");
    }
    let mut rng = SplitMix64(args.seed);

    let mut next_id = 0u64;
    for _ in 0..args.warmup {
        let req = request(&mut next_id, random_prompt(&mut rng, &vocab, p), g.min(8));
        engine.add_request(req)?;
        while engine.has_work() {
            engine.step()?;
        }
    }

    let requests: Vec<EngineRequest> = (0..batch)
        .map(|_| request(&mut next_id, random_prompt(&mut rng, &vocab, p), g))
        .collect();
    let start = Instant::now();
    for r in requests {
        engine.add_request(r)?;
    }
    let mut have_first: HashSet<SeqId> = HashSet::new();
    let mut prefill_end: Option<Instant> = None;
    let (mut steps, mut decode_steps, mut decode_tokens) = (0usize, 0usize, 0usize);
    while engine.has_work() {
        let outputs = engine.step()?;
        steps += 1;
        if prefill_end.is_some() {
            decode_steps += 1;
            decode_tokens += outputs.len();
        } else {
            for o in &outputs {
                have_first.insert(o.id);
            }
            if have_first.len() == batch {
                prefill_end = Some(Instant::now());
            }
        }
    }
    let end = Instant::now();
    let prefill_end = prefill_end.unwrap_or(end);
    let prefill_s = (prefill_end - start).as_secs_f64();
    let decode_s = (end - prefill_end).as_secs_f64();
    let per_s = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let result = BenchResult {
        model: name,
        batch,
        prompt_len: p,
        gen_len: g,
        prefill_tok_s: per_s(batch * p, prefill_s),
        decode_tok_s: per_s(decode_tokens, decode_s),
        ms_per_step: if decode_steps > 0 {
            decode_s * 1e3 / decode_steps as f64
        } else {
            0.0
        },
        prefill_s,
        decode_s,
        steps,
        decode_steps,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", result.to_json());
    } else {
        println!("{}", result.to_text());
    }
    Ok(())
}

fn request(next_id: &mut u64, prompt_tokens: Vec<u32>, max_tokens: usize) -> EngineRequest {
    let id = SeqId(*next_id);
    *next_id += 1;
    EngineRequest {
        id,
        prompt_tokens,
        params: SamplingParams {
            ignore_eos: true,
            max_tokens,
            ..SamplingParams::greedy(max_tokens)
        },
    }
}

/// Engine config from the flags, with room for every request at full length
/// unless the user sized the KV cache, and enough sequence slots for the batch.
fn sized_engine_config(
    args: &BenchEngineArgs,
    model: &ModelConfig,
    batch: usize,
    seq_len: usize,
) -> Result<EngineConfig> {
    let mut c = args.engine.engine_config()?;
    c.max_num_seqs = c.max_num_seqs.max(batch);
    // On CUDA the pool is sized from --gpu-memory-utilization instead.
    if args.engine.kv_cache_mb.is_none() && c.device == Device::Cpu {
        let blocks_per_seq = seq_len.div_ceil(c.block_size.max(1)) + 1;
        // K and V, f32, every layer (an upper bound for narrower KV types).
        let bytes_per_token = 2 * model.num_layers * model.kv_dim() * 4;
        let need = batch
            .saturating_mul(blocks_per_seq)
            .saturating_mul(c.block_size)
            .saturating_mul(bytes_per_token);
        c.kv_cache_bytes = c.kv_cache_bytes.max(need.saturating_add(need / 8));
    }
    Ok(c)
}

/// Token ids a prompt may use: below the model's vocab size and not special.
pub(crate) fn token_pool(tok: &Tokenizer, config: &ModelConfig) -> Vec<u32> {
    let mut special: HashSet<u32> = tok
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    special.extend(tok.eos_token_ids());
    special.extend(tok.bos_token_id());
    special.extend(config.eos_token_ids.iter().copied());
    special.extend(config.bos_token_id);
    let n = config.vocab_size.min(tok.vocab_size()) as u32;
    (0..n).filter(|id| !special.contains(id)).collect()
}

pub(crate) fn random_prompt(rng: &mut SplitMix64, pool: &[u32], len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| pool[(rng.next() % pool.len() as u64) as usize])
        .collect()
}

/// Small deterministic generator (SplitMix64) for reproducible prompts.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Peak resident set size (VmHWM) in MB, where `/proc` has it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm_kb(&status).map(|kb| kb as f64 / 1024.0)
}

fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_parsed() {
        let status = "Name:\tpdserve\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(12345));
        assert_eq!(parse_vm_hwm_kb("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|m| m > 0.0));
        }
    }

    #[test]
    fn random_prompts_are_seeded_and_drawn_from_the_pool() {
        let pool = vec![5u32, 7, 11, 13];
        let a = random_prompt(&mut SplitMix64(3), &pool, 64);
        let b = random_prompt(&mut SplitMix64(3), &pool, 64);
        let c = random_prompt(&mut SplitMix64(4), &pool, 64);
        assert_eq!(a.len(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|t| pool.contains(t)));
        // Every pool entry shows up in 64 draws from 4.
        assert!(pool.iter().all(|t| a.contains(t)));
    }

    #[test]
    fn json_has_every_field() {
        let r = BenchResult {
            model: "m".into(),
            batch: 2,
            prompt_len: 3,
            gen_len: 4,
            prefill_tok_s: 100.123,
            decode_tok_s: 50.0,
            ms_per_step: 40.0,
            prefill_s: 0.06,
            decode_s: 0.12,
            steps: 5,
            decode_steps: 3,
            peak_rss_mb: Some(10.5),
        };
        let j = r.to_json();
        for key in [
            "model",
            "batch",
            "prompt_len",
            "gen_len",
            "prefill_tok_s",
            "decode_tok_s",
            "ms_per_step",
            "peak_rss_mb",
        ] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert_eq!(j["prefill_tok_s"], 100.12);
        assert!(r.to_text().contains("peak RSS: 10.5 MB"));
    }
}
