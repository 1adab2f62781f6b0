//! Host-side model weights, and the `TensorSource` trait that GGUF files and
//! safetensors directories implement so that weights load the same way from both.

use crate::config::{Architecture, ModelConfig};
use crate::quant::QMatrix;
use crate::{EngineError, Result};

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

/// Tensor names of layer `i` in each naming scheme.
struct Names {
    naming: TensorNaming,
}

impl Names {
    fn global(&self, what: &str) -> &'static str {
        match (self.naming, what) {
            (TensorNaming::HuggingFace, "embed") => "model.embed_tokens.weight",
            (TensorNaming::HuggingFace, "norm") => "model.norm.weight",
            (TensorNaming::HuggingFace, "lm_head") => "lm_head.weight",
            (TensorNaming::Gguf, "embed") => "token_embd.weight",
            (TensorNaming::Gguf, "norm") => "output_norm.weight",
            (TensorNaming::Gguf, "lm_head") => "output.weight",
            _ => unreachable!("unknown global tensor kind"),
        }
    }
    fn layer(&self, i: usize, what: &str) -> String {
        let (hf, gguf) = match what {
            "q" => ("self_attn.q_proj.weight", "attn_q.weight"),
            "k" => ("self_attn.k_proj.weight", "attn_k.weight"),
            "v" => ("self_attn.v_proj.weight", "attn_v.weight"),
            "o" => ("self_attn.o_proj.weight", "attn_output.weight"),
            "bq" => ("self_attn.q_proj.bias", "attn_q.bias"),
            "bk" => ("self_attn.k_proj.bias", "attn_k.bias"),
            "bv" => ("self_attn.v_proj.bias", "attn_v.bias"),
            "q_norm" => ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            "k_norm" => ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            "attn_norm" => ("input_layernorm.weight", "attn_norm.weight"),
            "ffn_norm" => ("post_attention_layernorm.weight", "ffn_norm.weight"),
            "gate" => ("mlp.gate_proj.weight", "ffn_gate.weight"),
            "up" => ("mlp.up_proj.weight", "ffn_up.weight"),
            "down" => ("mlp.down_proj.weight", "ffn_down.weight"),
            _ => unreachable!("unknown layer tensor kind"),
        };
        match self.naming {
            TensorNaming::HuggingFace => format!("model.layers.{i}.{hf}"),
            TensorNaming::Gguf => format!("blk.{i}.{gguf}"),
        }
    }
}

/// Undoes llama.cpp's q/k row permutation for llama-architecture GGUFs: within each
/// head, GGUF row `2*i + t` holds HF row `t*half + i` (t ∈ {0, 1}). Takes the
/// stored matrix: it is read once, here, and its mapped pages are released after
/// the copy, so that only the permuted copy stays resident.
pub fn unpermute_qk(m: QMatrix, n_heads: usize) -> QMatrix {
    let hd = m.rows / n_heads;
    let half = hd / 2;
    let mut perm = vec![0usize; m.rows];
    for h in 0..n_heads {
        for t in 0..2 {
            for i in 0..half {
                perm[h * hd + t * half + i] = h * hd + 2 * i + t;
            }
        }
    }
    let permuted = m.permute_rows(&perm);
    m.data.release_pages();
    permuted
}

fn check_shape(name: &str, m: &QMatrix, rows: usize, cols: usize) -> Result<()> {
    if m.rows != rows || m.cols != cols {
        return Err(EngineError::ShapeMismatch {
            name: name.to_string(),
            found: vec![m.rows, m.cols],
            expected: vec![rows, cols],
        });
    }
    Ok(())
}

fn check_len(name: &str, v: &[f32], len: usize) -> Result<()> {
    if v.len() != len {
        return Err(EngineError::ShapeMismatch {
            name: name.to_string(),
            found: vec![v.len()],
            expected: vec![len],
        });
    }
    Ok(())
}

impl ModelWeights {
    /// Loads and shape-checks every tensor the architecture needs.
    pub fn load(config: &ModelConfig, source: &dyn TensorSource) -> Result<ModelWeights> {
        let names = Names {
            naming: source.naming(),
        };
        let c = config;
        let (h, q_dim, kv_dim, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let mat = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let m = source.matrix(name)?;
            check_shape(name, &m, rows, cols)?;
            Ok(m)
        };
        let vec = |name: &str, len: usize| -> Result<Vec<f32>> {
            let v = source.vector(name)?;
            check_len(name, &v, len)?;
            Ok(v)
        };
        let permuted = names.naming == TensorNaming::Gguf && c.arch == Architecture::Llama;
        let embed = mat(names.global("embed"), c.vocab_size, h)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let n = |w: &str| names.layer(i, w);
            let mut wq = mat(&n("q"), q_dim, h)?;
            let mut wk = mat(&n("k"), kv_dim, h)?;
            if permuted {
                wq = unpermute_qk(wq, c.num_heads);
                wk = unpermute_qk(wk, c.num_kv_heads);
            }
            let bias = |w: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if c.arch.has_qkv_bias() {
                    vec(&n(w), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let norm = |w: &str| -> Result<Option<Vec<f32>>> {
                if c.arch.has_qk_norm() {
                    vec(&n(w), c.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: vec(&n("attn_norm"), h)?,
                wq,
                wk,
                wv: mat(&n("v"), kv_dim, h)?,
                wo: mat(&n("o"), h, q_dim)?,
                bq: bias("bq", q_dim)?,
                bk: bias("bk", kv_dim)?,
                bv: bias("bv", kv_dim)?,
                q_norm: norm("q_norm")?,
                k_norm: norm("k_norm")?,
                ffn_norm: vec(&n("ffn_norm"), h)?,
                w_gate: mat(&n("gate"), ff, h)?,
                w_up: mat(&n("up"), ff, h)?,
                w_down: mat(&n("down"), h, ff)?,
            });
        }
        let lm_name = names.global("lm_head");
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(mat(lm_name, c.vocab_size, h)?)
        };
        Ok(ModelWeights {
            embed,
            layers,
            final_norm: vec(names.global("norm"), h)?,
            lm_head,
        })
    }
}
