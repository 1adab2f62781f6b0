//! The engine: model + KV pool + scheduler + per-sequence samplers/detokenizers.
//! (OWNER: engine core.) API below is fixed; bodies come with the core.

use crate::config::ModelConfig;
use crate::loader::LoadedModel;
use crate::sampling::{SampledToken, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{Result, SeqId};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV pool size in bytes (the number of blocks follows from the model).
    pub kv_cache_bytes: usize,
    pub max_num_seqs: usize,
    /// Token budget of one step (prefill chunks + decodes).
    pub max_batched_tokens: usize,
    pub chunked_prefill: bool,
    pub enable_prefix_cache: bool,
    /// Caps the model's context; `None` = the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_bytes: 256 << 20,
            max_num_seqs: 64,
            max_batched_tokens: 512,
            chunked_prefill: true,
            enable_prefix_cache: true,
            max_model_len: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub id: SeqId,
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// eos, stop token id or stop string.
    Stop,
    /// max_tokens or the context limit.
    Length,
    Abort,
}

/// One new token of one sequence.
#[derive(Clone, Debug)]
pub struct SeqOutput {
    pub id: SeqId,
    pub token: SampledToken,
    /// Text delta safe to show (UTF-8 complete, stop strings withheld).
    pub text: String,
    pub finish: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub num_cached_tokens: usize,
}

pub struct Engine {
    _private: (),
}

impl Engine {
    pub fn new(model: LoadedModel, config: EngineConfig) -> Result<Engine> {
        let _ = (model, config);
        todo!("engine core")
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        todo!("engine core")
    }
    pub fn model_config(&self) -> &ModelConfig {
        todo!("engine core")
    }
    pub fn add_request(&mut self, request: EngineRequest) -> Result<()> {
        let _ = request;
        todo!("engine core")
    }
    /// Runs one scheduler step (one forward pass over the batch).
    pub fn step(&mut self) -> Result<Vec<SeqOutput>> {
        todo!("engine core")
    }
    /// Stops a sequence at once and frees its KV blocks. False if unknown.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let _ = id;
        todo!("engine core")
    }
    pub fn has_work(&self) -> bool {
        todo!("engine core")
    }
}
