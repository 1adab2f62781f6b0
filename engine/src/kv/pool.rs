//! KV cache memory layout, shared by every backend, and the CPU pool.
//!
//! Layout (one contiguous region per block, so that a transport moves one block
//! with one descriptor):
//! `pool[num_blocks][num_layers][2 (K, V)][block_size][num_kv_heads][head_dim]`.
//! Within a block, layer `l`'s keys for token slot `s` and kv head `g` start at
//! `((l * 2 + 0) * block_size + s) * kv_dim + g * head_dim` (values: `+ block_size *
//! kv_dim`). Element type is f32 on CPU.

use crate::BlockId;

/// Geometry of a KV pool. Two engines can exchange blocks iff their layouts match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvLayout {
    pub num_blocks: usize,
    pub num_layers: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Bytes per element (4 for f32, 2 for bf16).
    pub elem_bytes: usize,
}

impl KvLayout {
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Elements of one (layer, K-or-V) slab inside a block.
    pub fn slab_elems(&self) -> usize {
        self.block_size * self.kv_dim()
    }
    /// Elements of one whole block (all layers, K and V).
    pub fn block_elems(&self) -> usize {
        self.num_layers * 2 * self.slab_elems()
    }
    pub fn block_bytes(&self) -> usize {
        self.block_elems() * self.elem_bytes
    }
    /// Element offset of the K slab (`v = false`) or V slab of `layer` in `block`.
    pub fn slab_offset(&self, block: usize, layer: usize, v: bool) -> usize {
        block * self.block_elems() + (layer * 2 + v as usize) * self.slab_elems()
    }
    /// Blocks that fit in `bytes` for a model with this per-block geometry.
    pub fn blocks_for_bytes(bytes: usize, per_block_bytes: usize) -> usize {
        bytes / per_block_bytes.max(1)
    }
}

/// KV memory on the host (the CPU backend's pool).
pub struct CpuKvPool {
    pub layout: KvLayout,
    /// `layout.num_blocks * layout.block_elems()` f32 values.
    pub data: HostMemory,
}

/// Zeroed f32 memory in an anonymous mapping that asks for transparent huge pages.
///
/// Attention reads a batch's KV blocks from all over the pool every step; with 4 KiB
/// pages each block slab costs TLB misses, which are dear in a virtual machine
/// (nested page walks). 2 MiB pages cut batch-16 decode attention by ~20% on the
/// 2-core CI machine. Falls back to a heap vector where the mapping fails.
pub enum HostMemory {
    Mapped(memmap2::MmapMut),
    Heap(Vec<f32>),
}

impl HostMemory {
    pub fn zeroed(len: usize) -> HostMemory {
        let bytes = len * std::mem::size_of::<f32>();
        match memmap2::MmapMut::map_anon(bytes) {
            Ok(map) if bytes > 0 => {
                // Advice only: where THP is off the mapping still works.
                let _ = map.advise(memmap2::Advice::HugePage);
                HostMemory::Mapped(map)
            }
            _ => HostMemory::Heap(vec![0.0; len]),
        }
    }
}

impl std::ops::Deref for HostMemory {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // A page-aligned mapping of a multiple of 4 bytes.
            HostMemory::Mapped(m) => bytemuck::cast_slice(&m[..]),
            HostMemory::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for HostMemory {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            HostMemory::Mapped(m) => bytemuck::cast_slice_mut(&mut m[..]),
            HostMemory::Heap(v) => v,
        }
    }
}

impl CpuKvPool {
    /// Allocates the pool and touches every page of it: the memory is the
    /// `--kv-cache-mb` budget the server holds anyway, and untouched (lazily
    /// zeroed) pages would otherwise fault in during the first requests' prefill
    /// and KV transfers — a one-sided NIXL write into fresh pages ran at a fifth
    /// of its warm speed.
    pub fn new(layout: KvLayout) -> Self {
        let mut data = HostMemory::zeroed(layout.num_blocks * layout.block_elems());
        const PAGE_ELEMS: usize = 4096 / std::mem::size_of::<f32>();
        for i in (0..data.len()).step_by(PAGE_ELEMS) {
            // black_box: a store the compiler cannot drop as a no-op.
            data[i] = std::hint::black_box(0.0);
        }
        CpuKvPool { data, layout }
    }
    fn block_range(&self, block: BlockId) -> Option<std::ops::Range<usize>> {
        let b = block.0 as usize;
        (b < self.layout.num_blocks).then(|| {
            let n = self.layout.block_elems();
            b * n..(b + 1) * n
        })
    }
    /// The raw bytes of one block (what a transport sends).
    pub fn block_bytes(&self, block: BlockId) -> Option<&[u8]> {
        self.block_range(block)
            .map(|r| bytemuck::cast_slice(&self.data[r]))
    }
    /// Mutable raw bytes of one block (what a transport writes into).
    pub fn block_bytes_mut(&mut self, block: BlockId) -> Option<&mut [u8]> {
        self.block_range(block)
            .map(|r| bytemuck::cast_slice_mut(&mut self.data[r]))
    }
    /// Address and length of a block, for transports that register memory.
    pub fn block_region(&self, block: BlockId) -> Option<(usize, usize)> {
        self.block_bytes(block)
            .map(|b| (b.as_ptr() as usize, b.len()))
    }
}
