//! Continuous-batching scheduler with chunked prefill, prefix caching and preemption
//! by recompute. (OWNER: helper C.) Pure bookkeeping: it decides which token ranges
//! of which sequences the next forward pass computes and which KV blocks hold them;
//! the engine core runs the model and reports back with [`Scheduler::complete_chunk`].
//!
//! Sequence states ([`SeqState`]):
//! - `Waiting`: no blocks; queued FCFS for admission (new, or preempted — a preempted
//!   sequence is recomputed from scratch, minus any prefix-cache hit);
//! - `Running`: holds blocks, scheduled every step while it fits;
//! - `Ready`: holds blocks and computed KV but waits for a running slot
//!   (`max_num_seqs`): an imported sequence, or an unparked one;
//! - `Parked`: holds blocks, never scheduled (prefill-only sequence whose KV is being
//!   exported); only `finish`/`abort`/`unpark` move it on;
//! - `ImportReserved`: holds blocks another party is filling (decode side of a P/D
//!   transfer) until [`Scheduler::commit_import`].
//!
//! Invariants (checked by [`Scheduler::check_invariants`]): a sequence is in exactly
//! one queue matching its state; it has a block table iff its state is not `Waiting`;
//! a running table covers at least its computed tokens; `running.len() <=
//! max_num_seqs`; `num_computed < tokens.len()` for every sequence that can still be
//! scheduled; every block-manager invariant holds. Once every sequence has been
//! finished or aborted, every block is free or cached (used == 0).
//!
//! A sequence whose token count exceeds [`Scheduler::max_seq_len`] (the model context
//! or the whole KV cache) cannot be scheduled any more; it is listed in
//! [`SchedulerOutput::capped`] every step until the engine finishes it.

mod step;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use crate::kv::block_manager::{AllocError, BlockManager};
use crate::kv::prefix_cache::{extend_block_hashes, BlockHash};
use crate::{BlockId, EngineError, Result, SeqId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (decodes + prefill chunks).
    pub max_batched_tokens: usize,
    /// Split prefills into chunks that fill the step's remaining budget. When off, a
    /// prefill is scheduled whole or not at one step — except one longer than
    /// `max_batched_tokens`, which is cut into full-budget chunks, each alone in its
    /// step (it could never run otherwise).
    pub chunked_prefill: bool,
    pub enable_prefix_cache: bool,
    /// Longest sequence (prompt + generated) the model accepts.
    pub max_model_len: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            block_size: 16,
            num_blocks: 1024,
            max_num_seqs: 64,
            max_batched_tokens: 512,
            chunked_prefill: true,
            enable_prefix_cache: true,
            max_model_len: 4096,
        }
    }
}

impl SchedulerConfig {
    /// Rejects zero sizes and pools larger than block ids can address.
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_num_seqs", self.max_num_seqs),
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_model_len", self.max_model_len),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(EngineError::Config(format!("scheduler {name} must be > 0")));
        }
        if self.num_blocks > u32::MAX as usize {
            return Err(EngineError::Config(format!(
                "{} KV blocks exceed the block id range",
                self.num_blocks
            )));
        }
        Ok(())
    }
}

/// One sequence's share of a step: compute positions `start .. start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub seq: SeqId,
    /// First position computed this step (== the sequence's computed tokens so far).
    pub start: usize,
    /// Tokens computed this step (>= 1).
    pub len: usize,
    /// The chunk ends at the last known token: sample the next token from its logits.
    pub sample: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// At most one chunk per sequence; decodes first, then prefill chunks.
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences preempted this step: their KV is gone, they wait for recompute.
    pub preempted: Vec<SeqId>,
    /// Sequences longer than [`Scheduler::max_seq_len`]: never scheduled again, the
    /// engine should finish them (length limit).
    pub capped: Vec<SeqId>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Tokens computed by this step.
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub parked: usize,
    /// Imported sequences waiting for a running slot (plus unparked ones).
    pub ready: usize,
    /// Import reservations not committed yet.
    pub import_reserved: usize,
    /// Blocks holding nothing.
    pub free_blocks: usize,
    /// Unreferenced blocks holding a cached prefix (reusable until evicted).
    pub cached_blocks: usize,
    /// Blocks referenced by sequences.
    pub used_blocks: usize,
    pub total_blocks: usize,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Prompt tokens admitted since start (each sequence counted once).
    pub prompt_tokens: u64,
    /// Of those, tokens taken from the prefix cache at first admission.
    pub cached_prompt_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqState {
    Waiting,
    Running,
    Ready,
    Parked,
    ImportReserved,
}

#[derive(Debug)]
struct Sequence {
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Prefix-cache keys of every full block of `tokens`.
    hashes: Vec<BlockHash>,
    /// Tokens whose KV is computed (or imported).
    num_computed: usize,
    state: SeqState,
    /// Prefix-cache hit at first admission.
    num_cached_tokens: usize,
    /// First admission happened (`num_cached_tokens` is final).
    admitted: bool,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    max_len: usize,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    ready: VecDeque<SeqId>,
    /// Running sequences in admission order (the last is preempted first).
    running: Vec<SeqId>,
    num_preemptions: u64,
    prompt_tokens: u64,
    cached_prompt_tokens: u64,
}

impl Scheduler {
    /// Builds a scheduler; zero sizes are raised to 1 (use [`Scheduler::try_new`] to
    /// reject them instead).
    pub fn new(cfg: SchedulerConfig) -> Self {
        let mut cfg = cfg;
        cfg.block_size = cfg.block_size.max(1);
        cfg.max_num_seqs = cfg.max_num_seqs.max(1);
        cfg.max_batched_tokens = cfg.max_batched_tokens.max(1);
        cfg.max_model_len = cfg.max_model_len.max(1);
        cfg.num_blocks = cfg.num_blocks.min(u32::MAX as usize);
        let blocks = BlockManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_cache);
        let max_len = cfg
            .max_model_len
            .min(cfg.num_blocks.saturating_mul(cfg.block_size));
        Scheduler {
            cfg,
            max_len,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            ready: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
            prompt_tokens: 0,
            cached_prompt_tokens: 0,
        }
    }

    /// Like [`Scheduler::new`] but rejects an invalid configuration.
    pub fn try_new(cfg: SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::new(cfg))
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Longest token list a sequence may reach and still be scheduled:
    /// `min(max_model_len, num_blocks * block_size)`.
    pub fn max_seq_len(&self) -> usize {
        self.max_len
    }

    fn check_new(&self, seq: SeqId, prompt: &[u32]) -> Result<()> {
        if self.seqs.contains_key(&seq) {
            return Err(EngineError::DuplicateSequence(seq));
        }
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest(format!("{seq}: empty prompt")));
        }
        if prompt.len() > self.cfg.max_model_len {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                max_context: self.cfg.max_model_len,
            });
        }
        let needed_blocks = self.blocks.blocks_for(prompt.len());
        if needed_blocks > self.cfg.num_blocks {
            return Err(EngineError::KvCacheTooSmall {
                needed_blocks,
                total_blocks: self.cfg.num_blocks,
            });
        }
        Ok(())
    }

    fn new_sequence(&self, prompt: Vec<u32>, state: SeqState) -> Sequence {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, &prompt, self.cfg.block_size);
        Sequence {
            prompt_len: prompt.len(),
            tokens: prompt,
            hashes,
            num_computed: 0,
            state,
            num_cached_tokens: 0,
            admitted: false,
        }
    }

    /// Queues a new sequence (FCFS). Errors: duplicate id, empty prompt, prompt longer
    /// than `max_model_len`, prompt that could not fit even in an empty KV cache.
    pub fn add_sequence(&mut self, seq: SeqId, prompt: Vec<u32>) -> Result<()> {
        self.check_new(seq, &prompt)?;
        let s = self.new_sequence(prompt, SeqState::Waiting);
        self.seqs.insert(seq, s);
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Records the result of a scheduled chunk: `len` more tokens are computed, the
    /// `sampled` token (if the chunk sampled) is appended, and newly full computed
    /// blocks are committed to the prefix cache. Ignored for a sequence that is not
    /// running or parked (e.g. aborted meanwhile). A sampled token is only appended
    /// when the chunk reached the last token.
    pub fn complete_chunk(&mut self, seq: SeqId, len: usize, sampled: Option<u32>) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        if !matches!(s.state, SeqState::Running | SeqState::Parked) {
            tracing::debug!(%seq, state = ?s.state, "complete_chunk ignored");
            return;
        }
        s.num_computed = (s.num_computed + len).min(s.tokens.len());
        if let Some(tok) = sampled {
            if s.num_computed == s.tokens.len() {
                s.tokens.push(tok);
                extend_block_hashes(&mut s.hashes, &s.tokens, bs);
            } else {
                tracing::warn!(%seq, "sampled token for a chunk that did not reach the end; dropped");
            }
        }
        let full = (s.num_computed / bs).min(s.hashes.len());
        self.blocks.commit(seq, &s.hashes[..full]);
    }

    pub fn tokens(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.tokens.as_slice())
    }

    /// Prompt length (tokens before the first generated one).
    pub fn prompt_len(&self, seq: SeqId) -> Option<usize> {
        self.seqs.get(&seq).map(|s| s.prompt_len)
    }

    /// Tokens whose KV is computed.
    pub fn num_computed(&self, seq: SeqId) -> Option<usize> {
        self.seqs.get(&seq).map(|s| s.num_computed)
    }

    pub fn state(&self, seq: SeqId) -> Option<SeqState> {
        self.seqs.get(&seq).map(|s| s.state)
    }

    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.blocks.block_table(seq)
    }

    /// Prompt tokens taken from the prefix cache at first admission (0 if unknown or
    /// not admitted yet).
    pub fn num_cached_tokens(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.num_cached_tokens)
    }

    /// Keys of `seq`'s full computed blocks, in order (empty if it holds no blocks).
    pub fn committed_block_hashes(&self, seq: SeqId) -> &[BlockHash] {
        self.blocks.committed_block_hashes(seq).unwrap_or(&[])
    }

    /// Every key in the prefix cache, sorted.
    pub fn cached_block_hashes(&self) -> Vec<BlockHash> {
        self.blocks.cached_block_hashes()
    }

    /// Read-only lookup: tokens of `tokens` a new sequence would take from the prefix
    /// cache now.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        self.blocks.cached_prefix_len(tokens)
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// Removes `seq` from its queue and frees its blocks. False if unknown.
    fn remove(&mut self, seq: SeqId) -> bool {
        let Some(s) = self.seqs.remove(&seq) else {
            return false;
        };
        match s.state {
            SeqState::Waiting => self.waiting.retain(|&x| x != seq),
            SeqState::Ready => self.ready.retain(|&x| x != seq),
            SeqState::Running => self.running.retain(|&x| x != seq),
            SeqState::Parked | SeqState::ImportReserved => {}
        }
        self.blocks.free(seq);
        true
    }

    /// The sequence is done: frees its blocks (computed full blocks stay in the
    /// prefix cache). False if unknown.
    pub fn finish(&mut self, seq: SeqId) -> bool {
        self.remove(seq)
    }

    /// Drops a sequence at once from any state, freeing its blocks. False if unknown.
    pub fn abort(&mut self, seq: SeqId) -> bool {
        self.remove(seq)
    }

    /// Stops scheduling a running (or ready) sequence but keeps its blocks, e.g. while
    /// its KV is exported. True if it is parked now.
    pub fn park(&mut self, seq: SeqId) -> bool {
        let Some(s) = self.seqs.get_mut(&seq) else {
            return false;
        };
        match s.state {
            SeqState::Running => self.running.retain(|&x| x != seq),
            SeqState::Ready => self.ready.retain(|&x| x != seq),
            SeqState::Parked => return true,
            SeqState::Waiting | SeqState::ImportReserved => return false,
        }
        s.state = SeqState::Parked;
        true
    }

    /// Resumes a parked sequence (e.g. its KV export failed and it decodes locally):
    /// it rejoins running when a slot is free. False if it is not parked.
    pub fn unpark(&mut self, seq: SeqId) -> bool {
        match self.seqs.get_mut(&seq) {
            Some(s) if s.state == SeqState::Parked => {
                s.state = SeqState::Ready;
                self.ready.push_back(seq);
                true
            }
            _ => false,
        }
    }

    /// Decode side of a P/D transfer: allocates blocks for the whole `prompt`
    /// (prefix-cache hits reused) for a sequence that is not scheduled until
    /// [`Scheduler::commit_import`]. Returns the block table and the number of leading
    /// tokens already present from the prefix cache (their blocks must not be
    /// written). Fails with `KvTransfer` when not enough blocks are free right now.
    pub fn reserve_import(
        &mut self,
        seq: SeqId,
        prompt: Vec<u32>,
    ) -> Result<(Vec<BlockId>, usize)> {
        self.check_new(seq, &prompt)?;
        let mut s = self.new_sequence(prompt, SeqState::ImportReserved);
        let len = s.tokens.len();
        let cached = match self.blocks.allocate(seq, &s.hashes, len, len) {
            Ok(c) => c,
            Err(AllocError::OutOfBlocks { needed, available }) => {
                return Err(EngineError::KvTransfer(format!(
                    "{seq}: {needed} KV blocks needed for a {len}-token prompt, {available} available; retry later"
                )))
            }
            Err(e) => return Err(EngineError::KvTransfer(format!("{seq}: {e:?}"))),
        };
        s.num_cached_tokens = cached;
        s.admitted = true;
        self.prompt_tokens += len as u64;
        self.cached_prompt_tokens += cached as u64;
        self.seqs.insert(seq, s);
        let table = self.blocks.block_table(seq).unwrap_or(&[]).to_vec();
        Ok((table, cached))
    }

    /// The KV of the whole reserved prompt is present: the sequence continues with
    /// tokens `prompt + [first_token]` (the first token was sampled by the prefill
    /// side) and joins running, or the ready queue if `max_num_seqs` are running.
    pub fn commit_import(&mut self, seq: SeqId, first_token: u32) -> Result<()> {
        let bs = self.cfg.block_size;
        let room = self.running.len() < self.cfg.max_num_seqs && self.ready.is_empty();
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        if s.state != SeqState::ImportReserved {
            return Err(EngineError::InvalidRequest(format!(
                "{seq} has no import reservation (state {:?})",
                s.state
            )));
        }
        s.num_computed = s.prompt_len;
        s.tokens.push(first_token);
        extend_block_hashes(&mut s.hashes, &s.tokens, bs);
        let full = (s.num_computed / bs).min(s.hashes.len());
        self.blocks.commit(seq, &s.hashes[..full]);
        if room {
            s.state = SeqState::Running;
            self.running.push(seq);
        } else {
            s.state = SeqState::Ready;
            self.ready.push_back(seq);
        }
        Ok(())
    }

    /// Whether a step could compute anything (running, ready or waiting sequences).
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.ready.is_empty() || !self.waiting.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        let count = |st: SeqState| self.seqs.values().filter(|s| s.state == st).count();
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            parked: count(SeqState::Parked),
            ready: self.ready.len(),
            import_reserved: count(SeqState::ImportReserved),
            free_blocks: self.blocks.num_free(),
            cached_blocks: self.blocks.num_cached(),
            used_blocks: self.blocks.num_used(),
            total_blocks: self.blocks.num_total(),
            num_preemptions: self.num_preemptions,
            prompt_tokens: self.prompt_tokens,
            cached_prompt_tokens: self.cached_prompt_tokens,
        }
    }

    /// Checks every invariant in the module header; `Err` describes the first
    /// violation. For tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.blocks.check_invariants()?;
        if self.running.len() > self.cfg.max_num_seqs {
            return Err(format!("{} running > max_num_seqs", self.running.len()));
        }
        let queues = [
            (
                SeqState::Waiting,
                self.waiting.iter().copied().collect::<Vec<_>>(),
            ),
            (SeqState::Ready, self.ready.iter().copied().collect()),
            (SeqState::Running, self.running.clone()),
        ];
        let mut queued = 0;
        for (st, q) in &queues {
            for id in q {
                match self.seqs.get(id) {
                    Some(s) if s.state == *st => queued += 1,
                    _ => return Err(format!("{id} queued as {st:?} but is not")),
                }
            }
        }
        let unqueued = self
            .seqs
            .values()
            .filter(|s| matches!(s.state, SeqState::Parked | SeqState::ImportReserved))
            .count();
        if queued + unqueued != self.seqs.len() {
            return Err("a sequence is queued twice or not at all".into());
        }
        if self.blocks.num_seqs() != self.seqs.len() - self.waiting.len() {
            return Err("block tables do not match the non-waiting sequences".into());
        }
        let bs = self.cfg.block_size;
        for (id, s) in &self.seqs {
            let table = self.blocks.block_table(*id);
            if (s.state == SeqState::Waiting) != table.is_none() {
                return Err(format!("{id} ({:?}) table presence is wrong", s.state));
            }
            if let Some(t) = table {
                let covered = t.len() * bs;
                if s.state != SeqState::ImportReserved && covered < s.num_computed {
                    return Err(format!(
                        "{id}: {covered} slots < {} computed",
                        s.num_computed
                    ));
                }
            }
            if s.num_computed > s.tokens.len() {
                return Err(format!("{id}: computed past its tokens"));
            }
        }
        Ok(())
    }
}
