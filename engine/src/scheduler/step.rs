//! One scheduling step: which sequences compute which tokens in the next forward pass.
//!
//! Order within a step:
//! 1. ready sequences (imported/unparked, already holding KV) join running while
//!    fewer than `max_num_seqs` run;
//! 2. running sequences, decodes (one token left) first, then unfinished prefills,
//!    each in admission order, within the token budget. A sequence whose table must
//!    grow while no block is available preempts the most recently admitted running
//!    sequence not scheduled yet this step — possibly itself — until it fits;
//! 3. if nothing was preempted, waiting sequences are admitted FCFS (prefix-cache hit
//!    reused) while a slot, budget and blocks remain; admission never preempts, and
//!    the first waiting sequence that does not fit stops admission (no overtaking;
//!    only sequences past `max_seq_len`, reported as capped, are skipped).
//!
//! Invariants of the output: at most one chunk per sequence, the chunks' tokens sum
//! to at most `max_batched_tokens`, at most `max_num_seqs` chunks, and every chunk's
//! block table already covers `start + len` tokens.

use std::collections::HashSet;

use super::{ScheduledChunk, Scheduler, SchedulerOutput, SeqState};
use crate::SeqId;

impl Scheduler {
    /// Plans the next forward pass. See the module header for the policy.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_batched_tokens;
        self.admit_ready();
        self.schedule_running(&mut out, &mut budget);
        if out.preempted.is_empty() {
            self.admit_waiting(&mut out, &mut budget);
        }
        out
    }

    /// Tokens to compute for a sequence with `remaining` uncomputed tokens given the
    /// step's `budget` left; `None` when it must wait for another step.
    fn chunk_len(&self, remaining: usize, budget: usize, batch_empty: bool) -> Option<usize> {
        if remaining == 0 || budget == 0 {
            return None;
        }
        if self.cfg.chunked_prefill || remaining <= budget {
            return Some(remaining.min(budget));
        }
        // Whole-prefill mode: a prefill larger than any step runs alone, in chunks.
        (batch_empty && remaining > self.cfg.max_batched_tokens).then_some(budget)
    }

    fn admit_ready(&mut self) {
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(s) = self.seqs.get_mut(&id) {
                s.state = SeqState::Running;
                self.running.push(id);
            }
        }
    }

    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let is_decode = |sched: &Scheduler, id: &SeqId| {
            sched
                .seqs
                .get(id)
                .is_some_and(|s| s.tokens.len() - s.num_computed == 1)
        };
        let mut order: Vec<SeqId> = self
            .running
            .iter()
            .filter(|id| is_decode(self, id))
            .copied()
            .collect();
        order.extend(self.running.iter().filter(|id| !is_decode(self, id)));
        let mut scheduled: HashSet<SeqId> = HashSet::new();
        for id in order {
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            if s.state != SeqState::Running {
                continue; // preempted earlier in this step
            }
            if s.tokens.len() > self.max_len {
                out.capped.push(id);
                continue;
            }
            let start = s.num_computed;
            let remaining = s.tokens.len() - start;
            let Some(len) = self.chunk_len(remaining, *budget, out.chunks.is_empty()) else {
                continue;
            };
            let total = s.tokens.len();
            loop {
                if self.blocks.grow(id, start + len).is_ok() {
                    scheduled.insert(id);
                    *budget -= len;
                    out.chunks.push(ScheduledChunk {
                        seq: id,
                        start,
                        len,
                        sample: start + len == total,
                    });
                    break;
                }
                // Never empty: `id` itself is running and not scheduled.
                let Some(victim) = self
                    .running
                    .iter()
                    .rev()
                    .copied()
                    .find(|v| !scheduled.contains(v))
                else {
                    break;
                };
                self.preempt(victim);
                out.preempted.push(victim);
                if victim == id {
                    break;
                }
            }
        }
    }

    /// Frees `id`'s blocks and puts it at the front of waiting for recompute.
    fn preempt(&mut self, id: SeqId) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        s.state = SeqState::Waiting;
        s.num_computed = 0;
        self.running.retain(|&x| x != id);
        self.blocks.free(id);
        self.waiting.push_front(id);
        self.num_preemptions += 1;
        tracing::debug!(seq = %id, "preempted for recompute");
    }

    fn admit_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.running.len() >= self.cfg.max_num_seqs || *budget == 0 {
                break;
            }
            let id = self.waiting[i];
            let Some(s) = self.seqs.get(&id) else {
                self.waiting.remove(i);
                continue;
            };
            let total = s.tokens.len();
            if total > self.max_len {
                out.capped.push(id);
                i += 1;
                continue;
            }
            let hit = self.blocks.prefix_hit(&s.hashes, total);
            let hit_tokens = hit.len() * self.cfg.block_size;
            let Some(len) = self.chunk_len(total - hit_tokens, *budget, out.chunks.is_empty())
            else {
                break;
            };
            let cached = match self.blocks.allocate(id, &s.hashes, total, hit_tokens + len) {
                Ok(c) => c,
                Err(_) => break,
            };
            debug_assert_eq!(cached, hit_tokens);
            self.waiting.remove(i);
            self.running.push(id);
            *budget -= len;
            if let Some(s) = self.seqs.get_mut(&id) {
                s.state = SeqState::Running;
                s.num_computed = cached;
                if !s.admitted {
                    s.admitted = true;
                    s.num_cached_tokens = cached;
                    self.prompt_tokens += s.prompt_len as u64;
                    self.cached_prompt_tokens += cached as u64;
                }
            }
            out.chunks.push(ScheduledChunk {
                seq: id,
                start: cached,
                len,
                sample: cached + len == total,
            });
        }
    }
}
