//! Property tests: random operation sequences against the scheduler, driven by a
//! fake engine that "computes" KV by writing token ids into a simulated pool, so
//! prefix-cache reuse, imports and preemption are checked against real contents.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

/// Fake engine: the scheduler plus the simulated KV pool and per-sequence limits.
struct Harness {
    s: Scheduler,
    bs: usize,
    /// Token id held by each written slot of each block.
    kv: HashMap<BlockId, Vec<Option<u32>>>,
    /// Live sequences → tokens to generate before finishing.
    gen_limit: HashMap<SeqId, usize>,
    /// Import reservations not committed yet.
    reserved: Vec<SeqId>,
    finished: HashSet<SeqId>,
    next_id: u64,
}

/// Shared-prefix prompt families: family k's prompt of length n is `base(k)[..n]`;
/// families 0 and 2 are identical, all four share their first 6 tokens.
fn family_prompt(k: usize, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| match k % 4 {
            1 if i >= 6 => 3000 + i,
            3 if i >= 6 => 5000 + i,
            _ => i,
        })
        .collect()
}

impl Harness {
    fn new(cfg: SchedulerConfig) -> Self {
        Harness {
            bs: cfg.block_size,
            s: Scheduler::new(cfg),
            kv: HashMap::new(),
            gen_limit: HashMap::new(),
            reserved: Vec::new(),
            finished: HashSet::new(),
            next_id: 0,
        }
    }

    fn fresh_id(&mut self) -> SeqId {
        self.next_id += 1;
        SeqId(self.next_id)
    }

    /// Writes `tokens[from..to]` of `seq` into its blocks; each must be exclusive.
    fn write(&mut self, seq: SeqId, from: usize, to: usize) -> Result<(), TestCaseError> {
        let table = self.s.block_table(seq).unwrap().to_vec();
        let tokens = self.s.tokens(seq).unwrap().to_vec();
        for (p, &tok) in tokens.iter().enumerate().take(to).skip(from) {
            let b = table[p / self.bs];
            prop_assert_eq!(
                self.s.block_manager().refcount(b),
                1,
                "write into shared {:?}",
                b
            );
            self.kv.entry(b).or_insert_with(|| vec![None; self.bs])[p % self.bs] = Some(tok);
        }
        Ok(())
    }

    /// The KV of `seq`'s first `upto` positions holds its tokens.
    fn check_kv(&self, seq: SeqId, upto: usize) -> Result<(), TestCaseError> {
        let table = self.s.block_table(seq).unwrap();
        let tokens = self.s.tokens(seq).unwrap();
        for (p, &tok) in tokens.iter().enumerate().take(upto) {
            let slot = self
                .kv
                .get(&table[p / self.bs])
                .and_then(|v| v[p % self.bs]);
            prop_assert_eq!(slot, Some(tok), "{} position {}", seq, p);
        }
        Ok(())
    }

    fn add(&mut self, prompt: Vec<u32>, gen: usize) {
        let id = self.fresh_id();
        if self.s.add_sequence(id, prompt).is_ok() {
            self.gen_limit.insert(id, gen);
        }
    }

    /// One engine step; returns the output for extra checks.
    fn step(&mut self, token_seed: u32) -> Result<SchedulerOutput, TestCaseError> {
        let cfg = self.s.config().clone();
        let out = self.s.schedule();
        prop_assert!(out.num_tokens() <= cfg.max_batched_tokens);
        prop_assert!(out.chunks.len() <= cfg.max_num_seqs);
        let ids: HashSet<SeqId> = out.chunks.iter().map(|c| c.seq).collect();
        prop_assert_eq!(ids.len(), out.chunks.len(), "a sequence scheduled twice");
        for p in &out.preempted {
            prop_assert!(!ids.contains(p), "{} preempted and scheduled", p);
            prop_assert_eq!(self.s.state(*p), Some(SeqState::Waiting));
        }
        for c in &out.chunks {
            let toks = self.s.tokens(c.seq).unwrap().len();
            prop_assert!(c.len >= 1);
            prop_assert_eq!(Some(c.start), self.s.num_computed(c.seq));
            prop_assert!(c.start + c.len <= toks);
            prop_assert_eq!(c.sample, c.start + c.len == toks);
            prop_assert!(self.s.block_table(c.seq).unwrap().len() * self.bs >= c.start + c.len);
            // Reads see only KV written by earlier steps.
            self.check_kv(c.seq, c.start)?;
        }
        for c in &out.chunks {
            self.write(c.seq, c.start, c.start + c.len)?;
        }
        for c in &out.chunks {
            let tok = token_seed.wrapping_add(c.seq.0 as u32) % 7;
            self.s.complete_chunk(c.seq, c.len, c.sample.then_some(tok));
            let toks = self.s.tokens(c.seq).unwrap().len();
            let prompt = self.s.prompt_len(c.seq).unwrap();
            if toks - prompt >= self.gen_limit.get(&c.seq).copied().unwrap_or(1) {
                self.finish(c.seq);
            }
        }
        for id in out.capped.clone() {
            self.finish(id);
        }
        Ok(out)
    }

    fn finish(&mut self, id: SeqId) {
        if self.s.finish(id) {
            self.gen_limit.remove(&id);
            self.reserved.retain(|&r| r != id);
            self.finished.insert(id);
        }
    }

    fn reserve(&mut self, prompt: Vec<u32>, gen: usize) -> Result<(), TestCaseError> {
        let id = self.fresh_id();
        let len = prompt.len();
        if let Ok((table, cached)) = self.s.reserve_import(id, prompt) {
            prop_assert_eq!(cached % self.bs, 0);
            prop_assert!(cached < len);
            prop_assert_eq!(table.len(), len.div_ceil(self.bs));
            self.check_kv(id, cached)?;
            // The transport writes the rest of the prompt's KV.
            self.write(id, cached, len)?;
            self.reserved.push(id);
            self.gen_limit.insert(id, gen);
        }
        Ok(())
    }

    /// Every sequence the harness knows about, in a stable order.
    fn live(&self) -> Vec<SeqId> {
        let mut v: Vec<SeqId> = self.gen_limit.keys().copied().collect();
        v.sort();
        v
    }

    fn check(&self) -> Result<(), TestCaseError> {
        if let Err(e) = self.s.check_invariants() {
            prop_assert!(false, "{}", e);
        }
        let st = self.s.stats();
        prop_assert_eq!(
            st.free_blocks + st.cached_blocks + st.used_blocks,
            st.total_blocks
        );
        prop_assert!(st.running <= self.s.config().max_num_seqs);
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add { k: usize, len: usize, gen: usize },
    Step { seed: u32 },
    Finish { pick: usize },
    Abort { pick: usize },
    Park { pick: usize },
    Unpark { pick: usize },
    Reserve { k: usize, len: usize, gen: usize },
    CommitImport { pick: usize, tok: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..40usize, 1..6usize).prop_map(|(k, len, gen)| Op::Add { k, len, gen }),
        8 => any::<u32>().prop_map(|seed| Op::Step { seed }),
        1 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Abort { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Park { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Unpark { pick }),
        2 => (0..4usize, 1..40usize, 1..6usize).prop_map(|(k, len, gen)| Op::Reserve { k, len, gen }),
        2 => (any::<usize>(), any::<u32>()).prop_map(|(pick, tok)| Op::CommitImport { pick, tok }),
    ]
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        prop_oneof![Just(1usize), Just(2), Just(4), Just(16)],
        3..40usize,
        1..6usize,
        1..48usize,
        any::<bool>(),
        any::<bool>(),
        8..64usize,
    )
        .prop_map(
            |(bs, nb, seqs, budget, chunked, prefix, max_len)| SchedulerConfig {
                block_size: bs,
                num_blocks: nb,
                max_num_seqs: seqs,
                max_batched_tokens: budget,
                chunked_prefill: chunked,
                enable_prefix_cache: prefix,
                max_model_len: max_len,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random operations keep every bookkeeping invariant; after everything ends,
    /// every block is free or cached.
    #[test]
    fn random_ops_keep_invariants(cfg in config(), ops in proptest::collection::vec(op(), 1..120)) {
        let mut h = Harness::new(cfg);
        for op in ops {
            match op {
                Op::Add { k, len, gen } => h.add(family_prompt(k, len), gen),
                Op::Step { seed } => { h.step(seed)?; }
                Op::Finish { pick } | Op::Abort { pick } => {
                    let live = h.live();
                    if !live.is_empty() {
                        let id = live[pick % live.len()];
                        prop_assert!(h.s.abort(id));
                        h.gen_limit.remove(&id);
                        h.reserved.retain(|&r| r != id);
                    }
                }
                Op::Park { pick } => {
                    let live = h.live();
                    if !live.is_empty() {
                        let id = live[pick % live.len()];
                        let before = h.s.state(id);
                        let table = h.s.block_table(id).map(<[BlockId]>::to_vec);
                        let parked = h.s.park(id);
                        prop_assert_eq!(parked, matches!(before, Some(SeqState::Running | SeqState::Ready | SeqState::Parked)));
                        if parked {
                            prop_assert_eq!(h.s.block_table(id).map(<[BlockId]>::to_vec), table);
                        }
                    }
                }
                Op::Unpark { pick } => {
                    let live = h.live();
                    if !live.is_empty() {
                        h.s.unpark(live[pick % live.len()]);
                    }
                }
                Op::Reserve { k, len, gen } => h.reserve(family_prompt(k, len), gen)?,
                Op::CommitImport { pick, tok } => {
                    if !h.reserved.is_empty() {
                        let id = h.reserved.swap_remove(pick % h.reserved.len());
                        prop_assert!(h.s.commit_import(id, tok % 7).is_ok());
                        let len = h.s.tokens(id).unwrap().len();
                        h.check_kv(id, len - 1)?;
                    }
                }
            }
            h.check()?;
        }
        for id in h.live() {
            prop_assert!(h.s.abort(id));
        }
        h.check()?;
        let st = h.s.stats();
        prop_assert_eq!(st.used_blocks, 0);
        prop_assert_eq!(st.free_blocks + st.cached_blocks, st.total_blocks);
        prop_assert!(!h.s.has_work());
    }

    /// With enough blocks for any single sequence, every sequence (added up front or
    /// while others run, imported ones included) completes within a bounded number of
    /// steps, even under preemption.
    #[test]
    fn every_sequence_completes(
        cfg in config(),
        reqs in proptest::collection::vec((0..4usize, 1..40usize, 1..8usize, 0..20usize, any::<bool>()), 1..12),
    ) {
        let mut cfg = cfg;
        // Any sequence within max_model_len must fit in the whole cache.
        cfg.max_model_len = cfg.max_model_len.min(cfg.num_blocks * cfg.block_size);
        let max_len = cfg.max_model_len;
        let mut h = Harness::new(cfg);
        let mut expected = Vec::new();
        let mut pending: Vec<_> = reqs.into_iter().map(|(k, len, gen, at, import)| {
            (at, family_prompt(k, len.min(max_len)), gen, import)
        }).collect();
        pending.sort_by_key(|p| std::cmp::Reverse(p.0));
        let mut steps = 0usize;
        while !pending.is_empty() || h.s.has_work() || !h.reserved.is_empty() {
            prop_assert!(steps < 5_000, "no progress: {:?}", h.s.stats());
            while pending.last().is_some_and(|p| p.0 <= steps) {
                let Some((_, prompt, gen, import)) = pending.pop() else { break };
                if import {
                    h.reserve(prompt.clone(), gen)?;
                    if !h.gen_limit.contains_key(&SeqId(h.next_id)) {
                        // No room right now: fall back to a local prefill.
                        h.add(prompt, gen);
                    }
                } else {
                    h.add(prompt, gen);
                }
                let id = SeqId(h.next_id);
                prop_assert!(h.gen_limit.contains_key(&id), "{} rejected", id);
                expected.push(id);
            }
            for id in std::mem::take(&mut h.reserved) {
                h.s.commit_import(id, 3).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            h.step(steps as u32)?;
            h.check()?;
            steps += 1;
        }
        for id in &expected {
            prop_assert!(h.finished.contains(id), "{} never finished", id);
        }
        prop_assert_eq!(h.s.stats().used_blocks, 0);
    }
}

/// The harness really reaches the interesting paths: preemption, prefix hits under
/// recompute, imports sharing cached blocks.
#[test]
fn harness_exercises_preemption_prefix_hits_and_imports() {
    let mut h = Harness::new(SchedulerConfig {
        block_size: 2,
        num_blocks: 10,
        max_num_seqs: 4,
        max_batched_tokens: 8,
        chunked_prefill: true,
        enable_prefix_cache: true,
        max_model_len: 20,
    });
    for k in 0..4 {
        h.add(family_prompt(k, 7), 6);
    }
    let mut steps = 0u32;
    while h.s.has_work() {
        h.step(steps).unwrap();
        h.check().unwrap();
        steps += 1;
        if steps == 1 {
            h.reserve(family_prompt(0, 9), 2).unwrap();
            let id = h.reserved[0];
            assert!(
                h.s.num_cached_tokens(id) > 0,
                "import reuses the cached prefix"
            );
            h.s.commit_import(id, 1).unwrap();
            h.reserved.clear();
        }
        assert!(steps < 500);
    }
    let st = h.s.stats();
    assert!(st.num_preemptions > 0, "{st:?}");
    assert!(st.cached_prompt_tokens > 0, "{st:?}");
    assert_eq!(h.finished.len(), 5);
    assert_eq!(st.used_blocks, 0);
}
