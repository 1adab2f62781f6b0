//! Per-sequence block tables over the [`BlockAllocator`] and the [`PrefixCache`].
//! (OWNER: helper C.)
//!
//! A sequence's table lists the blocks holding its tokens in order: token `p` lives in
//! block `table[p / block_size]`, slot `p % block_size`. Leading table entries may be
//! shared prefix-cache blocks (full, computed, never written again); every block a
//! sequence still writes into is owned by it alone.
//!
//! Invariants (checked by [`BlockManager::check_invariants`]):
//! - each block's reference count equals the number of table entries naming it;
//! - a block named by more than one table is a registered prefix-cache block;
//! - a prefix-cache block is either referenced or in the allocator's LRU, never on the
//!   free list; the cache and the allocator's `cached` flags agree;
//! - `free + cached + used == total`;
//! - a table's committed keys are a prefix of its blocks' chain (`committed.len() <=
//!   blocks.len()`).
//!
//! All methods that allocate first check that enough blocks are available and change
//! nothing when they are not.

use std::collections::HashMap;

use super::block_allocator::BlockAllocator;
use super::prefix_cache::{hash_blocks, max_hit_blocks, BlockHash, PrefixCache};
use crate::{BlockId, SeqId};

/// Why a block-manager call changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    DuplicateSequence(SeqId),
    UnknownSequence(SeqId),
    /// Not enough free or evictable blocks right now.
    OutOfBlocks {
        needed: usize,
        available: usize,
    },
}

#[derive(Debug, Default)]
struct SeqTable {
    blocks: Vec<BlockId>,
    /// Keys of the leading full computed blocks (cache hits + commits).
    committed: Vec<BlockHash>,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    enable_prefix_cache: bool,
    allocator: BlockAllocator,
    cache: PrefixCache,
    tables: HashMap<SeqId, SeqTable>,
}

impl BlockManager {
    /// `block_size` is raised to at least 1.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_cache: bool) -> Self {
        BlockManager {
            block_size: block_size.max(1),
            enable_prefix_cache,
            allocator: BlockAllocator::new(num_blocks),
            cache: PrefixCache::new(),
            tables: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn prefix_cache_enabled(&self) -> bool {
        self.enable_prefix_cache
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Cached blocks a new sequence of `num_tokens` tokens with full-block keys
    /// `hashes` would reuse: the longest cached chain, capped so that at least one
    /// token is left to compute. Empty when the prefix cache is disabled.
    pub fn prefix_hit(&self, hashes: &[BlockHash], num_tokens: usize) -> Vec<BlockId> {
        if !self.enable_prefix_cache {
            return Vec::new();
        }
        let cap = max_hit_blocks(num_tokens, self.block_size).min(hashes.len());
        self.cache.longest_prefix(&hashes[..cap])
    }

    /// Tokens of `tokens` a new sequence would take from the prefix cache (read-only).
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        if !self.enable_prefix_cache {
            return 0;
        }
        let hashes = hash_blocks(tokens, self.block_size);
        self.prefix_hit(&hashes, tokens.len()).len() * self.block_size
    }

    /// (new blocks needed, blocks available for them) to allocate a table covering
    /// `cover` tokens on top of the prefix hit `hit`.
    fn allocation_need(&self, hit: &[BlockId], cover: usize) -> (usize, usize) {
        let needed = self.blocks_for(cover).saturating_sub(hit.len());
        // Hit blocks sitting in the LRU stop being evictable once retained.
        let revived = hit
            .iter()
            .filter(|b| self.allocator.refcount(**b) == 0)
            .count();
        (needed, self.allocator.num_available() - revived)
    }

    /// Whether [`allocate`](Self::allocate) with the same arguments would succeed.
    pub fn can_allocate(&self, hashes: &[BlockHash], num_tokens: usize, cover: usize) -> bool {
        let hit = self.prefix_hit(hashes, num_tokens);
        let (needed, available) = self.allocation_need(&hit, cover);
        needed <= available
    }

    /// Creates the table of a new sequence of `num_tokens` tokens whose full-block
    /// keys are `hashes`: reuses the capped prefix-cache hit, then allocates fresh
    /// blocks until the table covers `cover` tokens (or the hit, if longer). Returns
    /// the number of tokens taken from the cache (a multiple of the block size).
    pub fn allocate(
        &mut self,
        seq: SeqId,
        hashes: &[BlockHash],
        num_tokens: usize,
        cover: usize,
    ) -> Result<usize, AllocError> {
        if self.tables.contains_key(&seq) {
            return Err(AllocError::DuplicateSequence(seq));
        }
        let hit = self.prefix_hit(hashes, num_tokens);
        let (needed, available) = self.allocation_need(&hit, cover);
        if needed > available {
            return Err(AllocError::OutOfBlocks { needed, available });
        }
        let mut table = SeqTable::default();
        for (i, &b) in hit.iter().enumerate() {
            // Cannot fail: `b` is a registered cache block, so used or in the LRU.
            self.allocator.retain(b);
            table.blocks.push(b);
            table.committed.push(hashes[i]);
        }
        self.push_fresh_blocks(&mut table.blocks, needed);
        self.tables.insert(seq, table);
        Ok(hit.len() * self.block_size)
    }

    /// Allocates `n` blocks (availability already checked) onto `blocks`.
    fn push_fresh_blocks(&mut self, blocks: &mut Vec<BlockId>, n: usize) {
        for _ in 0..n {
            let Some(a) = self.allocator.allocate() else {
                debug_assert!(false, "availability was checked");
                return;
            };
            if a.evicted {
                self.cache.remove_block(a.block);
            }
            blocks.push(a.block);
        }
    }

    /// Whether `seq`'s table can be grown to cover `num_tokens` tokens.
    pub fn can_grow(&self, seq: SeqId, num_tokens: usize) -> bool {
        match self.tables.get(&seq) {
            None => false,
            Some(t) => {
                self.blocks_for(num_tokens).saturating_sub(t.blocks.len())
                    <= self.allocator.num_available()
            }
        }
    }

    /// Grows `seq`'s table to cover `num_tokens` tokens (no-op if it already does).
    pub fn grow(&mut self, seq: SeqId, num_tokens: usize) -> Result<(), AllocError> {
        let want = self.blocks_for(num_tokens);
        let Some(table) = self.tables.get_mut(&seq) else {
            return Err(AllocError::UnknownSequence(seq));
        };
        let needed = want.saturating_sub(table.blocks.len());
        let available = self.allocator.num_available();
        if needed > available {
            return Err(AllocError::OutOfBlocks { needed, available });
        }
        let mut blocks = std::mem::take(&mut table.blocks);
        self.push_fresh_blocks(&mut blocks, needed);
        if let Some(table) = self.tables.get_mut(&seq) {
            table.blocks = blocks;
        }
        Ok(())
    }

    /// Records that the blocks whose keys are `full_hashes` (the keys of `seq`'s
    /// leading full blocks whose KV is now computed) are complete: each new one is
    /// registered in the prefix cache unless another block already holds that key.
    /// Returns the number of newly committed blocks.
    pub fn commit(&mut self, seq: SeqId, full_hashes: &[BlockHash]) -> usize {
        let Some(table) = self.tables.get_mut(&seq) else {
            return 0;
        };
        let upto = full_hashes.len().min(table.blocks.len());
        let start = table.committed.len();
        if start >= upto {
            return 0;
        }
        for (&hash, &block) in full_hashes[start..upto]
            .iter()
            .zip(&table.blocks[start..upto])
        {
            table.committed.push(hash);
            if self.enable_prefix_cache
                && self.cache.get(&hash).is_none()
                && self.cache.hash_of(block).is_none()
                && self.allocator.mark_cached(block)
            {
                self.cache.insert(hash, block);
            }
        }
        upto - start
    }

    /// Drops `seq`'s table: its blocks lose a reference (last block first, so a
    /// sequence's tail is evicted before its head). False if unknown.
    pub fn free(&mut self, seq: SeqId) -> bool {
        let Some(table) = self.tables.remove(&seq) else {
            return false;
        };
        for &b in table.blocks.iter().rev() {
            self.allocator.release(b);
        }
        true
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    pub fn num_seqs(&self) -> usize {
        self.tables.len()
    }

    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Keys of `seq`'s leading full computed blocks (prefix hits and commits), in
    /// order; routers use them for KV-aware routing.
    pub fn committed_block_hashes(&self, seq: SeqId) -> Option<&[BlockHash]> {
        self.tables.get(&seq).map(|t| t.committed.as_slice())
    }

    /// Every key in the prefix cache (used or evictable), sorted.
    pub fn cached_block_hashes(&self) -> Vec<BlockHash> {
        let mut v: Vec<_> = self.cache.hashes().collect();
        v.sort_unstable();
        v
    }

    pub fn num_total(&self) -> usize {
        self.allocator.num_total()
    }

    /// Count-0 blocks holding nothing.
    pub fn num_free(&self) -> usize {
        self.allocator.num_free()
    }

    /// Count-0 blocks holding a cached prefix (reusable until evicted).
    pub fn num_cached(&self) -> usize {
        self.allocator.num_cached()
    }

    /// Blocks referenced by at least one table.
    pub fn num_used(&self) -> usize {
        self.allocator.num_used()
    }

    /// Blocks a new allocation can take (free + evictable cached).
    pub fn num_available(&self) -> usize {
        self.allocator.num_available()
    }

    pub fn refcount(&self, block: BlockId) -> u32 {
        self.allocator.refcount(block)
    }

    /// Read access to the allocator (tests, metrics).
    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }

    /// Checks every invariant in the module header; `Err` describes the first
    /// violation. For tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.allocator.check_invariants()?;
        let n = self.num_total();
        let mut owners = vec![0u32; n];
        for (seq, t) in &self.tables {
            if t.committed.len() > t.blocks.len() {
                return Err(format!("{seq}: more committed keys than blocks"));
            }
            for b in &t.blocks {
                let i = b.0 as usize;
                if i >= n {
                    return Err(format!("{seq}: block {b:?} outside the pool"));
                }
                owners[i] += 1;
            }
        }
        for (i, &own) in owners.iter().enumerate() {
            let b = BlockId(i as u32);
            let rc = self.allocator.refcount(b);
            if rc != own {
                return Err(format!("{b:?}: refcount {rc} but {own} table entries"));
            }
            let keyed = self.cache.hash_of(b).is_some();
            if own > 1 && !keyed {
                return Err(format!(
                    "{b:?} shared by {own} tables but not a cache block"
                ));
            }
            if keyed != self.allocator.is_cached(b) {
                return Err(format!("{b:?}: prefix cache and allocator disagree"));
            }
        }
        for (h, b) in self.cache.entries() {
            if self.cache.get(&h) != Some(b) || self.cache.hash_of(b) != Some(h) {
                return Err(format!("{b:?}: prefix cache maps are not inverse"));
            }
        }
        let sum = self.num_free() + self.num_cached() + self.num_used();
        if sum != n {
            return Err(format!("free + cached + used = {sum} != total {n}"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "block_manager_tests.rs"]
mod tests;
