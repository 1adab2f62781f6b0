//! The CPU backend: activations are `Vec<f32>`, weights stay in their stored type
//! (`QMatrix`, quantized kernels in `quant`), the KV pool is host memory
//! (`CpuKvPool`) of f16 (the engine's default: half the bytes attention reads
//! per step, as llama.cpp stores it) or f32 (exact; what the f64-reference
//! tests use). Row-parallel ops use rayon.
//!
//! Weights of the types with an interleaved layout (Q4_0, Q4_1, Q8_0) are copied
//! into it once at upload (`QMatrix::interleaved`: eight rows per group, the same
//! bytes permuted) and the file pages they came from are released; every other
//! type is used in place from the mapped file.

pub mod attention;
mod kv_lines;
pub mod ops;
pub mod simd;
pub mod vocab;
mod warm;

use rayon::prelude::*;

use super::{AttnSeq, Backend, MemKind};
use crate::kv::pool::{CpuKvPool, KvDtype, KvElem, KvLayout};
use crate::quant::QMatrix;
use crate::{BlockId, EngineError, Result};

/// The CPU backend, with the element type of the KV pools it allocates.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    kv_dtype: KvDtype,
}

impl CpuBackend {
    /// A backend whose KV pools store `kv_dtype` (f32 or f16).
    pub fn new(kv_dtype: KvDtype) -> Result<CpuBackend> {
        match kv_dtype {
            KvDtype::F32 | KvDtype::F16 => Ok(CpuBackend { kv_dtype }),
            other => Err(EngineError::InvalidConfig(format!(
                "the CPU stores the KV cache as f16 or f32, not {other}"
            ))),
        }
    }
}

/// f32 KV: exact, what the reference tests compare against.
impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend {
            kv_dtype: KvDtype::F32,
        }
    }
}

/// Rows per rayon task for cheap row-wise ops (keeps task overhead negligible).
const ROWS_PER_TASK: usize = 16;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Matrix = QMatrix;
    type Vector = Vec<f32>;
    type Kv = CpuKvPool;
    /// `(cos, sin)`, each `[rows][head_dim / 2]`.
    type Rope = (Vec<f32>, Vec<f32>);
    /// A 512-token prefill chunk's gate/up would take 2 × 3 MiB on SmolLM2; in
    /// 128-row slices they take 2 × 0.75 MiB, at no measurable prefill cost
    /// (BENCHMARKS.md, prefill RSS).
    const MLP_ROWS: usize = 128;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    fn upload_matrix(&self, m: &QMatrix) -> Result<QMatrix> {
        // The interleaved copy releases the mapped rows' pages as it goes.
        Ok(m.interleaved().unwrap_or_else(|| m.clone()))
    }
    fn upload_matrices(&self, ms: &[&QMatrix]) -> Result<Vec<QMatrix>> {
        // One arena on huge pages for all the interleaved copies.
        QMatrix::interleaved_all(ms)
    }
    fn upload_vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }
    fn alloc_kv(&self, layout: KvLayout) -> Result<CpuKvPool> {
        CpuBackend::new(layout.dtype)?;
        Ok(CpuKvPool::new(layout))
    }
    fn alloc(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    /// Reuses `spare` when it has the room: zeroing a batch-16 step's 3 MB of
    /// logits took ~1.4% of the step's CPU time, on one thread.
    fn alloc_output(&self, len: usize, spare: Option<Vec<f32>>) -> Vec<f32> {
        match spare {
            Some(mut v) if v.capacity() >= len => {
                v.resize(len, 0.0);
                v
            }
            _ => self.alloc(len),
        }
    }

    fn buf_from_host(&self, values: &[f32]) -> Vec<f32> {
        values.to_vec()
    }

    fn embed(&self, table: &QMatrix, tokens: &[u32], out: &mut Vec<f32>) {
        let dim = table.cols;
        for (row, &t) in out.chunks_exact_mut(dim).zip(tokens) {
            table.dequantize_row(t as usize, row);
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Vec<f32>, eps: f32, out: &mut Vec<f32>) {
        let dim = w.len();
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (or, xr) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                    ops::rms_norm_row(xr, w, eps, or);
                }
            });
    }

    fn add_rms_norm(
        &self,
        residual: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        let dim = w.len();
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(residual.par_chunks_mut(dim * ROWS_PER_TASK))
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .for_each(|((o, r), x)| {
                for ((or, rr), xr) in o
                    .chunks_exact_mut(dim)
                    .zip(r.chunks_exact_mut(dim))
                    .zip(x.chunks_exact(dim))
                {
                    for (a, b) in rr.iter_mut().zip(xr) {
                        *a += b;
                    }
                    ops::rms_norm_row(rr, w, eps, or);
                }
            });
    }

    fn head_rms_norm(&self, x: &mut Vec<f32>, w: &Vec<f32>, eps: f32) {
        let hd = w.len();
        let mut tmp = vec![0f32; hd];
        for head in x.chunks_exact_mut(hd) {
            ops::rms_norm_row(head, w, eps, &mut tmp);
            head.copy_from_slice(&tmp);
        }
    }

    fn matmul(&self, x: &Vec<f32>, w: &QMatrix, n: usize, out: &mut Vec<f32>) {
        w.matmul(x, n, out);
    }

    fn matmul_many(&self, x: &Vec<f32>, ws: &[&QMatrix], n: usize, outs: &mut [&mut Vec<f32>]) {
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        QMatrix::matmul_many(ws, x, n, &mut ys);
    }

    /// Runs on a rayon worker: parallel kernels launched from inside the pool skip
    /// the cross-thread injection (≈10 µs per call, ~200 calls per decode step),
    /// and the other workers are kept awake meanwhile (`warm`).
    fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        warm::run_warm(f)
    }

    fn add_bias(&self, x: &mut Vec<f32>, b: &Vec<f32>) {
        for row in x.chunks_exact_mut(b.len()) {
            for (a, bi) in row.iter_mut().zip(b) {
                *a += bi;
            }
        }
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>) {
        let avx2 = attention::has_avx2_fma();
        gate.par_chunks_mut(4096)
            .zip(up.par_chunks(4096))
            .for_each(|(g, u)| {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 and FMA were detected just above.
                    return unsafe { silu_mul_avx2(g, u) };
                }
                silu_mul_slice(g, u);
            });
    }

    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f32) -> Self::Rope {
        ops::rope_tables(positions, head_dim, theta)
    }

    fn rope(&self, x: &mut Vec<f32>, (cos, sin): &Self::Rope, head_dim: usize) {
        let half = head_dim / 2;
        let rows = cos.len() / half.max(1);
        if rows == 0 {
            return;
        }
        let dim = x.len() / rows;
        for (r, row) in x.chunks_exact_mut(dim).enumerate() {
            let (c, s) = (
                &cos[r * half..(r + 1) * half],
                &sin[r * half..(r + 1) * half],
            );
            for head in row.chunks_exact_mut(head_dim) {
                ops::rope_head(head, c, s);
            }
        }
    }

    fn store_kv(
        &self,
        kv: &mut CpuKvPool,
        layer: usize,
        k: &Vec<f32>,
        v: &Vec<f32>,
        slots: &[usize],
    ) {
        match kv.layout.dtype {
            KvDtype::F32 => store_rows::<f32>(kv, layer, k, v, slots),
            KvDtype::F16 => store_rows::<half::f16>(kv, layer, k, v, slots),
            KvDtype::Bf16 => unreachable!("alloc_kv refuses bf16"),
        }
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        kv: &CpuKvPool,
        layer: usize,
        seqs: &[AttnSeq],
        n_heads: usize,
        out: &mut Vec<f32>,
    ) {
        attention::paged_attention(q, kv, layer, seqs, n_heads, out);
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        src_row: usize,
        dst: &mut Vec<f32>,
        dst_row: usize,
        count: usize,
        dim: usize,
    ) {
        dst[dst_row * dim..(dst_row + count) * dim]
            .copy_from_slice(&src[src_row * dim..(src_row + count) * dim]);
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &[usize], dim: usize, out: &mut Vec<f32>) {
        for (k, &r) in rows.iter().enumerate() {
            out[k * dim..(k + 1) * dim].copy_from_slice(&x[r * dim..(r + 1) * dim]);
        }
    }

    fn to_host(&self, x: Vec<f32>) -> Vec<f32> {
        x
    }

    fn kv_block_region(&self, kv: &CpuKvPool, block: BlockId) -> Option<(usize, usize, MemKind)> {
        kv.block_region(block).map(|(a, n)| (a, n, MemKind::Host))
    }

    fn read_kv_block(&self, kv: &CpuKvPool, block: BlockId, out: &mut [u8]) -> Result<()> {
        let src = kv
            .block_bytes(block)
            .ok_or_else(|| EngineError::KvTransfer(format!("block {} out of range", block.0)))?;
        if src.len() != out.len() {
            return Err(EngineError::KvTransfer(format!(
                "block is {} bytes, buffer {}",
                src.len(),
                out.len()
            )));
        }
        out.copy_from_slice(src);
        Ok(())
    }

    fn write_kv_block(&self, kv: &mut CpuKvPool, block: BlockId, data: &[u8]) -> Result<()> {
        let dst = kv
            .block_bytes_mut(block)
            .ok_or_else(|| EngineError::KvTransfer(format!("block {} out of range", block.0)))?;
        if dst.len() != data.len() {
            return Err(EngineError::KvTransfer(format!(
                "block is {} bytes, data {}",
                dst.len(),
                data.len()
            )));
        }
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// Writes row r of `k` and `v` (`[rows][kv_dim]` f32) into token slot `slots[r]`
/// of `layer`, converted to the pool's element type.
fn store_rows<E: KvElem>(kv: &mut CpuKvPool, layer: usize, k: &[f32], v: &[f32], slots: &[usize]) {
    let l = kv.layout;
    let kv_dim = l.kv_dim();
    let data = kv.elems_mut::<E>().expect("the pool's dtype is E");
    for (r, &slot) in slots.iter().enumerate() {
        let (block, off) = (slot / l.block_size, slot % l.block_size);
        for (src, values) in [(k, false), (v, true)] {
            let o = l.slab_offset(block, layer, values) + off * kv_dim;
            convert_into(&src[r * kv_dim..(r + 1) * kv_dim], &mut data[o..o + kv_dim]);
        }
    }
}

/// `dst[i] = E::from_f32(src[i])` (for f16: round to nearest even, eight at a
/// time with F16C where the CPU has it — the same rounding as the scalar path).
fn convert_into<E: KvElem>(src: &[f32], dst: &mut [E]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(dst) = bytemuck::try_cast_slice_mut::<E, half::f16>(dst)
        .ok()
        .filter(|_| E::DTYPE == KvDtype::F16 && std::is_x86_feature_detected!("f16c"))
    {
        // SAFETY: F16C checked just above.
        unsafe { f32_to_f16_f16c(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = E::from_f32(*s);
    }
}

/// [`convert_into`] for f16 with F16C's `vcvtps2ph` (round to nearest even).
///
/// # Safety
/// The CPU must support AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [half::f16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements i..i + 8 lie within both slices.
        unsafe {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = half::f16::from_f32(src[j]);
    }
}

/// `g = silu(g) · u`, element by element.
#[inline(always)]
fn silu_mul_slice(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = ops::silu(*a) * b;
    }
}

/// [`silu_mul_slice`] compiled for AVX2 (8 lanes instead of SSE's 4). Element-wise
/// code without FMA contraction: bitwise the same results.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    silu_mul_slice(g, u)
}

/// Hands the heap's free pages back to the kernel (glibc `malloc_trim`): after a
/// model is loaded, the load's transient buffers (un-permuted q/k copies, parse
/// tables) sit freed but resident in the middle of the heap, where plain `free`
/// cannot return them. A no-op elsewhere.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory that is free in the allocator's
    // own arenas; it takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
