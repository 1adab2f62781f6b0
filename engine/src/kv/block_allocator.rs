//! Reference-counted KV block allocator. (OWNER: helper C.)
//!
//! Every block of the pool is in exactly one of three states:
//! - **used**: reference count > 0 (owned by one or more sequence block tables; a
//!   count > 1 only happens for shared prefix-cache blocks);
//! - **free**: count 0 and holding nothing worth keeping, on the free list;
//! - **cached**: count 0 but holding a committed prefix-cache block; it sits in an LRU
//!   and can be revived by a prefix hit ([`BlockAllocator::retain`]) or evicted.
//!
//! Invariants: `free + cached + used == total`; [`BlockAllocator::allocate`] takes a
//! free block first and evicts the least recently released cached block only when no
//! free block is left; only count-0 blocks are ever evicted. The allocator knows which
//! blocks are cached (a flag) but not their keys: on eviction the caller must drop the
//! block from the prefix cache ([`Allocation::evicted`]).

use std::collections::BTreeMap;

use crate::BlockId;

/// A newly allocated block (reference count 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub block: BlockId,
    /// The block was a cached block evicted from the LRU: the caller must remove it
    /// from the prefix cache.
    pub evicted: bool,
}

#[derive(Debug)]
pub struct BlockAllocator {
    /// Reference count per block.
    refcounts: Vec<u32>,
    /// Block holds a registered prefix-cache block.
    cached: Vec<bool>,
    /// Count-0 uncached blocks; popped from the end.
    free: Vec<BlockId>,
    /// Count-0 cached blocks keyed by the tick of their release (oldest first).
    lru: BTreeMap<u64, BlockId>,
    /// Tick under which a block sits in `lru` (meaningful only while it is there).
    lru_tick: Vec<u64>,
    clock: u64,
}

impl BlockAllocator {
    /// A pool of `num_blocks` free blocks (ids `0..num_blocks`, capped to the `u32`
    /// range). Blocks are handed out in increasing id order at first.
    pub fn new(num_blocks: usize) -> Self {
        let n = num_blocks.min(u32::MAX as usize);
        BlockAllocator {
            refcounts: vec![0; n],
            cached: vec![false; n],
            free: (0..n as u32).rev().map(BlockId).collect(),
            lru: BTreeMap::new(),
            lru_tick: vec![0; n],
            clock: 0,
        }
    }

    pub fn num_total(&self) -> usize {
        self.refcounts.len()
    }

    /// Count-0 blocks holding nothing.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Count-0 blocks holding a cached prefix block (evictable).
    pub fn num_cached(&self) -> usize {
        self.lru.len()
    }

    /// Blocks with a reference count > 0.
    pub fn num_used(&self) -> usize {
        self.num_total() - self.num_free() - self.num_cached()
    }

    /// Blocks [`allocate`](Self::allocate) can still hand out (free + evictable).
    pub fn num_available(&self) -> usize {
        self.num_free() + self.num_cached()
    }

    /// Reference count of `block` (0 for an id outside the pool).
    pub fn refcount(&self, block: BlockId) -> u32 {
        self.refcounts.get(block.0 as usize).copied().unwrap_or(0)
    }

    /// Whether `block` holds a registered prefix-cache block.
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.cached.get(block.0 as usize).copied().unwrap_or(false)
    }

    /// Takes a block with reference count 1: a free one if any, else the least
    /// recently released cached one (evicted). `None` when every block is used.
    pub fn allocate(&mut self) -> Option<Allocation> {
        if let Some(block) = self.free.pop() {
            self.refcounts[block.0 as usize] = 1;
            return Some(Allocation {
                block,
                evicted: false,
            });
        }
        let (_, block) = self.lru.pop_first()?;
        let i = block.0 as usize;
        self.cached[i] = false;
        self.refcounts[i] = 1;
        Some(Allocation {
            block,
            evicted: true,
        })
    }

    /// Adds a reference to a used or cached block (a cached block leaves the LRU).
    /// False, and nothing changes, for a free block or an id outside the pool: a free
    /// block holds nothing that could be shared.
    pub fn retain(&mut self, block: BlockId) -> bool {
        let i = block.0 as usize;
        let Some(&rc) = self.refcounts.get(i) else {
            return false;
        };
        if rc == 0 {
            if !self.cached[i] {
                return false;
            }
            self.lru.remove(&self.lru_tick[i]);
        }
        self.refcounts[i] = rc.saturating_add(1);
        true
    }

    /// Drops a reference. At count 0 a cached block joins the LRU as its most recent
    /// entry, any other block the free list. False, and nothing changes, when the
    /// block has no reference (or is outside the pool).
    pub fn release(&mut self, block: BlockId) -> bool {
        let i = block.0 as usize;
        match self.refcounts.get(i).copied() {
            None | Some(0) => false,
            Some(rc) => {
                self.refcounts[i] = rc - 1;
                if rc == 1 {
                    if self.cached[i] {
                        self.clock += 1;
                        self.lru_tick[i] = self.clock;
                        self.lru.insert(self.clock, block);
                    } else {
                        self.free.push(block);
                    }
                }
                true
            }
        }
    }

    /// Marks a used block as holding a registered prefix-cache block, so it is kept
    /// in the LRU when released. False for a count-0 block or an id outside the pool.
    pub fn mark_cached(&mut self, block: BlockId) -> bool {
        let i = block.0 as usize;
        match self.refcounts.get(i) {
            Some(&rc) if rc > 0 => {
                self.cached[i] = true;
                true
            }
            _ => false,
        }
    }

    /// Cached count-0 blocks, least recently released first (the eviction order).
    pub fn lru_order(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.lru.values().copied()
    }

    /// Checks the internal invariants; `Err` describes the first violation. For tests
    /// and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.num_total();
        let mut seen = vec![0u8; n];
        for b in &self.free {
            let i = b.0 as usize;
            if i >= n || self.refcounts[i] != 0 || self.cached[i] {
                return Err(format!("free list holds {b:?} which is not a free block"));
            }
            seen[i] += 1;
        }
        for (tick, b) in &self.lru {
            let i = b.0 as usize;
            if i >= n || self.refcounts[i] != 0 || !self.cached[i] || self.lru_tick[i] != *tick {
                return Err(format!("LRU holds {b:?} which is not a free cached block"));
            }
            seen[i] += 1;
        }
        for (i, (&listed, &rc)) in seen.iter().zip(&self.refcounts).enumerate() {
            if listed != u8::from(rc == 0) {
                return Err(format!(
                    "block {i} (refcount {rc}, cached {}) is listed {listed} times in free/LRU",
                    self.cached[i]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<BlockId> {
        v.iter().map(|&i| BlockId(i)).collect()
    }

    #[test]
    fn allocates_in_order_then_runs_out() {
        let mut a = BlockAllocator::new(3);
        let got: Vec<_> = (0..3).map(|_| a.allocate().unwrap().block).collect();
        assert_eq!(got, ids(&[0, 1, 2]));
        assert!(a.allocate().is_none());
        assert_eq!((a.num_free(), a.num_cached(), a.num_used()), (0, 0, 3));
        a.check_invariants().unwrap();
    }

    #[test]
    fn release_returns_plain_blocks_to_free_list() {
        let mut a = BlockAllocator::new(2);
        let b = a.allocate().unwrap().block;
        assert!(a.retain(b));
        assert_eq!(a.refcount(b), 2);
        assert!(a.release(b));
        assert_eq!(a.num_used(), 1);
        assert!(a.release(b));
        assert!(!a.release(b), "refcount never goes negative");
        assert_eq!(a.num_free(), 2);
        assert!(!a.retain(b), "a free block cannot be shared");
        assert!(!a.retain(BlockId(99)));
        a.check_invariants().unwrap();
    }

    #[test]
    fn cached_blocks_survive_release_and_evict_lru_only_when_no_free_block() {
        let mut a = BlockAllocator::new(4);
        let b: Vec<_> = (0..3).map(|_| a.allocate().unwrap().block).collect();
        for &x in &b {
            assert!(a.mark_cached(x));
        }
        // Release order 2, 0, 1 → LRU order 2, 0, 1.
        for i in [2, 0, 1] {
            a.release(b[i]);
        }
        assert_eq!(a.lru_order().collect::<Vec<_>>(), ids(&[2, 0, 1]));
        assert_eq!((a.num_free(), a.num_cached(), a.num_used()), (1, 3, 0));
        // A hit on block 0 takes it out of the LRU.
        assert!(a.retain(BlockId(0)));
        assert_eq!(a.lru_order().collect::<Vec<_>>(), ids(&[2, 1]));
        // The plain free block goes first, then the oldest cached one.
        let x = a.allocate().unwrap();
        assert_eq!(
            x,
            Allocation {
                block: BlockId(3),
                evicted: false
            }
        );
        let y = a.allocate().unwrap();
        assert_eq!(
            y,
            Allocation {
                block: BlockId(2),
                evicted: true
            }
        );
        assert!(!a.is_cached(BlockId(2)));
        let z = a.allocate().unwrap();
        assert_eq!(
            z,
            Allocation {
                block: BlockId(1),
                evicted: true
            }
        );
        assert!(
            a.allocate().is_none(),
            "block 0 is referenced, never evicted"
        );
        assert!(a.is_cached(BlockId(0)));
        a.check_invariants().unwrap();
        // Released again, block 0 goes back to the LRU.
        a.release(BlockId(0));
        assert_eq!(a.lru_order().collect::<Vec<_>>(), ids(&[0]));
        a.check_invariants().unwrap();
    }

    #[test]
    fn mark_cached_requires_a_reference() {
        let mut a = BlockAllocator::new(1);
        assert!(!a.mark_cached(BlockId(0)));
        assert!(!a.mark_cached(BlockId(5)));
        a.check_invariants().unwrap();
    }
}
