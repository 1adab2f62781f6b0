//! The compute backend abstraction: the transformer forward (`model`) is written
//! once against [`Backend`]; the CPU backend (`cpu`) and the CUDA backend
//! (`cuda`, feature `cuda`) implement it.
//!
//! A backend owns its buffers (`Buf`, f32 activations, row-major `[rows][dim]`),
//! its resident weights (`Matrix`, `Vector`) and its KV pool (`Kv`). All shapes are
//! passed explicitly; ops never allocate except `alloc`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::kv::pool::{KvDtype, KvLayout};
use crate::quant::QMatrix;
use crate::sampling::device::{DevicePick, Picked};
use crate::{BlockId, Result};

/// One sequence's slice of a batched forward, as attention needs it.
#[derive(Clone, Debug)]
pub struct AttnSeq {
    /// First row of this sequence's tokens in the batch.
    pub row_start: usize,
    /// Tokens computed this step.
    pub len: usize,
    /// Absolute position of the first of them (= tokens already in the KV cache).
    pub pos_start: usize,
    /// Block table covering positions `0 .. pos_start + len`.
    pub block_table: Vec<BlockId>,
}

/// Host-side description of one forward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardBatch {
    /// `[rows]` token ids.
    pub tokens: Vec<u32>,
    /// `[rows]` absolute positions.
    pub positions: Vec<u32>,
    pub seqs: Vec<AttnSeq>,
    /// Rows whose logits are wanted, in output order.
    pub logits_rows: Vec<usize>,
}

impl ForwardBatch {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
    /// KV slot (block * block_size + offset) of every row.
    pub fn kv_slots(&self, block_size: usize) -> Vec<usize> {
        let mut slots = vec![0; self.rows()];
        for s in &self.seqs {
            for i in 0..s.len {
                let pos = s.pos_start + i;
                slots[s.row_start + i] =
                    s.block_table[pos / block_size].0 as usize * block_size + pos % block_size;
            }
        }
        slots
    }
}

/// Where a KV block lives, for transports that register memory (NIXL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Host,
    Cuda(u32),
}

pub trait Backend: Send {
    type Buf: Send;
    type Matrix: Send + Sync;
    type Vector: Send + Sync;
    type Kv: Send;
    /// Rotary-embedding angles for one batch's positions (built once per forward,
    /// used by every layer).
    type Rope: Send;
    /// The most rows whose MLP runs at once. A longer batch (a prefill chunk) runs
    /// its MLP in slices of this many rows, so that its largest activations
    /// (gate and up, rows × intermediate each) stay small where memory is tight
    /// (the CPU). Every matmul computes each row independently with the same
    /// arithmetic, so slicing changes no result.
    const MLP_ROWS: usize = usize::MAX;

    fn name(&self) -> String;
    /// The element type of the KV pools this backend allocates.
    fn kv_dtype(&self) -> KvDtype;

    fn upload_matrix(&self, m: &QMatrix) -> Result<Self::Matrix>;
    /// All of a model's matrices at once, in order (a backend may lay them out
    /// together); by default one [`Self::upload_matrix`] each.
    fn upload_matrices(&self, ms: &[&QMatrix]) -> Result<Vec<Self::Matrix>> {
        ms.iter().map(|m| self.upload_matrix(m)).collect()
    }
    fn upload_vector(&self, v: &[f32]) -> Result<Self::Vector>;
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::Kv>;
    /// Zeroed `[len]` buffer.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// A `[len]` buffer for an output that is then written whole (its contents
    /// until then are unspecified). `spare` is a host vector the caller is done
    /// with (a previous step's logits): a backend whose buffers are host vectors
    /// reuses it rather than zeroing fresh memory. By default [`Self::alloc`].
    fn alloc_output(&self, len: usize, spare: Option<Vec<f32>>) -> Self::Buf {
        drop(spare);
        self.alloc(len)
    }
    /// A buffer holding `values` (converted to the backend's activation type).
    fn buf_from_host(&self, values: &[f32]) -> Self::Buf;

    /// `out[rows][dim]` = rows of `table` for `tokens`.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32], out: &mut Self::Buf);
    /// `out = rmsnorm(x) * w` row-wise over `dim = w.len()`.
    fn rms_norm(&self, x: &Self::Buf, w: &Self::Vector, eps: f32, out: &mut Self::Buf);
    /// `residual += x; out = rmsnorm(residual) * w` (fused residual add).
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    );
    /// In place RMSNorm of each `head_dim` slice (Qwen3 q/k norm).
    fn head_rms_norm(&self, x: &mut Self::Buf, w: &Self::Vector, eps: f32);
    /// `out[n][w.rows] = x[n][w.cols] · wᵀ`.
    fn matmul(&self, x: &Self::Buf, w: &Self::Matrix, n: usize, out: &mut Self::Buf);
    /// Several matrices over the same input in one call (fused Q/K/V, gate/up):
    /// `outs[i] = x · ws[i]ᵀ`.
    fn matmul_many(
        &self,
        x: &Self::Buf,
        ws: &[&Self::Matrix],
        n: usize,
        outs: &mut [&mut Self::Buf],
    ) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(x, w, n, out);
        }
    }
    /// Runs `f` where the backend's kernels are cheapest to launch from (the CPU
    /// backend: inside its thread pool).
    fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }
    /// `x[r][:] += b` for every row.
    fn add_bias(&self, x: &mut Self::Buf, b: &Self::Vector);
    /// `x += y`.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf);
    /// cos/sin of every (position, frequency) pair of the batch.
    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f32) -> Self::Rope;
    /// Rotary embedding (HF rotate-half convention) on `x[rows][n_heads * head_dim]`.
    fn rope(&self, x: &mut Self::Buf, table: &Self::Rope, head_dim: usize);
    /// Writes this step's K and V rows (`[rows][kv_dim]`) into their slots.
    fn store_kv(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        slots: &[usize],
    );
    /// Causal attention of `q[rows][n_heads*head_dim]` over each sequence's cached
    /// and new keys; `out` like `q`.
    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        seqs: &[AttnSeq],
        n_heads: usize,
        out: &mut Self::Buf,
    );
    /// `dst[dst_row + i][dim] = src[src_row + i][dim]` for `i < count`.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: &Self::Buf,
        src_row: usize,
        dst: &mut Self::Buf,
        dst_row: usize,
        count: usize,
        dim: usize,
    );
    /// `out[k][dim] = x[rows[k]][dim]`.
    fn gather_rows(&self, x: &Self::Buf, rows: &[usize], dim: usize, out: &mut Self::Buf);
    /// The buffer as host memory (the CPU backend hands its vector over, no copy).
    fn to_host(&self, x: Self::Buf) -> Vec<f32>;
    /// Picks the token of each `logits` row (`[rows][vocab]`) that has a
    /// `Some` pick, where the logits are ([`crate::sampling::device`]); `None`
    /// when this backend samples on the host (the CPU: its logits are host
    /// memory already). Rows with a `None` pick get `None` in the result.
    fn pick(
        &self,
        _logits: &Self::Buf,
        _vocab: usize,
        _picks: &[Option<DevicePick>],
    ) -> Option<Vec<Option<Picked>>> {
        None
    }
    /// The first device error since the backend was made, if any. Ops cannot
    /// return errors (a device queues them); a backend that can fail (CUDA)
    /// records the first failure, skips later ops, and the model runner fails
    /// the step with it.
    fn take_fault(&self) -> Option<String> {
        None
    }

    // KV block access for transports.
    fn kv_block_region(&self, kv: &Self::Kv, block: BlockId) -> Option<(usize, usize, MemKind)>;
    fn read_kv_block(&self, kv: &Self::Kv, block: BlockId, out: &mut [u8]) -> Result<()>;
    fn write_kv_block(&self, kv: &mut Self::Kv, block: BlockId, data: &[u8]) -> Result<()>;
}
