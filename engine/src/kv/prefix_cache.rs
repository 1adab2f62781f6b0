//! Prefix cache: maps the chained hash of a full, computed KV block to the block that
//! holds it, so a repeated prompt prefix reuses KV instead of recomputing it.
//! (OWNER: helper C.)
//!
//! Keys: the key of block `i` of a token list is
//! `BlockHash::chain(key of block i-1, tokens[i*bs .. (i+1)*bs])`, a 128-bit FNV-1a over
//! the parent key and the block's token ids. Equal keys therefore mean equal *whole
//! prefixes*, not just equal blocks; a random collision is ~2^-64 likely even after
//! 2^32 blocks. Keys are deterministic (no random seed), so two engines with the same
//! block size produce the same keys and routers can compare them across nodes.
//!
//! Invariants:
//! - one key ↔ one block: `by_hash` and `by_block` are exact inverses;
//! - only full blocks whose KV has been computed are ever inserted (the block manager
//!   calls [`PrefixCache::insert`] from `commit` only);
//! - a lookup returns the longest chain of present keys starting at the first block;
//!   the caller caps it (see [`max_hit_blocks`]) so at least one prompt token is
//!   always computed.
//!
//! The cache only knows keys and block ids; reference counts and the LRU of free cached
//! blocks live in [`super::block_allocator`].

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BlockId;

const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// 128-bit FNV-1a of `bytes`, continuing from `state`.
fn fnv1a_128(mut state: u128, bytes: &[u8]) -> u128 {
    for &b in bytes {
        state ^= u128::from(b);
        state = state.wrapping_mul(FNV128_PRIME);
    }
    state
}

/// Key of one full KV block: chained hash of the whole prefix up to and including
/// this block. Serialized as a 32-digit lowercase hex string (JSON numbers cannot hold
/// 128 bits safely).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// Key of a block whose parent key is `parent` (`None` for the first block) and
    /// whose token ids are `tokens`.
    pub fn chain(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = FNV128_OFFSET;
        match parent {
            None => h = fnv1a_128(h, &[0]),
            Some(p) => {
                h = fnv1a_128(h, &[1]);
                h = fnv1a_128(h, &p.0.to_le_bytes());
            }
        }
        // The token count separates caches built with different block sizes.
        let n = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        h = fnv1a_128(h, &n.to_le_bytes());
        for t in tokens {
            h = fnv1a_128(h, &t.to_le_bytes());
        }
        BlockHash(h)
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for BlockHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BlockHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > 32 {
            return Err(serde::de::Error::custom(format!(
                "block hash must be 1 to 32 hex digits, got {} characters",
                s.len()
            )));
        }
        u128::from_str_radix(&s, 16)
            .map(BlockHash)
            .map_err(|e| serde::de::Error::custom(format!("block hash `{s}`: {e}")))
    }
}

/// Keys of every *full* block of `tokens` (a trailing partial block has no key).
pub fn hash_blocks(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out = Vec::new();
    extend_block_hashes(&mut out, tokens, block_size);
    out
}

/// Appends to `hashes` the keys of the full blocks of `tokens` that it does not hold
/// yet (`hashes` must be the keys of the first `hashes.len()` blocks of `tokens`).
pub fn extend_block_hashes(hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize) {
    if block_size == 0 {
        return;
    }
    let full = tokens.len() / block_size;
    while hashes.len() < full {
        let i = hashes.len();
        let parent = hashes.last().copied();
        hashes.push(BlockHash::chain(
            parent,
            &tokens[i * block_size..(i + 1) * block_size],
        ));
    }
}

/// Most blocks a prefix-cache hit may cover for a token list of `num_tokens`: the
/// last token is always computed (it produces the logits), so a hit stops at
/// `floor((num_tokens - 1) / block_size)` blocks.
pub fn max_hit_blocks(num_tokens: usize, block_size: usize) -> usize {
    if block_size == 0 {
        return 0;
    }
    num_tokens.saturating_sub(1) / block_size
}

/// Key ↔ block map of full computed blocks.
#[derive(Debug, Default)]
pub struct PrefixCache {
    by_hash: HashMap<BlockHash, BlockId>,
    by_block: HashMap<BlockId, BlockHash>,
}

impl PrefixCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registered blocks.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn get(&self, hash: &BlockHash) -> Option<BlockId> {
        self.by_hash.get(hash).copied()
    }

    /// The key `block` is registered under, if any.
    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.by_block.get(&block).copied()
    }

    /// Registers `block` under `hash`. False (and nothing changes) when the key is
    /// already registered (another block holds the same prefix) or the block already
    /// has a key.
    pub fn insert(&mut self, hash: BlockHash, block: BlockId) -> bool {
        if self.by_hash.contains_key(&hash) || self.by_block.contains_key(&block) {
            return false;
        }
        self.by_hash.insert(hash, block);
        self.by_block.insert(block, hash);
        true
    }

    /// Unregisters `block` (on eviction); returns its key.
    pub fn remove_block(&mut self, block: BlockId) -> Option<BlockHash> {
        let hash = self.by_block.remove(&block)?;
        self.by_hash.remove(&hash);
        Some(hash)
    }

    /// Blocks of the longest prefix of `hashes` whose keys are all registered.
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes.iter().map_while(|h| self.get(h)).collect()
    }

    /// Every registered key (arbitrary order).
    pub fn hashes(&self) -> impl Iterator<Item = BlockHash> + '_ {
        self.by_hash.keys().copied()
    }

    /// Every registered (key, block) pair (arbitrary order).
    pub fn entries(&self) -> impl Iterator<Item = (BlockHash, BlockId)> + '_ {
        self.by_hash.iter().map(|(h, b)| (*h, *b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_published_vectors() {
        // Reference values of the FNV-1a 128-bit function (empty input and "a").
        assert_eq!(fnv1a_128(FNV128_OFFSET, b""), FNV128_OFFSET);
        assert_eq!(
            fnv1a_128(FNV128_OFFSET, b"a"),
            0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964
        );
    }

    #[test]
    fn chain_depends_on_parent_tokens_and_order() {
        let a = BlockHash::chain(None, &[1, 2, 3, 4]);
        assert_eq!(a, BlockHash::chain(None, &[1, 2, 3, 4]));
        assert_ne!(a, BlockHash::chain(None, &[1, 2, 4, 3]));
        assert_ne!(a, BlockHash::chain(None, &[1, 2, 3]));
        let b1 = BlockHash::chain(Some(a), &[5, 6, 7, 8]);
        let b2 = BlockHash::chain(Some(BlockHash::chain(None, &[9, 9, 9, 9])), &[5, 6, 7, 8]);
        assert_ne!(b1, b2, "same block under different parents must differ");
        assert_ne!(b1, BlockHash::chain(None, &[5, 6, 7, 8]));
    }

    #[test]
    fn hash_blocks_covers_only_full_blocks_and_extends_incrementally() {
        let toks: Vec<u32> = (0..10).collect();
        let h = hash_blocks(&toks, 4);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0], BlockHash::chain(None, &[0, 1, 2, 3]));
        assert_eq!(h[1], BlockHash::chain(Some(h[0]), &[4, 5, 6, 7]));
        let mut inc = hash_blocks(&toks[..5], 4);
        extend_block_hashes(&mut inc, &toks, 4);
        assert_eq!(inc, h);
        let more: Vec<u32> = (0..12).collect();
        extend_block_hashes(&mut inc, &more, 4);
        assert_eq!(inc, hash_blocks(&more, 4));
        assert!(hash_blocks(&toks, 0).is_empty());
    }

    #[test]
    fn hit_cap_leaves_one_token_to_compute() {
        assert_eq!(max_hit_blocks(0, 16), 0);
        assert_eq!(max_hit_blocks(1, 16), 0);
        assert_eq!(max_hit_blocks(16, 16), 0);
        assert_eq!(max_hit_blocks(17, 16), 1);
        assert_eq!(max_hit_blocks(32, 16), 1);
        assert_eq!(max_hit_blocks(33, 16), 2);
    }

    #[test]
    fn insert_lookup_remove() {
        let toks: Vec<u32> = (100..112).collect();
        let h = hash_blocks(&toks, 4);
        let mut c = PrefixCache::new();
        assert!(c.insert(h[0], BlockId(7)));
        assert!(c.insert(h[1], BlockId(3)));
        assert!(!c.insert(h[1], BlockId(4)), "key already present");
        assert!(!c.insert(h[2], BlockId(7)), "block already keyed");
        assert_eq!(c.longest_prefix(&h), vec![BlockId(7), BlockId(3)]);
        assert_eq!(c.remove_block(BlockId(7)), Some(h[0]));
        assert!(c.longest_prefix(&h).is_empty(), "chain broken at block 0");
        assert_eq!(c.len(), 1);
        assert_eq!(c.hash_of(BlockId(3)), Some(h[1]));
    }

    #[test]
    fn serde_roundtrip_as_hex() {
        let h = BlockHash::chain(None, &[1, 2, 3]);
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(s.len(), 34);
        let back: BlockHash = serde_json::from_str(&s).unwrap();
        assert_eq!(back, h);
        assert!(serde_json::from_str::<BlockHash>("\"xyz\"").is_err());
        assert!(serde_json::from_str::<BlockHash>("\"\"").is_err());
    }
}
