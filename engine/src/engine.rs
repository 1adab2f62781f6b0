//! The engine: one model runner (backend + weights + KV pool), the scheduler, and
//! per-sequence sampling / detokenization / stop state. Driven synchronously by its
//! owner: `add_request`, then `step()` until `has_work()` is false; `abort` at any
//! time. No threads of its own beyond the backend's.
//!
//! Disaggregation (see DESIGN.md "Prefill handoff"):
//! - prefill side: `add_prefill_only` runs the prompt, samples the first token, and
//!   keeps the sequence's KV blocks (parked) until `release`; `kv_blocks` lists them.
//! - decode side: `reserve_import` allocates destination blocks, a transport fills
//!   them (`write_kv_block`), `commit_import` joins the sequence to the batch with the
//!   first token computed remotely.
//!
//! Invariant: every sequence that leaves (finished, aborted, released) has its
//! blocks returned to the scheduler in the same call.

use std::collections::HashMap;

use crate::backend::cpu::CpuBackend;
use crate::backend::{AttnSeq, Backend, ForwardBatch, MemKind};
use crate::config::ModelConfig;
use crate::device::Device;
use crate::kv::pool::{KvDtype, KvLayout};
use crate::kv::prefix_cache::{hash_blocks, BlockHash};
use crate::loader::LoadedModel;
use crate::model::{Forwarded, Model, ModelRunner};
use crate::sampling::device::{DevicePick, Picked};
use crate::sampling::stop::StopChecker;
use crate::sampling::{SampledToken, SamplingParams, SequenceSampler};
use crate::scheduler::{ScheduledChunk, Scheduler, SchedulerConfig, SchedulerStats};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};
use crate::{BlockId, EngineError, Result, SeqId};

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
    /// Where the model runs.
    pub device: Device,
    /// CUDA: the fraction of the device's memory this engine may use (weights,
    /// activations, KV pool); the KV pool is sized from it when `kv_cache_bytes`
    /// is 0.
    pub gpu_memory_utilization: f32,
    /// The KV cache's element type; `None`: the device's default (f16 on the
    /// CPU, bf16 on CUDA). The CPU also stores f32 (exact, twice the bytes).
    pub kv_dtype: Option<KvDtype>,
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
            device: Device::Cpu,
            gpu_memory_utilization: 0.9,
            kv_dtype: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub id: SeqId,
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Destination blocks allocated for a sequence whose KV is written from outside.
#[derive(Clone, Debug)]
pub struct ImportReservation {
    pub blocks: Vec<BlockId>,
    /// Leading prompt tokens already present (prefix cache): their blocks need no
    /// transfer.
    pub cached_tokens: usize,
}

/// Load and capacity figures for routers and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
}

struct SeqState {
    sampler: SequenceSampler,
    decoder: IncrementalDecoder,
    stop: StopChecker,
    params: SamplingParams,
    prompt_len: usize,
    generated: usize,
    /// Prefill-only: park after the first token instead of finishing.
    prefill_only: bool,
}

pub struct Engine {
    runner: Box<dyn ModelRunner>,
    tokenizer: Tokenizer,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, SeqState>,
    eos_ids: Vec<u32>,
    max_model_len: usize,
    model_name: String,
}

impl Engine {
    /// Builds an engine on `config.device`.
    pub fn new(model: LoadedModel, config: EngineConfig) -> Result<Engine> {
        let runner = Self::model_runner(&model, &config)?;
        let LoadedModel {
            name,
            tokenizer,
            weights,
            ..
        } = model;
        // The runner holds its own copy of every weight it needs now.
        drop(weights);
        crate::backend::cpu::return_freed_memory();
        Self::with_runner(runner, tokenizer, name, config)
    }

    /// The model on `config.device` with a KV pool sized by `config`: what
    /// [`Engine::new`] runs (and what a wrapping runner in a test can wrap).
    pub fn model_runner(
        model: &LoadedModel,
        config: &EngineConfig,
    ) -> Result<Box<dyn ModelRunner>> {
        match config.device {
            Device::Cpu => Self::cpu_runner(model, config),
            Device::Cuda(n) => cuda_runner(model, config, n),
        }
    }

    fn cpu_runner(model: &LoadedModel, config: &EngineConfig) -> Result<Box<dyn ModelRunner>> {
        let backend = CpuBackend::new(config.kv_dtype.unwrap_or(KvDtype::F16))?;
        let per_block = Model::<CpuBackend>::layout_for(
            &model.config,
            config.block_size,
            1,
            backend.kv_dtype(),
        )
        .block_bytes();
        let num_blocks = KvLayout::blocks_for_bytes(config.kv_cache_bytes, per_block);
        let runner = Model::new(
            backend,
            model.config.clone(),
            &model.weights,
            config.block_size,
            num_blocks,
        )?;
        Ok(Box::new(runner))
    }

    /// Builds an engine over any model runner (other backends, tests).
    pub fn with_runner(
        runner: Box<dyn ModelRunner>,
        tokenizer: Tokenizer,
        model_name: String,
        config: EngineConfig,
    ) -> Result<Engine> {
        let layout = runner.kv_layout();
        if layout.num_blocks == 0 {
            return Err(EngineError::KvCacheTooSmall {
                needed_blocks: 1,
                total_blocks: 0,
            });
        }
        let mc = runner.config();
        let max_model_len = config
            .max_model_len
            .unwrap_or(mc.max_position_embeddings)
            .min(mc.max_position_embeddings)
            .max(1);
        let mut eos_ids = mc.eos_token_ids.clone();
        for id in tokenizer.eos_token_ids() {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let scheduler = Scheduler::new(SchedulerConfig {
            block_size: config.block_size,
            num_blocks: layout.num_blocks,
            max_num_seqs: config.max_num_seqs.max(1),
            max_batched_tokens: config.max_batched_tokens.max(1),
            chunked_prefill: config.chunked_prefill,
            enable_prefix_cache: config.enable_prefix_cache,
            max_model_len,
        });
        Ok(Engine {
            runner,
            tokenizer,
            scheduler,
            seqs: HashMap::new(),
            eos_ids,
            max_model_len,
            model_name,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn model_config(&self) -> &ModelConfig {
        self.runner.config()
    }
    pub fn model_name(&self) -> &str {
        &self.model_name
    }
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }
    pub fn kv_layout(&self) -> KvLayout {
        self.runner.kv_layout()
    }
    pub fn backend_name(&self) -> String {
        self.runner.backend_name()
    }
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    fn new_state(&self, req: &EngineRequest, prefill_only: bool) -> Result<SeqState> {
        req.params.validate()?;
        if req.prompt_tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if req.prompt_tokens.len() >= self.max_model_len {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: req.prompt_tokens.len(),
                max_context: self.max_model_len,
            });
        }
        let vocab = self.runner.config().vocab_size;
        if let Some(t) = req.prompt_tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        if self.seqs.contains_key(&req.id) {
            return Err(EngineError::DuplicateSequence(req.id));
        }
        Ok(SeqState {
            sampler: SequenceSampler::new(&req.params, &req.prompt_tokens, &self.eos_ids),
            decoder: IncrementalDecoder::with_prefix(true, &req.prompt_tokens),
            stop: StopChecker::new(&req.params.stop),
            params: req.params.clone(),
            prompt_len: req.prompt_tokens.len(),
            generated: 0,
            prefill_only,
        })
    }

    /// Queues a request. Errors: invalid params, empty or too long prompt, token ids
    /// outside the vocabulary, duplicate id, a prompt that can never fit the KV pool.
    pub fn add_request(&mut self, request: EngineRequest) -> Result<()> {
        let state = self.new_state(&request, false)?;
        self.scheduler
            .add_sequence(request.id, request.prompt_tokens)?;
        self.seqs.insert(request.id, state);
        Ok(())
    }

    /// Prefill side of disaggregation: computes the prompt and its first token, then
    /// keeps the KV blocks until `release`.
    pub fn add_prefill_only(&mut self, request: EngineRequest) -> Result<()> {
        let state = self.new_state(&request, true)?;
        self.scheduler
            .add_sequence(request.id, request.prompt_tokens)?;
        self.seqs.insert(request.id, state);
        Ok(())
    }

    /// KV blocks of a sequence, in position order.
    pub fn kv_blocks(&self, id: SeqId) -> Option<Vec<BlockId>> {
        self.scheduler.block_table(id).map(|b| b.to_vec())
    }

    /// Frees a parked (prefill-only) sequence's blocks after export.
    pub fn release(&mut self, id: SeqId) -> bool {
        self.seqs.remove(&id);
        self.scheduler.finish(id)
    }

    /// Decode side of disaggregation: allocates destination blocks for `prompt`.
    pub fn reserve_import(&mut self, request: EngineRequest) -> Result<ImportReservation> {
        let state = self.new_state(&request, false)?;
        let (blocks, cached_tokens) = self
            .scheduler
            .reserve_import(request.id, request.prompt_tokens)?;
        self.seqs.insert(request.id, state);
        Ok(ImportReservation {
            blocks,
            cached_tokens,
        })
    }

    /// The KV of a reserved import is in place: the sequence joins the batch with
    /// `first` (sampled by the prefill side) as its first generated token. Returns
    /// that token's output (text, and finish if it already ends the sequence).
    pub fn commit_import(&mut self, id: SeqId, first: SampledToken) -> Result<SeqOutput> {
        if !self.seqs.contains_key(&id) {
            return Err(EngineError::UnknownSequence(id));
        }
        if first.token as usize >= self.runner.config().vocab_size {
            self.abort(id);
            return Err(EngineError::KvTransfer(format!(
                "first token {} outside the vocabulary",
                first.token
            )));
        }
        self.scheduler.commit_import(id, first.token)?;
        let st = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id))?;
        st.sampler.record_token(first.token);
        let out = self.emit(id, first);
        if out.finish.is_some() {
            self.end(id);
        }
        Ok(out)
    }

    pub fn write_kv_block(&mut self, block: BlockId, data: &[u8]) -> Result<()> {
        self.runner.write_kv_block(block, data)
    }
    pub fn read_kv_block(&self, block: BlockId, out: &mut [u8]) -> Result<()> {
        self.runner.read_kv_block(block, out)
    }
    pub fn kv_block_region(&self, block: BlockId) -> Option<(usize, usize, MemKind)> {
        self.runner.kv_block_region(block)
    }

    /// The whole KV pool as one region, `(addr, len, kind)`, when its blocks lie
    /// back to back in block order (what a transport registers once); `None`
    /// otherwise. The pool is allocated once, so the region lives as the engine.
    pub fn kv_pool_region(&self) -> Option<(usize, usize, MemKind)> {
        let layout = self.kv_layout();
        let n = layout.num_blocks;
        let bb = layout.block_bytes();
        let (base, len, kind) = self.kv_block_region(BlockId(0))?;
        let last = BlockId(u32::try_from(n.checked_sub(1)?).ok()?);
        let (last_addr, _, last_kind) = self.kv_block_region(last)?;
        let contiguous = len == bb && last_kind == kind && last_addr == base + (n - 1) * bb;
        contiguous.then_some((base, n * bb, kind))
    }

    /// Leading tokens of `tokens` whose KV is in the prefix cache.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        self.scheduler.cached_prefix_len(tokens)
    }

    /// Runs one scheduler step (one forward pass over the batch).
    pub fn step(&mut self) -> Result<Vec<SeqOutput>> {
        let plan = self.scheduler.schedule();
        for id in &plan.capped {
            // `emit` finishes sequences at `max_seq_len`; reaching here means a
            // sequence outgrew the pool some other way. Free it rather than spin.
            tracing::warn!(seq = %id, "sequence exceeds the KV pool's capacity; aborting");
            self.abort(*id);
        }
        if plan.chunks.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = ForwardBatch::default();
        for ch in &plan.chunks {
            let tokens = self
                .scheduler
                .tokens(ch.seq)
                .ok_or(EngineError::UnknownSequence(ch.seq))?;
            let table = self
                .scheduler
                .block_table(ch.seq)
                .ok_or(EngineError::UnknownSequence(ch.seq))?;
            let row_start = batch.tokens.len();
            batch
                .tokens
                .extend_from_slice(&tokens[ch.start..ch.start + ch.len]);
            batch
                .positions
                .extend((ch.start..ch.start + ch.len).map(|p| p as u32));
            if ch.sample {
                batch.logits_rows.push(row_start + ch.len - 1);
            }
            batch.seqs.push(AttnSeq {
                row_start,
                len: ch.len,
                pos_start: ch.start,
                block_table: table.to_vec(),
            });
        }
        // One pick per logits row, in chunk order: what the device may choose.
        let picks: Vec<Option<DevicePick>> = plan
            .chunks
            .iter()
            .filter(|ch| ch.sample)
            .map(|ch| {
                self.seqs
                    .get(&ch.seq)
                    .and_then(|st| st.sampler.device_pick())
            })
            .collect();
        let mut fwd = self.runner.forward_picking(&batch, &picks)?;
        let vocab = self.runner.config().vocab_size;
        let mut sampled = self.sample_rows(&plan.chunks, &mut fwd, vocab);
        self.runner.recycle_logits(std::mem::take(&mut fwd.logits));
        let mut outputs = Vec::new();
        for ch in &plan.chunks {
            let Some(tok) = sampled.remove(&ch.seq) else {
                self.scheduler.complete_chunk(ch.seq, ch.len, None);
                continue;
            };
            self.scheduler
                .complete_chunk(ch.seq, ch.len, Some(tok.token));
            let out = self.emit(ch.seq, tok);
            if out.finish.is_some() {
                self.end(ch.seq);
            }
            outputs.push(out);
        }
        Ok(outputs)
    }

    /// The next token of every chunk that wants one: the device's pick where it
    /// made one, else sampled from the row's host logits (host rows in chunk
    /// order). Sequences are sampled in parallel: each sampler owns its random
    /// state, so the result does not depend on the order.
    fn sample_rows(
        &mut self,
        chunks: &[ScheduledChunk],
        fwd: &mut Forwarded,
        vocab: usize,
    ) -> HashMap<SeqId, SampledToken> {
        let wanting = chunks.iter().filter(|ch| ch.sample).map(|ch| ch.seq);
        let mut picked: HashMap<SeqId, Picked> = HashMap::new();
        let mut host: Vec<SeqId> = Vec::new();
        for (seq, p) in wanting.zip(fwd.picked.iter().copied().chain(std::iter::repeat(None))) {
            match p {
                Some(p) => {
                    picked.insert(seq, p);
                }
                None => host.push(seq),
            }
        }
        let mut rows: HashMap<SeqId, &mut [f32]> = host
            .into_iter()
            .zip(fwd.logits.chunks_exact_mut(vocab))
            .collect();
        // Per sequence: the device's pick (Ok) or its host logits row (Err).
        type Job<'a> = (
            SeqId,
            &'a mut SequenceSampler,
            Result<Picked, &'a mut [f32]>,
        );
        let jobs: Vec<Job<'_>> = self
            .seqs
            .iter_mut()
            .filter_map(|(id, st)| {
                let job = match picked.remove(id) {
                    Some(p) => Ok(p),
                    None => Err(rows.remove(id)?),
                };
                Some((*id, &mut st.sampler, job))
            })
            .collect();
        use rayon::prelude::*;
        jobs.into_par_iter()
            .with_max_len(1)
            .map(|(id, sampler, job)| match job {
                Ok(p) => (id, sampler.accept_picked(p)),
                Err(lg) => (id, sampler.sample(lg)),
            })
            .collect()
    }

    /// Accounts one generated token: detokenize, stop checks, finish reason.
    fn emit(&mut self, id: SeqId, tok: SampledToken) -> SeqOutput {
        let num_cached_tokens = self.scheduler.num_cached_tokens(id);
        let total_len = self.scheduler.tokens(id).map_or(0, |t| t.len());
        let st = self
            .seqs
            .get_mut(&id)
            .expect("emit is called for live sequences");
        st.generated += 1;
        let mut finish = None;
        let mut text = String::new();
        let mut stopped_by_string = false;
        if st.sampler.is_stop_token(tok.token) {
            finish = Some(FinishReason::Stop);
        } else {
            let delta = st
                .decoder
                .push(&self.tokenizer, tok.token)
                .unwrap_or_default();
            let step = st.stop.push(&delta);
            text = step.emit;
            if step.stopped {
                finish = Some(FinishReason::Stop);
                stopped_by_string = true;
            }
        }
        let out_of_room =
            st.generated >= st.params.max_tokens || total_len >= self.scheduler.max_seq_len();
        if finish.is_none() && (out_of_room || st.prefill_only) {
            finish = Some(FinishReason::Length);
        }
        if finish.is_some() && !stopped_by_string {
            // Ending without a stop-string match: release held-back text.
            let tail = st.decoder.flush(&self.tokenizer);
            let step = st.stop.push(&tail);
            text.push_str(&step.emit);
            if step.stopped {
                finish = Some(FinishReason::Stop);
            } else {
                text.push_str(&st.stop.flush());
            }
        }
        SeqOutput {
            id,
            token: tok,
            text,
            finish,
            num_prompt_tokens: st.prompt_len,
            num_cached_tokens,
        }
    }

    /// A sequence produced its last token: free it, or park it for KV export.
    fn end(&mut self, id: SeqId) {
        let prefill_only = self.seqs.get(&id).is_some_and(|s| s.prefill_only);
        if prefill_only {
            self.scheduler.park(id);
        } else {
            self.seqs.remove(&id);
            self.scheduler.finish(id);
        }
    }

    /// Stops a sequence at once and frees its KV blocks. False if unknown.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let known = self.seqs.remove(&id).is_some();
        self.scheduler.abort(id) || known
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// Keys of every full block whose KV this engine holds (running or cached):
    /// what a kv-aware router compares a prompt's block hashes against.
    pub fn cached_block_hashes(&self) -> Vec<BlockHash> {
        self.scheduler.cached_block_hashes()
    }

    /// Block-hash keys of `tokens`' full blocks, as this engine would compute them.
    pub fn block_hashes(&self, tokens: &[u32]) -> Vec<BlockHash> {
        hash_blocks(tokens, self.kv_layout().block_size)
    }

    pub fn stats(&self) -> EngineStats {
        let s: SchedulerStats = self.scheduler.stats();
        EngineStats {
            running: s.running,
            waiting: s.waiting,
            free_blocks: s.free_blocks + s.cached_blocks,
            total_blocks: s.total_blocks,
        }
    }
}

/// The model on a CUDA device (feature `cuda`).
#[cfg(feature = "cuda")]
fn cuda_runner(
    model: &LoadedModel,
    config: &EngineConfig,
    ordinal: usize,
) -> Result<Box<dyn ModelRunner>> {
    crate::backend::cuda::cuda_model_runner(model, config, ordinal)
}

#[cfg(not(feature = "cuda"))]
fn cuda_runner(_: &LoadedModel, _: &EngineConfig, _: usize) -> Result<Box<dyn ModelRunner>> {
    Err(EngineError::Device(
        "this pdserve was built without CUDA (rebuild with `--features cuda`)".into(),
    ))
}

#[cfg(test)]
mod tests {
    /// The serving layer moves the engine onto its own thread.
    #[test]
    fn engine_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Engine>();
    }
}
