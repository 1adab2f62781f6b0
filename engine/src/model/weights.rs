//! Host-side model weights, and the `TensorSource` trait that GGUF files and
//! safetensors directories implement so that weights load the same way from both.

use crate::quant::QMatrix;
use crate::Result;

/// Where tensors come from. Names are the source's own (see `TensorNaming`).
pub trait TensorSource {
    /// 2-D tensor (rows = output features).
    fn matrix(&self, name: &str) -> Result<QMatrix>;
    /// Any tensor as f32 values (norms, biases).
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
    fn contains(&self, name: &str) -> bool;
    fn naming(&self) -> TensorNaming;
}

/// Tensor naming scheme of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorNaming {
    /// `model.layers.N.self_attn.q_proj.weight`, ...
    HuggingFace,
    /// `blk.N.attn_q.weight`, ... (q/k rows permuted for llama by the converter).
    Gguf,
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    pub wo: QMatrix,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QMatrix,
    pub w_up: QMatrix,
    pub w_down: QMatrix,
}

pub struct ModelWeights {
    /// vocab × hidden
    pub embed: QMatrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// vocab × hidden; `None` when tied to `embed`.
    pub lm_head: Option<QMatrix>,
}
