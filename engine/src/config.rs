//! Resolved model configuration: one struct whatever the source (HF `config.json`
//! or GGUF metadata), validated so that the forward pass can trust every field.

use serde::Deserialize;

use crate::gguf::GgufMetadata;
use crate::{EngineError, Result};

/// Decoder-only architectures we run. All are pre-norm RMSNorm / RoPE / SwiGLU
/// transformers with grouped-query attention; they differ in biases and norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (SmolLM2, Llama 2/3): no biases.
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections have biases.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k, no biases.
    Qwen3,
}

pub const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM (gguf: llama), Qwen2ForCausalLM (qwen2), Qwen3ForCausalLM (qwen3)";

impl Architecture {
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" | "MistralForCausalLM" => Ok(Architecture::Llama),
            "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Ok(Architecture::Qwen3),
            other => Err(unsupported(other)),
        }
    }
    pub fn from_gguf(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            other => Err(unsupported(other)),
        }
    }
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
    pub fn has_qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }
    pub fn has_qk_norm(self) -> bool {
        self == Architecture::Qwen3
    }
}

fn unsupported(found: &str) -> EngineError {
    EngineError::UnsupportedArchitecture {
        found: found.to_string(),
        supported: SUPPORTED_ARCHITECTURES.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The subset of HF `config.json` we read.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

/// `eos_token_id` may be a number or a list of numbers.
pub fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Parses HF `config.json` text.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| EngineError::Config(format!("config.json: {e}")))?;
        let arch_name = c
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .ok_or_else(|| EngineError::Config("config.json has no `architectures`".into()))?;
        let arch = Architecture::from_hf(arch_name)?;
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        let head_dim = c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
        let cfg = ModelConfig {
            arch,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            rope_theta: c.rope_theta.unwrap_or(10000.0),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&c.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&c.eos_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From GGUF metadata; `has_output_tensor` tells whether `output.weight` exists
    /// (absent means tied embeddings).
    pub fn from_gguf(meta: &GgufMetadata, has_output_tensor: bool) -> Result<Self> {
        let arch_name = meta
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| EngineError::Config("GGUF has no general.architecture".into()))?;
        let arch = Architecture::from_gguf(arch_name)?;
        let p = arch.gguf_name();
        let get_u = |key: &str| -> Result<usize> {
            meta.get(&format!("{p}.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| EngineError::Config(format!("GGUF metadata lacks {p}.{key}")))
        };
        let get_f = |key: &str| meta.get(&format!("{p}.{key}")).and_then(|v| v.as_f64());
        let hidden_size = get_u("embedding_length")?;
        let num_heads = get_u("attention.head_count")?;
        let num_kv_heads = get_u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match get_u("vocab_size") {
            Ok(v) => v,
            Err(_) => meta
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| EngineError::Config("GGUF has no vocab size".into()))?,
        };
        let tok_u32 = |key: &str| meta.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: get_f("rope.freq_base").unwrap_or(10000.0) as f32,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
            max_position_embeddings: get_u("context_length").unwrap_or(4096),
            tie_word_embeddings: !has_output_tensor,
            bos_token_id: tok_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configs the forward pass cannot run (zero sizes, heads that do not
    /// divide, absurd sizes that would overflow allocations).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        let dims = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in dims {
            if v == 0 || v > (1 << 24) {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps {} must be > 0", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} must be > 0", self.rope_theta));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
