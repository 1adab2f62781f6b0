//! Building a model runner on a CUDA device: the backend, the weights uploaded as
//! bf16, and a KV pool sized from `--gpu-memory-utilization` (or `--kv-cache-mb`).
//!
//! KV sizing (our own arithmetic on vLLM's meaning of the flag): this engine's
//! budget is the fraction `gpu_memory_utilization` of the device's *total*
//! memory, capped by what is free when it starts (other processes, or the other
//! engines of a `serve` process, which split the fraction between them); from it
//! come the bf16 weights and an activation reserve for the largest step
//! (`max_batched_tokens` rows, and the logits of `max_num_seqs` rows), and the KV
//! pool gets what is left.

use super::CudaBackend;
use crate::config::ModelConfig;
use crate::engine::EngineConfig;
use crate::kv::pool::{KvDtype, KvLayout};
use crate::loader::LoadedModel;
use crate::model::{Model, ModelRunner};
use crate::{EngineError, Result};

/// Workspace and allocator slack kept free besides the computed reserve.
const SLACK_BYTES: usize = 256 << 20;

/// Bytes of the model's weights stored as bf16.
pub fn bf16_weight_bytes(c: &ModelConfig) -> usize {
    let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let per_layer = h * q + 2 * h * kv + q * h + 3 * h * ff + 4 * h;
    let embed = c.vocab_size * h;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    2 * (embed + head + c.num_layers * per_layer + h)
}

/// Bytes of the activations of one step: the buffers `Model::forward` allocates
/// for `rows` rows (bf16) and the logits of `logit_rows` rows (bf16 on the
/// device, then f32 on the host).
pub fn activation_bytes(c: &ModelConfig, rows: usize, logit_rows: usize) -> usize {
    let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let per_row = 3 * h + 2 * q + 2 * kv + 2 * ff;
    2 * (rows * per_row + logit_rows * (2 * h + c.vocab_size))
}

/// The KV pool's bytes: explicit (`kv_cache_bytes > 0`), or what the memory rule
/// in the module header leaves. An error says how much is missing.
pub fn kv_pool_bytes(
    config: &EngineConfig,
    total: usize,
    free: usize,
    weights: usize,
    activations: usize,
) -> Result<usize> {
    if config.kv_cache_bytes > 0 {
        return Ok(config.kv_cache_bytes);
    }
    let util = config.gpu_memory_utilization;
    if !(util > 0.0 && util <= 1.0) {
        return Err(EngineError::Config(format!(
            "--gpu-memory-utilization {util} is not in (0, 1]"
        )));
    }
    let share = (total as f64 * util as f64) as usize;
    let budget = share.min(free);
    let needed = weights + activations + SLACK_BYTES;
    budget
        .checked_sub(needed)
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            EngineError::Device(format!(
                "no room for a KV cache: this engine may use {} MiB ({:.0}% of {} MiB, \
                 {} MiB free now), but the weights need {} MiB and the activations {} MiB \
                 (raise --gpu-memory-utilization, lower --max-batched-tokens, or free the \
                 device)",
                budget >> 20,
                util * 100.0,
                total >> 20,
                free >> 20,
                weights >> 20,
                (activations + SLACK_BYTES) >> 20
            ))
        })
}

/// The model on CUDA device `ordinal`, with its KV pool.
pub fn cuda_model_runner(
    model: &LoadedModel,
    config: &EngineConfig,
    ordinal: usize,
) -> Result<Box<dyn ModelRunner>> {
    if let Some(d) = config.kv_dtype.filter(|&d| d != KvDtype::Bf16) {
        return Err(EngineError::InvalidConfig(format!(
            "CUDA stores the KV cache as bf16, not {d}"
        )));
    }
    let backend = CudaBackend::new(ordinal)?;
    let c = &model.config;
    let info = backend.info().clone();
    let free = backend.free_memory()?;
    let activations = activation_bytes(c, config.max_batched_tokens, config.max_num_seqs);
    let kv_bytes = kv_pool_bytes(
        config,
        info.total_mem,
        free,
        bf16_weight_bytes(c),
        activations,
    )?;
    let per_block =
        Model::<CudaBackend>::layout_for(c, config.block_size, 1, KvDtype::Bf16).block_bytes();
    let num_blocks = KvLayout::blocks_for_bytes(kv_bytes, per_block);
    tracing::info!(
        device = %info.name,
        kv_mib = kv_bytes >> 20,
        num_blocks,
        "CUDA engine: KV pool sized"
    );
    let runner = Model::new(
        backend,
        c.clone(),
        &model.weights,
        config.block_size,
        num_blocks,
    )?;
    Ok(Box::new(runner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_06b() -> ModelConfig {
        let mut c = crate::fixtures::TinyModelSpec::tiny_qwen3().config();
        c.hidden_size = 1024;
        c.num_layers = 28;
        c.num_heads = 16;
        c.num_kv_heads = 8;
        c.head_dim = 128;
        c.intermediate_size = 3072;
        c.vocab_size = 151_936;
        c.tie_word_embeddings = true;
        c
    }

    #[test]
    fn qwen3_06b_weights_are_about_1_2_gb() {
        // Qwen3-0.6B has 596M parameters with its tied embedding counted once.
        let params = bf16_weight_bytes(&qwen3_06b()) / 2;
        assert!((590_000_000..600_000_000).contains(&params), "{params}");
    }

    #[test]
    fn kv_pool_gets_what_the_rule_leaves() {
        let gib = 1usize << 30;
        let auto = EngineConfig {
            kv_cache_bytes: 0,
            gpu_memory_utilization: 0.9,
            ..EngineConfig::default()
        };
        // 80 GiB device, 2 GiB used by someone else, 1 GiB weights, 1 GiB
        // activations: 90% of the total fits in what is free.
        let kv = kv_pool_bytes(&auto, 80 * gib, 78 * gib, gib, gib).unwrap();
        // (0.9 as f32 is a hair under 0.9: allow a few hundred bytes.)
        let want = 72 * gib - 2 * gib - SLACK_BYTES;
        assert!(kv <= want && want - kv < 1 << 20, "{kv} vs {want}");
        // Two engines of one process, each with half the fraction: the second
        // starts with the first one's share taken and still gets its own.
        let half = EngineConfig {
            gpu_memory_utilization: 0.45,
            ..auto.clone()
        };
        let first = kv_pool_bytes(&half, 80 * gib, 80 * gib, gib, gib).unwrap();
        let second = kv_pool_bytes(&half, 80 * gib, 44 * gib, gib, gib).unwrap();
        assert_eq!(first, second);
        // Less free than the share: the budget is what is free.
        let squeezed = kv_pool_bytes(&auto, 80 * gib, 10 * gib, gib, gib).unwrap();
        assert_eq!(squeezed, 8 * gib - SLACK_BYTES);
        // An explicit size wins.
        let fixed = EngineConfig {
            kv_cache_bytes: 3 * gib,
            ..auto.clone()
        };
        assert_eq!(
            kv_pool_bytes(&fixed, 80 * gib, gib, gib, gib).unwrap(),
            3 * gib
        );
        // Nothing left: a clear error naming the figures.
        let e = kv_pool_bytes(&auto, 8 * gib, gib, gib, gib)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no room for a KV cache") && e.contains("MiB free now"),
            "{e}"
        );
        let bad = EngineConfig {
            gpu_memory_utilization: 1.5,
            ..auto
        };
        assert!(kv_pool_bytes(&bad, 80 * gib, 80 * gib, gib, gib).is_err());
    }

    #[test]
    fn activation_reserve_grows_with_the_step() {
        let c = qwen3_06b();
        let small = activation_bytes(&c, 1, 1);
        let big = activation_bytes(&c, 8192, 256);
        assert!(big > 100 * small);
        // 8192 rows of Qwen3-0.6B: ~16 KiB of bf16 per row in the buffers.
        assert!(big < 1 << 30, "{big}");
    }
}
