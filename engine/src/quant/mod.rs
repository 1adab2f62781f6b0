//! Weight matrices in every supported storage type (f32, f16, bf16 and the GGML
//! block-quantized types) and the CPU kernels that multiply activations by them.
//!
//! OWNER: helper A. Public API below is fixed (others call it); fill in the bodies,
//! add submodules (`blocks`, `dequant`, `dot_avx2`, ...).
//!
//! Convention: a matrix has `rows` output features and `cols` input features, stored
//! row-major (each row is `cols` values, i.e. `row_bytes()` bytes); `matmul` computes
//! `y[n×rows] = x[n×cols] · Wᵀ`, exactly like a PyTorch `nn.Linear` weight.

use crate::storage::Storage;
use crate::Result;

/// Storage type of a weight tensor. Discriminants are the GGML type ids.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

impl DType {
    /// From a GGML type id; `None` for ids we do not support.
    pub fn from_ggml(id: u32) -> Option<DType> {
        let _ = id;
        todo!("helper A")
    }
    /// Number of values in one block (1 for float types).
    pub fn block_len(self) -> usize {
        todo!("helper A")
    }
    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        todo!("helper A")
    }
    /// Bytes of `n` values (n must be a multiple of `block_len`).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }
    pub fn name(self) -> &'static str {
        todo!("helper A")
    }
}

/// A weight matrix in its stored type.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: Storage,
}

impl QMatrix {
    /// Validates that `data` holds exactly rows × cols values of `dtype`
    /// (`cols % block_len == 0`); copies to aligned storage if the type needs it.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: Storage) -> Result<QMatrix> {
        let _ = (dtype, rows, cols, data);
        todo!("helper A")
    }

    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        let _ = (rows, cols, values);
        todo!("helper A")
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(self.cols)
    }

    /// Dequantizes row `row` into `out` (len == cols).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let _ = (row, out);
        todo!("helper A")
    }

    /// Whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        todo!("helper A")
    }

    /// `y[n×rows] = x[n×cols] · Wᵀ`, multi-threaded (rayon), SIMD where available.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let _ = (x, n, y);
        todo!("helper A")
    }

    /// A copy with rows reordered: new row i = old row `perm[i]`.
    pub fn permute_rows(&self, perm: &[usize]) -> QMatrix {
        let _ = perm;
        todo!("helper A")
    }
}

/// Reference quantizer: f32 values (rows × cols, row-major) to `dtype` bytes.
/// Used by tests and the GGUF writer.
pub fn quantize(dtype: DType, values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let _ = (dtype, values, rows, cols);
    todo!("helper A")
}
