//! Tests of the block manager: unit cases and a proptest over random operation
//! sequences with a simulated KV pool that records which token each slot holds.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const BS: usize = 4;

fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[test]
fn allocate_grow_free_counts() {
    let mut m = BlockManager::new(8, BS, true);
    let t = toks(0..10);
    let h = hash_blocks(&t, BS);
    assert!(m.can_allocate(&h, t.len(), t.len()));
    assert_eq!(m.allocate(SeqId(1), &h, t.len(), t.len()), Ok(0));
    assert_eq!(m.block_table(SeqId(1)).unwrap().len(), 3);
    assert_eq!(
        m.allocate(SeqId(1), &h, t.len(), t.len()),
        Err(AllocError::DuplicateSequence(SeqId(1)))
    );
    m.grow(SeqId(1), 13).unwrap();
    assert_eq!(m.block_table(SeqId(1)).unwrap().len(), 4);
    m.grow(SeqId(1), 5).unwrap();
    assert_eq!(
        m.block_table(SeqId(1)).unwrap().len(),
        4,
        "grow never shrinks"
    );
    assert!(!m.can_grow(SeqId(1), 37));
    assert_eq!(
        m.grow(SeqId(1), 37),
        Err(AllocError::OutOfBlocks {
            needed: 6,
            available: 4
        })
    );
    assert_eq!(
        m.block_table(SeqId(1)).unwrap().len(),
        4,
        "failed grow changes nothing"
    );
    assert_eq!((m.num_free(), m.num_cached(), m.num_used()), (4, 0, 4));
    assert!(m.free(SeqId(1)));
    assert!(!m.free(SeqId(1)));
    assert_eq!(m.num_free(), 8);
    m.check_invariants().unwrap();
}

#[test]
fn prefix_hit_is_capped_and_shared() {
    let mut m = BlockManager::new(16, BS, true);
    let t = toks(0..8); // exactly two blocks
    let h = hash_blocks(&t, BS);
    m.allocate(SeqId(1), &h, 8, 8).unwrap();
    assert_eq!(m.commit(SeqId(1), &h), 2);
    assert_eq!(
        m.cached_prefix_len(&t),
        4,
        "a full-prompt hit is capped to leave one token"
    );
    assert_eq!(m.cached_prefix_len(&toks(0..9)), 8);
    assert_eq!(m.cached_prefix_len(&toks(0..3)), 0);
    // A second identical prompt shares block 0 only.
    assert_eq!(m.allocate(SeqId(2), &h, 8, 8), Ok(4));
    let (a, b) = (
        m.block_table(SeqId(1)).unwrap(),
        m.block_table(SeqId(2)).unwrap(),
    );
    assert_eq!(a[0], b[0]);
    assert_ne!(a[1], b[1]);
    assert_eq!(m.refcount(a[0]), 2);
    assert_eq!(m.committed_block_hashes(SeqId(2)).unwrap(), &h[..1]);
    // Committing the second copy of block 1 does not replace the cached one.
    m.commit(SeqId(2), &h);
    assert_eq!(m.cached_block_hashes().len(), 2);
    m.check_invariants().unwrap();
    m.free(SeqId(1));
    m.free(SeqId(2));
    // Both registered blocks stay cached, the duplicate goes back to the free list.
    assert_eq!((m.num_free(), m.num_cached(), m.num_used()), (14, 2, 0));
    m.check_invariants().unwrap();
}

#[test]
fn disabled_prefix_cache_never_hits() {
    let mut m = BlockManager::new(8, BS, false);
    let t = toks(0..9);
    let h = hash_blocks(&t, BS);
    m.allocate(SeqId(1), &h, 9, 9).unwrap();
    m.commit(SeqId(1), &h);
    assert_eq!(m.committed_block_hashes(SeqId(1)).unwrap().len(), 2);
    assert!(m.cached_block_hashes().is_empty());
    m.free(SeqId(1));
    assert_eq!(m.allocate(SeqId(2), &h, 9, 9), Ok(0));
    assert_eq!(m.num_cached(), 0);
    m.check_invariants().unwrap();
}

#[test]
fn eviction_drops_key_and_revived_hits_are_not_double_counted() {
    let mut m = BlockManager::new(3, BS, true);
    let t = toks(0..9);
    let h = hash_blocks(&t, BS);
    m.allocate(SeqId(1), &h, 9, 9).unwrap();
    m.commit(SeqId(1), &h);
    m.free(SeqId(1));
    assert_eq!((m.num_free(), m.num_cached()), (1, 2));
    // The same prompt hits both cached blocks; it needs 1 fresh block: fits.
    assert!(m.can_allocate(&h, 9, 9));
    // 12 tokens of another prompt need 3 blocks: evicts both cached ones.
    let other = toks(100..112);
    let ho = hash_blocks(&other, BS);
    assert!(m.can_allocate(&ho, 12, 12));
    // But hitting 2 blocks and needing 2 more does not fit in 3.
    assert!(!m.can_allocate(&h, 9, 16));
    m.allocate(SeqId(2), &ho, 12, 12).unwrap();
    assert!(
        m.cached_block_hashes().is_empty(),
        "evicted keys are dropped"
    );
    assert_eq!(m.cached_prefix_len(&t), 0);
    m.check_invariants().unwrap();
}

#[test]
fn eviction_takes_tail_blocks_first() {
    let mut m = BlockManager::new(4, BS, true);
    let t = toks(0..13);
    let h = hash_blocks(&t, BS);
    m.allocate(SeqId(1), &h, 13, 13).unwrap();
    m.commit(SeqId(1), &h);
    m.free(SeqId(1)); // 3 cached blocks, 1 free
    let x = toks(50..58);
    m.allocate(SeqId(2), &hash_blocks(&x, BS), 8, 8).unwrap(); // free one + evict one
    assert_eq!(m.cached_prefix_len(&t), 8, "head of the chain survives");
    m.check_invariants().unwrap();
}

/// Simulated KV pool: the token id written into each slot.
struct Kv(HashMap<BlockId, Vec<Option<u32>>>);

impl Kv {
    /// Writes `tokens[from..to]` through `seq`'s table; every written block must be
    /// owned by `seq` alone.
    fn write(&mut self, m: &BlockManager, seq: SeqId, tokens: &[u32], from: usize, to: usize) {
        let table = m.block_table(seq).unwrap();
        for (p, &tok) in tokens.iter().enumerate().take(to).skip(from) {
            let b = table[p / BS];
            assert_eq!(m.refcount(b), 1, "write into shared block {b:?}");
            self.0.entry(b).or_insert_with(|| vec![None; BS])[p % BS] = Some(tok);
        }
    }

    /// Every slot of `tokens[..upto]` in `seq`'s table holds that token.
    fn check(&self, m: &BlockManager, seq: SeqId, tokens: &[u32], upto: usize) {
        let table = m.block_table(seq).unwrap();
        for (p, &tok) in tokens.iter().enumerate().take(upto) {
            let slot = self.0.get(&table[p / BS]).and_then(|v| v[p % BS]);
            assert_eq!(slot, Some(tok), "{seq} position {p}");
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Allocate a new sequence with prompt `base[k][..len]` and compute it.
    Add {
        k: usize,
        len: usize,
    },
    /// Append `n` tokens to a live sequence and compute them.
    Extend {
        pick: usize,
        n: usize,
    },
    Free {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 1..20usize).prop_map(|(k, len)| Op::Add { k, len }),
        2 => (any::<usize>(), 1..6usize).prop_map(|(pick, n)| Op::Extend { pick, n }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_ops_keep_invariants(ops in proptest::collection::vec(op(), 1..80), nb in 4..24usize) {
        let mut m = BlockManager::new(nb, BS, true);
        let mut kv = Kv(HashMap::new());
        let bases: Vec<Vec<u32>> = (0..3).map(|k| (0..20).map(|i| (k as u32 % 2) * 1000 + i).collect()).collect();
        let mut live: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Add { k, len } => {
                    let t = bases[k][..len].to_vec();
                    let h = hash_blocks(&t, BS);
                    let id = SeqId(next);
                    next += 1;
                    let can = m.can_allocate(&h, t.len(), t.len());
                    match m.allocate(id, &h, t.len(), t.len()) {
                        Ok(cached) => {
                            prop_assert!(can);
                            prop_assert!(cached < t.len() && cached % BS == 0);
                            kv.check(&m, id, &t, cached);
                            kv.write(&m, id, &t, cached, t.len());
                            m.commit(id, &h);
                            live.push((id, t));
                        }
                        Err(AllocError::OutOfBlocks { .. }) => prop_assert!(!can),
                        Err(e) => prop_assert!(false, "{e:?}"),
                    }
                }
                Op::Extend { pick, n } if !live.is_empty() => {
                    let i = pick % live.len();
                    let (id, t) = &mut live[i];
                    let old = t.len();
                    let new_len = old + n;
                    if m.grow(*id, new_len).is_ok() {
                        t.extend((0..n as u32).map(|j| 5000 + j));
                        kv.write(&m, *id, t, old, new_len);
                        m.commit(*id, &hash_blocks(t, BS));
                        kv.check(&m, *id, t, new_len);
                    }
                }
                Op::Free { pick } if !live.is_empty() => {
                    let (id, _) = live.swap_remove(pick % live.len());
                    prop_assert!(m.free(id));
                }
                _ => {}
            }
            if let Err(e) = m.check_invariants() {
                prop_assert!(false, "{}", e);
            }
        }
        for (id, _) in live.drain(..) {
            m.free(id);
        }
        prop_assert_eq!(m.num_used(), 0);
        prop_assert_eq!(m.num_free() + m.num_cached(), nb);
    }
}
