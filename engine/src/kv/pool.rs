//! KV cache memory layout, shared by every backend, and the CPU pool.
//!
//! Layout (one contiguous region per block, so that a transport moves one block
//! with one descriptor):
//! `pool[num_blocks][num_layers][2 (K, V)][block_size][num_kv_heads][head_dim]`.
//! Within a block, layer `l`'s keys for token slot `s` and kv head `g` start at
//! `((l * 2 + 0) * block_size + s) * kv_dim + g * head_dim` (values: `+ block_size *
//! kv_dim`). Elements are [`KvDtype`]: f16 (default) or f32 on the CPU, bf16
//! on CUDA; the dtype is part of the layout, so two pools exchange blocks only
//! when they store the same type.

use crate::BlockId;

/// The element type of a KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
        }
    }
    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Option<KvDtype> {
        [KvDtype::F32, KvDtype::F16, KvDtype::Bf16]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Geometry of a KV pool. Two engines can exchange blocks iff their layouts match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvLayout {
    pub num_blocks: usize,
    pub num_layers: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
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
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        self.dtype.bytes()
    }
    pub fn block_bytes(&self) -> usize {
        self.block_elems() * self.elem_bytes()
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
    /// `layout.num_blocks * layout.block_bytes()` bytes of `layout.dtype`
    /// elements; typed views: [`CpuKvPool::elems`] / [`CpuKvPool::elems_mut`].
    data: HostMemory,
}

/// A type KV elements are stored as on the CPU (f32 or f16): converted from f32
/// when stored, widened to f32 (exactly) when read.
pub trait KvElem: bytemuck::Pod + Send + Sync {
    const DTYPE: KvDtype;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    const DTYPE: KvDtype = KvDtype::F32;
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    const DTYPE: KvDtype = KvDtype::F16;
    /// Round to nearest even (IEEE; what F16C's `vcvtps2ph` with mode 0 does).
    #[inline(always)]
    fn from_f32(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Zeroed memory in an anonymous mapping that asks for transparent huge pages.
///
/// Attention reads a batch's KV blocks from all over the pool every step; with 4 KiB
/// pages each block slab costs TLB misses, which are dear in a virtual machine
/// (nested page walks). 2 MiB pages cut batch-16 decode attention by ~20% on the
/// 2-core CI machine. Falls back to a heap vector where the mapping fails.
enum HostMemory {
    Mapped(memmap2::MmapMut),
    /// u32 words, so that f32 views are aligned.
    Heap(Vec<u32>),
}

impl HostMemory {
    fn zeroed(bytes: usize) -> HostMemory {
        match memmap2::MmapMut::map_anon(bytes) {
            Ok(map) if bytes > 0 => {
                // Advice only: where THP is off the mapping still works.
                let _ = map.advise(memmap2::Advice::HugePage);
                HostMemory::Mapped(map)
            }
            _ => HostMemory::Heap(vec![0; bytes.div_ceil(4)]),
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            HostMemory::Mapped(m) => m,
            HostMemory::Heap(v) => bytemuck::cast_slice(v),
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            HostMemory::Mapped(m) => m,
            HostMemory::Heap(v) => bytemuck::cast_slice_mut(v),
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
        let len = layout.num_blocks * layout.block_bytes();
        let mut data = HostMemory::zeroed(len);
        let bytes = &mut data.bytes_mut()[..len];
        for i in (0..len).step_by(4096) {
            // black_box: a store the compiler cannot drop as a no-op.
            bytes[i] = std::hint::black_box(0);
        }
        CpuKvPool { data, layout }
    }
    /// The whole pool as elements of type `E`; `None` unless `E` is the pool's
    /// dtype.
    pub fn elems<E: KvElem>(&self) -> Option<&[E]> {
        let len = self.layout.num_blocks * self.layout.block_bytes();
        (E::DTYPE == self.layout.dtype).then(|| bytemuck::cast_slice(&self.data.bytes()[..len]))
    }
    /// Mutable [`CpuKvPool::elems`].
    pub fn elems_mut<E: KvElem>(&mut self) -> Option<&mut [E]> {
        let len = self.layout.num_blocks * self.layout.block_bytes();
        (E::DTYPE == self.layout.dtype)
            .then(|| bytemuck::cast_slice_mut(&mut self.data.bytes_mut()[..len]))
    }
    fn block_range(&self, block: BlockId) -> Option<std::ops::Range<usize>> {
        let b = block.0 as usize;
        (b < self.layout.num_blocks).then(|| {
            let n = self.layout.block_bytes();
            b * n..(b + 1) * n
        })
    }
    /// The raw bytes of one block (what a transport sends).
    pub fn block_bytes(&self, block: BlockId) -> Option<&[u8]> {
        self.block_range(block).map(|r| &self.data.bytes()[r])
    }
    /// Mutable raw bytes of one block (what a transport writes into).
    pub fn block_bytes_mut(&mut self, block: BlockId) -> Option<&mut [u8]> {
        self.block_range(block)
            .map(|r| &mut self.data.bytes_mut()[r])
    }
    /// Address and length of a block, for transports that register memory.
    pub fn block_region(&self, block: BlockId) -> Option<(usize, usize)> {
        self.block_bytes(block)
            .map(|b| (b.as_ptr() as usize, b.len()))
    }
}
