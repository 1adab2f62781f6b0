//! Paged KV cache bookkeeping and memory.
//!
//! - `block_allocator`: reference-counted blocks, free list, LRU of cached-but-free
//!   blocks (OWNER: helper C).
//! - `prefix_cache`: hash chain of full blocks → block id, so a repeated prompt
//!   prefix reuses computed KV (OWNER: helper C).
//! - `block_manager`: per-sequence block tables on top of the two (OWNER: helper C).
//! - `pool`: the KV memory itself and the per-block memory regions used by KV
//!   transports (OWNER: engine core).

pub mod block_allocator;
pub mod block_manager;
pub mod pool;
pub mod prefix_cache;
