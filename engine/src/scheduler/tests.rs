//! Unit tests of the scheduler: chunking boundaries, step order, preemption order,
//! prefix-hit capping, parking, imports, errors.

use super::*;
use crate::kv::prefix_cache::hash_blocks;

fn cfg(bs: usize, nb: usize, seqs: usize, budget: usize, chunked: bool) -> SchedulerConfig {
    SchedulerConfig {
        block_size: bs,
        num_blocks: nb,
        max_num_seqs: seqs,
        max_batched_tokens: budget,
        chunked_prefill: chunked,
        enable_prefix_cache: true,
        max_model_len: 1000,
    }
}

fn chunk(seq: u64, start: usize, len: usize, sample: bool) -> ScheduledChunk {
    ScheduledChunk {
        seq: SeqId(seq),
        start,
        len,
        sample,
    }
}

fn prompt(base: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| base + i).collect()
}

/// Schedules one step and completes every chunk, sampling `900 + seq id`.
fn step(s: &mut Scheduler) -> SchedulerOutput {
    let out = s.schedule();
    for c in &out.chunks {
        s.complete_chunk(c.seq, c.len, c.sample.then_some(900 + c.seq.0 as u32));
    }
    s.check_invariants().unwrap();
    out
}

#[test]
fn chunked_prefill_boundaries() {
    let mut s = Scheduler::new(cfg(4, 16, 4, 4, true));
    s.add_sequence(SeqId(1), prompt(0, 10)).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 4, false)]);
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 4, 4, false)]);
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 8, 2, true)]);
    assert_eq!(s.tokens(SeqId(1)).unwrap().len(), 11);
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 10, 1, true)]);
    assert_eq!(
        s.block_table(SeqId(1)).unwrap().len(),
        3,
        "12 tokens → 3 blocks"
    );
    assert_eq!(s.num_computed(SeqId(1)), Some(11));
}

#[test]
fn chunk_fills_exact_budget_and_block_boundary() {
    let mut s = Scheduler::new(cfg(4, 16, 4, 8, true));
    s.add_sequence(SeqId(1), prompt(0, 8)).unwrap();
    s.add_sequence(SeqId(2), prompt(100, 3)).unwrap();
    // Seq 1 takes the whole budget; seq 2 gets nothing this step.
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 8, true)]);
    assert_eq!(s.block_table(SeqId(1)).unwrap().len(), 2);
    // Decode first (needs a third block), then seq 2's whole prompt.
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 8, 1, true), chunk(2, 0, 3, true)]
    );
    assert_eq!(s.block_table(SeqId(1)).unwrap().len(), 3);
}

#[test]
fn whole_prefill_mode_waits_for_room() {
    let mut s = Scheduler::new(cfg(4, 32, 4, 8, false));
    s.add_sequence(SeqId(1), prompt(0, 6)).unwrap();
    s.add_sequence(SeqId(2), prompt(100, 5)).unwrap();
    s.add_sequence(SeqId(3), prompt(200, 1)).unwrap();
    // Seq 2 does not fit in the 2 tokens left and seq 3 may not overtake it.
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 6, true)]);
    assert_eq!(
        step(&mut s).chunks,
        vec![
            chunk(1, 6, 1, true),
            chunk(2, 0, 5, true),
            chunk(3, 0, 1, true)
        ]
    );
}

#[test]
fn whole_prefill_mode_runs_oversized_prompt_alone_in_chunks() {
    let mut s = Scheduler::new(cfg(4, 32, 4, 8, false));
    s.add_sequence(SeqId(1), prompt(0, 20)).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 8, false)]);
    s.add_sequence(SeqId(2), prompt(100, 2)).unwrap();
    // The running oversized prefill keeps the step to itself; seq 2 waits.
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 8, 8, false)]);
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 16, 4, true), chunk(2, 0, 2, true)]
    );
}

#[test]
fn decodes_go_before_prefill_chunks() {
    let mut s = Scheduler::new(cfg(4, 16, 4, 4, true));
    s.add_sequence(SeqId(1), prompt(0, 10)).unwrap(); // long prefill, admitted first
    s.add_sequence(SeqId(2), prompt(100, 2)).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 4, false)]);
    // An imported sequence joins running after seq 1 but, decoding, goes first.
    s.reserve_import(SeqId(3), prompt(200, 3)).unwrap();
    s.commit_import(SeqId(3), 5).unwrap();
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(3, 3, 1, true), chunk(1, 4, 3, false)]
    );
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(3, 4, 1, true), chunk(1, 7, 3, true)]
    );
    // Both decode now, in admission order; the waiting seq 2 gets the rest.
    assert_eq!(
        step(&mut s).chunks,
        vec![
            chunk(1, 10, 1, true),
            chunk(3, 5, 1, true),
            chunk(2, 0, 2, true)
        ]
    );
}

#[test]
fn max_num_seqs_caps_running() {
    let mut s = Scheduler::new(cfg(4, 64, 2, 64, true));
    for i in 0..4 {
        s.add_sequence(SeqId(i), prompt(100 * i as u32, 3)).unwrap();
    }
    let out = step(&mut s);
    assert_eq!(out.chunks.len(), 2);
    assert_eq!(s.stats().running, 2);
    assert_eq!(s.stats().waiting, 2);
    s.finish(SeqId(0));
    let out = step(&mut s);
    assert_eq!(out.chunks, vec![chunk(1, 3, 1, true), chunk(2, 0, 3, true)]);
}

#[test]
fn preempts_most_recently_admitted_and_recomputes_later() {
    // 2-token blocks, 6 blocks. Three 3-token prompts take 2 blocks each.
    let mut s = Scheduler::new(cfg(2, 6, 4, 64, true));
    for i in 1..=3 {
        s.add_sequence(SeqId(i), prompt(100 * i as u32, 3)).unwrap();
    }
    step(&mut s); // prefill: 4 tokens each
    step(&mut s); // decode into the second block: 5 tokens each
    assert_eq!(s.stats().free_blocks, 0);
    // Seq 1 needs a third block: the newest, seq 3, is preempted; its two blocks
    // (cached, in the LRU) are then evicted for seqs 1 and 2.
    let out = step(&mut s);
    assert_eq!(out.preempted, vec![SeqId(3)]);
    assert_eq!(out.chunks, vec![chunk(1, 4, 1, true), chunk(2, 4, 1, true)]);
    assert_eq!(s.state(SeqId(3)), Some(SeqState::Waiting));
    assert_eq!(s.block_table(SeqId(3)), None);
    assert_eq!(s.num_computed(SeqId(3)), Some(0));
    assert_eq!(s.tokens(SeqId(3)).unwrap(), &[300, 301, 302, 903, 903]);
    // No room for seq 3 yet; next growth preempts seq 2, which goes to the front.
    let out = step(&mut s);
    assert!(out.preempted.is_empty());
    assert_eq!(out.chunks.len(), 2);
    let out = step(&mut s);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert_eq!(out.chunks, vec![chunk(1, 6, 1, true)]);
    assert_eq!(
        s.waiting.iter().copied().collect::<Vec<_>>(),
        vec![SeqId(2), SeqId(3)]
    );
    assert_eq!(s.stats().num_preemptions, 2);
    // Once seq 1 ends, seq 2 is recomputed over prompt + generated tokens, reusing
    // the head of its chain that survived in the LRU (its tail was evicted first).
    s.finish(SeqId(1));
    let out = step(&mut s);
    assert_eq!(
        s.tokens(SeqId(2)).unwrap(),
        &[200, 201, 202, 902, 902, 902, 902, 902]
    );
    assert_eq!(out.chunks[0], chunk(2, 4, 3, true));
    assert_eq!(
        s.num_cached_tokens(SeqId(2)),
        0,
        "first-admission hit is kept"
    );
}

#[test]
fn preempts_itself_when_it_is_the_newest() {
    let mut s = Scheduler::new(cfg(2, 5, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(100, 3)).unwrap();
    s.add_sequence(SeqId(2), prompt(200, 3)).unwrap();
    step(&mut s);
    step(&mut s); // 4 blocks used, 1 free, both need a third block next
    let out = step(&mut s);
    assert_eq!(out.chunks, vec![chunk(1, 4, 1, true)]);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert_eq!(s.state(SeqId(1)), Some(SeqState::Running));
}

#[test]
fn lone_sequence_never_preempts_itself_below_capacity() {
    let mut s = Scheduler::new(cfg(2, 3, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 1)).unwrap();
    for _ in 0..5 {
        let out = step(&mut s);
        assert!(out.preempted.is_empty());
        assert_eq!(out.chunks.len(), 1);
    }
    assert_eq!(s.tokens(SeqId(1)).unwrap().len(), 6);
    assert_eq!(s.max_seq_len(), 6);
    let out = step(&mut s);
    assert_eq!(out.chunks.len(), 1, "6 tokens still fit in 3 blocks");
    let out = step(&mut s);
    assert!(out.chunks.is_empty());
    assert_eq!(out.capped, vec![SeqId(1)]);
    assert!(out.preempted.is_empty());
}

#[test]
fn capped_at_max_model_len() {
    let mut c = cfg(4, 16, 4, 64, true);
    c.max_model_len = 6;
    let mut s = Scheduler::new(c);
    assert!(matches!(
        s.add_sequence(SeqId(9), prompt(0, 7)),
        Err(EngineError::PromptTooLong {
            prompt_tokens: 7,
            max_context: 6
        })
    ));
    s.add_sequence(SeqId(1), prompt(0, 6)).unwrap();
    s.add_sequence(SeqId(2), prompt(50, 2)).unwrap();
    step(&mut s);
    let out = step(&mut s);
    assert_eq!(out.capped, vec![SeqId(1)]);
    assert_eq!(out.chunks, vec![chunk(2, 2, 1, true)]);
    assert!(s.finish(SeqId(1)));
}

#[test]
fn prefix_hit_is_capped_to_leave_one_token() {
    let mut s = Scheduler::new(cfg(4, 32, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 8)).unwrap();
    step(&mut s);
    assert!(s.finish(SeqId(1)));
    assert_eq!(s.cached_prefix_len(&prompt(0, 8)), 4);
    assert_eq!(s.cached_prefix_len(&prompt(0, 9)), 8);
    assert_eq!(s.cached_prefix_len(&prompt(0, 4)), 0);
    // Identical prompt: only the first block is reused.
    s.add_sequence(SeqId(2), prompt(0, 8)).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(2, 4, 4, true)]);
    assert_eq!(s.num_cached_tokens(SeqId(2)), 4);
    // One token longer: both blocks reused, one token computed.
    s.add_sequence(SeqId(3), prompt(0, 9)).unwrap();
    let out = step(&mut s);
    assert_eq!(out.chunks[1], chunk(3, 8, 1, true));
    assert_eq!(s.num_cached_tokens(SeqId(3)), 8);
    let (t2, t3) = (
        s.block_table(SeqId(2)).unwrap(),
        s.block_table(SeqId(3)).unwrap(),
    );
    assert_eq!(t2[0], t3[0]);
    let st = s.stats();
    assert_eq!(st.prompt_tokens, 25);
    assert_eq!(st.cached_prompt_tokens, 12);
}

#[test]
fn prefix_cache_disabled() {
    let mut c = cfg(4, 32, 4, 64, true);
    c.enable_prefix_cache = false;
    let mut s = Scheduler::new(c);
    s.add_sequence(SeqId(1), prompt(0, 9)).unwrap();
    step(&mut s);
    s.finish(SeqId(1));
    assert_eq!(s.cached_prefix_len(&prompt(0, 9)), 0);
    s.add_sequence(SeqId(2), prompt(0, 9)).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(2, 0, 9, true)]);
    assert_eq!(s.stats().cached_blocks, 0);
}

#[test]
fn committed_hashes_follow_computed_blocks() {
    let mut s = Scheduler::new(cfg(4, 32, 4, 6, true));
    let p = prompt(0, 10);
    s.add_sequence(SeqId(1), p.clone()).unwrap();
    step(&mut s); // 6 computed → 1 full block
    let h = hash_blocks(&p, 4);
    assert_eq!(s.committed_block_hashes(SeqId(1)), &h[..1]);
    step(&mut s); // 10 computed → 2 full blocks
    assert_eq!(s.committed_block_hashes(SeqId(1)), &h[..2]);
    assert_eq!(s.cached_block_hashes().len(), 2);
    assert!(s.committed_block_hashes(SeqId(77)).is_empty());
}

#[test]
fn add_sequence_errors() {
    let mut s = Scheduler::new(cfg(4, 2, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 3)).unwrap();
    assert!(matches!(
        s.add_sequence(SeqId(1), prompt(0, 3)),
        Err(EngineError::DuplicateSequence(SeqId(1)))
    ));
    assert!(matches!(
        s.add_sequence(SeqId(2), vec![]),
        Err(EngineError::InvalidRequest(_))
    ));
    assert!(matches!(
        s.add_sequence(SeqId(2), prompt(0, 9)),
        Err(EngineError::KvCacheTooSmall {
            needed_blocks: 3,
            total_blocks: 2
        })
    ));
    assert!(s.add_sequence(SeqId(2), prompt(0, 8)).is_ok());
    assert!(Scheduler::try_new(cfg(0, 2, 4, 64, true)).is_err());
    assert!(Scheduler::try_new(cfg(4, 2, 4, 0, true)).is_err());
}

#[test]
fn park_keeps_blocks_until_finish() {
    let mut s = Scheduler::new(cfg(4, 8, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 6)).unwrap();
    step(&mut s);
    assert!(s.park(SeqId(1)));
    let table = s.block_table(SeqId(1)).unwrap().to_vec();
    assert!(step(&mut s).chunks.is_empty());
    assert!(!s.has_work());
    assert_eq!(s.block_table(SeqId(1)).unwrap(), table.as_slice());
    assert_eq!(s.stats().parked, 1);
    assert_eq!(s.stats().used_blocks, 2);
    assert!(s.finish(SeqId(1)));
    assert!(!s.finish(SeqId(1)));
    assert_eq!(s.stats().used_blocks, 0);
}

#[test]
fn unpark_resumes_decoding() {
    let mut s = Scheduler::new(cfg(4, 8, 4, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 6)).unwrap();
    step(&mut s);
    assert!(s.park(SeqId(1)));
    assert!(!s.unpark(SeqId(2)));
    assert!(s.unpark(SeqId(1)));
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 6, 1, true)]);
}

#[test]
fn abort_from_every_state_frees_everything() {
    let mut s = Scheduler::new(cfg(4, 16, 2, 64, true));
    s.add_sequence(SeqId(1), prompt(0, 5)).unwrap(); // will run
    s.add_sequence(SeqId(2), prompt(100, 5)).unwrap(); // will be parked
    s.add_sequence(SeqId(3), prompt(200, 5)).unwrap(); // stays waiting
    step(&mut s);
    s.park(SeqId(2));
    s.reserve_import(SeqId(4), prompt(300, 5)).unwrap();
    assert!(s.stats().used_blocks > 0);
    for i in 1..=4 {
        assert!(s.abort(SeqId(i)));
        s.check_invariants().unwrap();
    }
    assert!(!s.abort(SeqId(1)));
    assert!(!s.has_work());
    let st = s.stats();
    assert_eq!(st.used_blocks, 0);
    assert_eq!(st.free_blocks + st.cached_blocks, st.total_blocks);
}

#[test]
fn import_reserve_commit_then_decode() {
    let mut s = Scheduler::new(cfg(4, 8, 1, 64, true));
    // A local sequence computes a shared prefix first.
    s.add_sequence(SeqId(1), prompt(0, 9)).unwrap();
    step(&mut s);
    let (table, cached) = s.reserve_import(SeqId(2), prompt(0, 10)).unwrap();
    assert_eq!(cached, 8);
    assert_eq!(table.len(), 3);
    assert_eq!(&table[..2], &s.block_table(SeqId(1)).unwrap()[..2]);
    assert_eq!(s.state(SeqId(2)), Some(SeqState::ImportReserved));
    // Not scheduled while reserved.
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 9, 1, true)]);
    assert!(matches!(
        s.commit_import(SeqId(3), 1),
        Err(EngineError::UnknownSequence(_))
    ));
    s.commit_import(SeqId(2), 777).unwrap();
    assert!(s.commit_import(SeqId(2), 777).is_err(), "only once");
    // max_num_seqs = 1 is taken by seq 1: seq 2 waits in the ready queue.
    assert_eq!(s.state(SeqId(2)), Some(SeqState::Ready));
    assert_eq!(s.tokens(SeqId(2)).unwrap().len(), 11);
    assert_eq!(s.committed_block_hashes(SeqId(2)).len(), 2);
    s.finish(SeqId(1));
    assert_eq!(step(&mut s).chunks, vec![chunk(2, 10, 1, true)]);
}

#[test]
fn import_reservation_fails_when_blocks_are_short() {
    let mut s = Scheduler::new(cfg(4, 4, 4, 64, true));
    s.reserve_import(SeqId(1), prompt(0, 12)).unwrap();
    assert!(matches!(
        s.reserve_import(SeqId(2), prompt(100, 8)),
        Err(EngineError::KvTransfer(_))
    ));
    assert_eq!(
        s.state(SeqId(2)),
        None,
        "a failed reservation leaves nothing behind"
    );
    assert!(matches!(
        s.reserve_import(SeqId(3), prompt(100, 17)),
        Err(EngineError::KvCacheTooSmall { .. })
    ));
    s.check_invariants().unwrap();
}
