//! The transformer forward pass, written once over the [`Backend`] trait, for the
//! pre-norm RMSNorm / RoPE / GQA / SwiGLU family (Llama, Qwen2, Qwen3).
//!
//! [`Model`] owns the backend, the resident weights and the KV pool; the engine talks
//! to it through the object-safe [`ModelRunner`] so that it need not be generic.

pub mod weights;

pub use weights::{LayerWeights, ModelWeights, TensorNaming, TensorSource};

use crate::backend::{Backend, ForwardBatch, MemKind};
use crate::config::ModelConfig;
use crate::kv::pool::{KvDtype, KvLayout};
use crate::quant::QMatrix;
use crate::sampling::device::{DevicePick, Picked};
use crate::{BlockId, EngineError, Result};

/// What the engine needs from a model, independent of the backend.
pub trait ModelRunner: Send {
    fn config(&self) -> &ModelConfig;
    fn kv_layout(&self) -> KvLayout;
    fn backend_name(&self) -> String;
    /// Runs the batch; returns `[logits_rows.len()][vocab]` logits on the host.
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>>;
    /// Runs the batch, letting the device pick the token of each logits row with
    /// a `Some` in `picks` (one per `logits_rows` entry); the other rows' logits
    /// come to the host. By default every row comes to the host.
    fn forward_picking(
        &mut self,
        batch: &ForwardBatch,
        picks: &[Option<DevicePick>],
    ) -> Result<Forwarded> {
        Ok(Forwarded {
            logits: self.forward(batch)?,
            picked: vec![None; picks.len()],
        })
    }
    /// Hands back a step's host logits once they are sampled, for the next
    /// step's logits to reuse (see [`Backend::alloc_output`]). By default
    /// dropped.
    fn recycle_logits(&mut self, logits: Vec<f32>) {
        drop(logits);
    }
    fn kv_block_region(&self, block: BlockId) -> Option<(usize, usize, MemKind)>;
    fn read_kv_block(&self, block: BlockId, out: &mut [u8]) -> Result<()>;
    fn write_kv_block(&mut self, block: BlockId, data: &[u8]) -> Result<()>;
}

/// A forward pass's result with device picks: `picked[k]` for logits row `k`,
/// and `[rows without a pick][vocab]` host logits, in logits-row order.
#[derive(Clone, Debug, Default)]
pub struct Forwarded {
    pub logits: Vec<f32>,
    pub picked: Vec<Option<Picked>>,
}

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Matrix,
    wk: B::Matrix,
    wv: B::Matrix,
    wo: B::Matrix,
    bq: Option<B::Vector>,
    bk: Option<B::Vector>,
    bv: Option<B::Vector>,
    q_norm: Option<B::Vector>,
    k_norm: Option<B::Vector>,
    ffn_norm: B::Vector,
    w_gate: B::Matrix,
    w_up: B::Matrix,
    w_down: B::Matrix,
}

pub struct Model<B: Backend> {
    config: ModelConfig,
    backend: B,
    embed: B::Matrix,
    layers: Vec<Layer<B>>,
    final_norm: B::Vector,
    lm_head: Option<B::Matrix>,
    kv: B::Kv,
    kv_layout: KvLayout,
    /// The last step's logits, handed back by the engine ([`ModelRunner::recycle_logits`]).
    spare_logits: Option<Vec<f32>>,
}

impl<B: Backend> Model<B> {
    /// Uploads the weights and allocates a KV pool of `num_blocks` blocks.
    pub fn new(
        backend: B,
        config: ModelConfig,
        weights: &ModelWeights,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        // Every matrix in one upload (layer by layer, then the embedding and the
        // lm_head), handed back out in the same order.
        let mut all: Vec<&QMatrix> = Vec::with_capacity(7 * weights.layers.len() + 2);
        for l in &weights.layers {
            all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        all.push(&weights.embed);
        all.extend(weights.lm_head.as_ref());
        let mut uploaded = backend.upload_matrices(&all)?.into_iter();
        let mut up_m = || {
            uploaded
                .next()
                .ok_or_else(|| EngineError::Device("the backend returned too few matrices".into()))
        };
        let up_v = |v: &Vec<f32>| backend.upload_vector(v);
        let opt_v = |v: &Option<Vec<f32>>| v.as_ref().map(up_v).transpose();
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            // In the order of `all` (tuples evaluate left to right).
            let (wq, wk, wv, wo) = (up_m()?, up_m()?, up_m()?, up_m()?);
            let (w_gate, w_up, w_down) = (up_m()?, up_m()?, up_m()?);
            layers.push(Layer {
                attn_norm: up_v(&l.attn_norm)?,
                wq,
                wk,
                wv,
                wo,
                bq: opt_v(&l.bq)?,
                bk: opt_v(&l.bk)?,
                bv: opt_v(&l.bv)?,
                q_norm: opt_v(&l.q_norm)?,
                k_norm: opt_v(&l.k_norm)?,
                ffn_norm: up_v(&l.ffn_norm)?,
                w_gate,
                w_up,
                w_down,
            });
        }
        let embed = up_m()?;
        let lm_head = match weights.lm_head {
            Some(_) => Some(up_m()?),
            None => None,
        };
        let kv_layout = Self::layout_for(&config, block_size, num_blocks, backend.kv_dtype());
        Ok(Model {
            embed,
            final_norm: up_v(&weights.final_norm)?,
            lm_head,
            kv: backend.alloc_kv(kv_layout)?,
            layers,
            kv_layout,
            spare_logits: None,
            backend,
            config,
        })
    }

    /// The KV geometry of `config`, elements of `dtype`.
    pub fn layout_for(
        config: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> KvLayout {
        KvLayout {
            num_blocks,
            num_layers: config.num_layers,
            block_size,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            dtype,
        }
    }

    fn check_batch(&self, batch: &ForwardBatch) -> Result<()> {
        let rows = batch.rows();
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if batch.positions.len() != rows {
            return bad("positions and tokens differ in length".into());
        }
        if let Some(&t) = batch
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return bad(format!(
                "token id {t} is outside the vocabulary ({})",
                self.config.vocab_size
            ));
        }
        if let Some(&r) = batch.logits_rows.iter().find(|&&r| r >= rows) {
            return bad(format!("logits row {r} out of range"));
        }
        let bs = self.kv_layout.block_size;
        for s in &batch.seqs {
            let end = s.pos_start + s.len;
            if s.row_start + s.len > rows || s.block_table.len() * bs < end {
                return bad(format!(
                    "sequence slice {s:?} does not fit the batch or its blocks"
                ));
            }
            if let Some(b) = s
                .block_table
                .iter()
                .find(|b| b.0 as usize >= self.kv_layout.num_blocks)
            {
                return bad(format!("block {} out of range", b.0));
            }
        }
        Ok(())
    }
}

/// `out = down(silu(gate(x)) * up(x))` over the `n` rows of `x`.
#[allow(clippy::too_many_arguments)]
fn mlp<B: Backend>(
    be: &B,
    l: &Layer<B>,
    x: &B::Buf,
    n: usize,
    gate: &mut B::Buf,
    up: &mut B::Buf,
    out: &mut B::Buf,
) {
    be.matmul_many(x, &[&l.w_gate, &l.w_up], n, &mut [&mut *gate, &mut *up]);
    be.silu_mul(gate, up);
    be.matmul(gate, &l.w_down, n, out);
}

/// The MLP's buffers for one forward, reused by every layer: gate and up for the
/// whole batch when it has at most `B::MLP_ROWS` rows; else the buffers of one
/// slice of that many rows, and of the shorter last slice if there is one.
enum MlpScratch<B: Backend> {
    Whole {
        rows: usize,
        gate: B::Buf,
        up: B::Buf,
    },
    Sliced {
        rows: usize,
        full: MlpSlice<B>,
        last: Option<MlpSlice<B>>,
    },
}

/// One MLP slice's input, gate, up and output buffers, for `rows` rows.
struct MlpSlice<B: Backend> {
    rows: usize,
    hidden: usize,
    x: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    out: B::Buf,
}

impl<B: Backend> MlpSlice<B> {
    fn new(be: &B, rows: usize, hidden: usize, ff: usize) -> Self {
        MlpSlice {
            rows,
            hidden,
            x: be.alloc(rows * hidden),
            gate: be.alloc(rows * ff),
            up: be.alloc(rows * ff),
            out: be.alloc(rows * hidden),
        }
    }

    /// The MLP of rows `first .. first + self.rows` of `x` into the same rows of
    /// `out` (`[rows][hidden]` both).
    fn run(&mut self, be: &B, l: &Layer<B>, x: &B::Buf, first: usize, out: &mut B::Buf) {
        let (n, hidden) = (self.rows, self.hidden);
        be.copy_rows(x, first, &mut self.x, 0, n, hidden);
        mlp(
            be,
            l,
            &self.x,
            n,
            &mut self.gate,
            &mut self.up,
            &mut self.out,
        );
        be.copy_rows(&self.out, 0, out, first, n, hidden);
    }
}

impl<B: Backend> MlpScratch<B> {
    fn new(be: &B, n: usize, hidden: usize, ff: usize) -> Self {
        if n <= B::MLP_ROWS {
            return MlpScratch::Whole {
                rows: n,
                gate: be.alloc(n * ff),
                up: be.alloc(n * ff),
            };
        }
        let tail = n % B::MLP_ROWS;
        MlpScratch::Sliced {
            rows: n,
            full: MlpSlice::new(be, B::MLP_ROWS, hidden, ff),
            last: (tail > 0).then(|| MlpSlice::new(be, tail, hidden, ff)),
        }
    }

    /// The MLP over all rows of `x` into `out`.
    fn run(&mut self, be: &B, l: &Layer<B>, x: &B::Buf, out: &mut B::Buf) {
        match self {
            MlpScratch::Whole { rows, gate, up } => mlp(be, l, x, *rows, gate, up, out),
            MlpScratch::Sliced { rows, full, last } => {
                for first in (0..*rows).step_by(B::MLP_ROWS) {
                    // Only the last slice can be shorter, and `last` is sized for it.
                    let slice = match last {
                        Some(s) if *rows - first < B::MLP_ROWS => s,
                        _ => &mut *full,
                    };
                    slice.run(be, l, x, first, out);
                }
            }
        }
    }
}

impl<B: Backend> Model<B> {
    /// The forward pass proper; the batch has been validated. The logits of
    /// `batch.logits_rows` stay on the device (`None` when there are none).
    fn forward_checked(&mut self, batch: &ForwardBatch) -> Option<B::Buf> {
        let c = &self.config;
        let be = &self.backend;
        let n = batch.rows();
        let (h, q_dim, kv_dim, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let eps = c.rms_norm_eps;
        let slots = batch.kv_slots(self.kv_layout.block_size);
        let rope = be.rope_table(&batch.positions, c.head_dim, c.rope_theta);

        // Activations: [n][h] residual stream, [n][h] normed input.
        let mut resid = be.alloc(n * h);
        be.embed(&self.embed, &batch.tokens, &mut resid);
        let mut normed = be.alloc(n * h);
        let mut q = be.alloc(n * q_dim);
        let mut k = be.alloc(n * kv_dim);
        let mut v = be.alloc(n * kv_dim);
        let mut attn = be.alloc(n * q_dim);
        let mut proj = be.alloc(n * h);
        let mut mlp = MlpScratch::new(be, n, h, ff);

        for (li, l) in self.layers.iter().enumerate() {
            if li == 0 {
                be.rms_norm(&resid, &l.attn_norm, eps, &mut normed);
            } else {
                // The previous layer's MLP output is in `proj`.
                be.add_rms_norm(&mut resid, &proj, &l.attn_norm, eps, &mut normed);
            }
            be.matmul_many(
                &normed,
                &[&l.wq, &l.wk, &l.wv],
                n,
                &mut [&mut q, &mut k, &mut v],
            );
            if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                be.add_bias(&mut q, bq);
                be.add_bias(&mut k, bk);
                be.add_bias(&mut v, bv);
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                be.head_rms_norm(&mut q, qn, eps);
                be.head_rms_norm(&mut k, kn, eps);
            }
            be.rope(&mut q, &rope, c.head_dim);
            be.rope(&mut k, &rope, c.head_dim);
            be.store_kv(&mut self.kv, li, &k, &v, &slots);
            be.attention(&q, &self.kv, li, &batch.seqs, c.num_heads, &mut attn);
            be.matmul(&attn, &l.wo, n, &mut proj);
            be.add_rms_norm(&mut resid, &proj, &l.ffn_norm, eps, &mut normed);
            mlp.run(be, l, &normed, &mut proj);
        }
        be.add(&mut resid, &proj);

        // Only the rows that need logits go through the final norm and lm_head.
        let m = batch.logits_rows.len();
        if m == 0 {
            return None;
        }
        let mut last = be.alloc(m * h);
        be.gather_rows(&resid, &batch.logits_rows, h, &mut last);
        let mut last_normed = be.alloc(m * h);
        be.rms_norm(&last, &self.final_norm, eps, &mut last_normed);
        // Written whole by the lm_head.
        let mut logits = be.alloc_output(m * c.vocab_size, self.spare_logits.take());
        be.matmul(
            &last_normed,
            self.lm_head.as_ref().unwrap_or(&self.embed),
            m,
            &mut logits,
        );
        Some(logits)
    }

    /// Device picks where the backend can, host logits for the other rows.
    fn pick_or_fetch(&self, logits: B::Buf, picks: &[Option<DevicePick>]) -> Forwarded {
        let be = &self.backend;
        let vocab = self.config.vocab_size;
        let picked = picks
            .iter()
            .any(Option::is_some)
            .then(|| be.pick(&logits, vocab, picks))
            .flatten();
        let Some(picked) = picked else {
            return Forwarded {
                logits: be.to_host(logits),
                picked: vec![None; picks.len()],
            };
        };
        let host_rows: Vec<usize> = (0..picks.len()).filter(|&k| picked[k].is_none()).collect();
        let logits = if host_rows.is_empty() {
            Vec::new()
        } else if host_rows.len() == picks.len() {
            be.to_host(logits)
        } else {
            let mut rows = be.alloc(host_rows.len() * vocab);
            be.gather_rows(&logits, &host_rows, vocab, &mut rows);
            be.to_host(rows)
        };
        Forwarded { logits, picked }
    }

    /// `value`, unless the backend recorded a device fault during the step.
    fn fault_or<T>(&self, value: T) -> Result<T> {
        match self.backend.take_fault() {
            Some(fault) => Err(EngineError::Device(fault)),
            None => Ok(value),
        }
    }
}

impl<B: Backend> ModelRunner for Model<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn kv_layout(&self) -> KvLayout {
        self.kv_layout
    }
    fn backend_name(&self) -> String {
        self.backend.name()
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>> {
        self.check_batch(batch)?;
        let logits = B::run(|| {
            let logits = self.forward_checked(batch);
            logits.map(|l| self.backend.to_host(l)).unwrap_or_default()
        });
        self.fault_or(logits)
    }

    fn forward_picking(
        &mut self,
        batch: &ForwardBatch,
        picks: &[Option<DevicePick>],
    ) -> Result<Forwarded> {
        self.check_batch(batch)?;
        if picks.len() != batch.logits_rows.len() {
            return Err(EngineError::InvalidRequest(format!(
                "{} picks for {} logits rows",
                picks.len(),
                batch.logits_rows.len()
            )));
        }
        let out = B::run(|| match self.forward_checked(batch) {
            Some(logits) => self.pick_or_fetch(logits, picks),
            None => Forwarded::default(),
        });
        self.fault_or(out)
    }

    fn recycle_logits(&mut self, logits: Vec<f32>) {
        self.spare_logits = Some(logits);
    }
    fn kv_block_region(&self, block: BlockId) -> Option<(usize, usize, MemKind)> {
        self.backend.kv_block_region(&self.kv, block)
    }
    fn read_kv_block(&self, block: BlockId, out: &mut [u8]) -> Result<()> {
        self.backend.read_kv_block(&self.kv, block, out)
    }
    fn write_kv_block(&mut self, block: BlockId, data: &[u8]) -> Result<()> {
        self.backend.write_kv_block(&mut self.kv, block, data)
    }
}
