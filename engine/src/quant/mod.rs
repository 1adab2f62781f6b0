//! Weight matrices in every supported storage type (f32, f16, bf16 and the GGML
//! block-quantized types) and the CPU kernels that multiply activations by them.
//!
//! OWNER: helper A. Public API below is fixed (others call it).
//!
//! Convention: a matrix has `rows` output features and `cols` input features, stored
//! row-major (each row is `cols` values, i.e. `row_bytes()` bytes); `matmul` computes
//! `y[n×rows] = x[n×cols] · Wᵀ`, exactly like a PyTorch `nn.Linear` weight.
//!
//! Invariants of a [`QMatrix`] (checked by [`QMatrix::new`]): `cols` is a multiple of
//! the type's block length, `data` holds exactly `rows × row_bytes()` bytes (an
//! interleaved matrix, [`Layout::Interleaved8`], its rows padded with zero rows to a
//! multiple of 8), and F32 data is 4-byte aligned (so it can be viewed as `&[f32]`).
//!
//! Submodules: `blocks` (GGML block layouts), `dequant` (block → f32), `quantize`
//! (reference f32 → block quantizers), `act` (8-bit activation quantization),
//! `dot` (scalar integer dot products), `dot_avx2` (AVX2 helpers, float dots and
//! activation quantization), `dot_avx2_q32` / `dot_avx2_k` (AVX2 integer kernels),
//! `float` (f32 dots), `interleave` + `dot_avx2_i8` / `dot_vnni_i8` / `dot_zmm_i8`
//! (the CPU's eight-row interleaved layout and its AVX2, AVX-512 VNNI and 512-bit
//! VNNI kernels, the last two groups per register), `amx_i8` (AMX
//! tile kernels for the interleaved layout, many activation rows at once), `matmul`
//! (the threaded driver).

mod act;
#[cfg(target_arch = "x86_64")]
mod amx_i8;
mod blocks;
mod dequant;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "x86_64")]
mod dot_avx2_i8;
#[cfg(target_arch = "x86_64")]
mod dot_avx2_k;
#[cfg(target_arch = "x86_64")]
mod dot_avx2_q32;
#[cfg(target_arch = "x86_64")]
mod dot_vnni_i8;
#[cfg(target_arch = "x86_64")]
mod dot_zmm_i8;
mod float;
mod interleave;
mod matmul;
mod quantize;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_interleave;
#[cfg(test)]
mod tests_matmul;

use crate::storage::{Arena, Storage};
use crate::{EngineError, Result};

pub use blocks::QK_K;
pub use interleave::Layout;

/// Whether the CPU kernels use full 512-bit vectors here: AVX-512 F, BW, DQ, VL
/// and VNNI, with neither `PDSERVE_NO_AVX512` nor `PDSERVE_NO_ZMM` set (cached).
/// The interleaved matmul kernels (`dot_zmm_i8`) and the CPU backend's decode
/// attention follow it.
pub fn zmm_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dot_zmm_i8::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Bytes of a mapped matrix copied between two page releases in
/// [`QMatrix::interleaved`].
const RELEASE_EVERY: usize = 1 << 20;

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
    /// Every supported type, in GGML id order.
    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
        DType::BF16,
    ];

    /// From a GGML type id; `None` for ids we do not support.
    pub fn from_ggml(id: u32) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| *d as u32 == id)
    }
    /// Number of values in one block (1 for float types).
    pub fn block_len(self) -> usize {
        use DType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => QK_K,
        }
    }
    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        use DType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }
    /// Bytes of `n` values (n must be a multiple of `block_len`).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
        }
    }
    /// True for the block-quantized (non-float) types.
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight matrix in its stored type.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: Storage,
    /// Row-major as in the file, or the CPU's interleaved layout
    /// ([`QMatrix::interleaved`]).
    pub layout: Layout,
}

impl QMatrix {
    /// Validates that `data` holds exactly rows × cols values of `dtype`
    /// (`cols % block_len == 0`); copies to aligned storage if the type needs it.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: Storage) -> Result<QMatrix> {
        let bad = |reason: String| EngineError::Config(format!("QMatrix: {reason}"));
        if !cols.is_multiple_of(dtype.block_len()) {
            return Err(bad(format!(
                "{cols} columns is not a multiple of the {} block length {}",
                dtype.name(),
                dtype.block_len()
            )));
        }
        let expected = rows
            .checked_mul(dtype.bytes_for(cols))
            .ok_or_else(|| bad(format!("{rows}×{cols} {} overflows", dtype.name())))?;
        if data.len() != expected {
            return Err(bad(format!(
                "{rows}×{cols} {} needs {expected} bytes, got {}",
                dtype.name(),
                data.len()
            )));
        }
        let data = if dtype == DType::F32 {
            data.aligned4()
        } else {
            data
        };
        Ok(QMatrix {
            dtype,
            rows,
            cols,
            data,
            layout: Layout::Rows,
        })
    }

    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        assert_eq!(values.len(), rows * cols, "QMatrix::from_f32: wrong length");
        QMatrix {
            dtype: DType::F32,
            rows,
            cols,
            data: Storage::from_f32(values),
            layout: Layout::Rows,
        }
    }

    /// Quantizes f32 values (rows × cols, row-major) into a new matrix of `dtype`.
    /// Panics if `cols` is not a multiple of the block length (a programming error).
    pub fn quantize_from_f32(dtype: DType, rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        let bytes = quantize(dtype, values, rows, cols);
        QMatrix::new(dtype, rows, cols, Storage::from_bytes(&bytes))
            .expect("quantize produced a consistent size")
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(self.cols)
    }

    /// Raw bytes of row `row` of a row-major matrix (panics on an interleaved one:
    /// use [`QMatrix::dequantize_row`]).
    pub fn row_data(&self, row: usize) -> &[u8] {
        assert_eq!(
            self.layout,
            Layout::Rows,
            "row_data of an interleaved matrix"
        );
        let rb = self.row_bytes();
        &self.data.bytes()[row * rb..(row + 1) * rb]
    }

    /// Dequantizes row `row` into `out` (len == cols).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} out of range ({})", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        match self.layout {
            Layout::Rows => dequant::dequantize(self.dtype, self.row_data(row), out),
            Layout::Interleaved8 => {
                let rb = self.row_bytes();
                let mut bytes = vec![0u8; rb];
                interleave::row_bytes_of(self.dtype, self.data.bytes(), row, rb, &mut bytes);
                dequant::dequantize(self.dtype, &bytes, out);
            }
        }
    }

    /// Whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, chunk) in out.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(r, chunk);
            }
        }
        out
    }

    /// `y[n×rows] = x[n×cols] · Wᵀ`, multi-threaded (rayon), SIMD where available.
    ///
    /// Quantized weights: the activations are quantized to 8 bits per block first
    /// (relative error around 1e-3..1e-2); see [`QMatrix::matmul_exact`] for a path
    /// without activation quantization.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.check_matmul_args(x, n, y);
        matmul::matmul(self, x, n, y);
    }

    /// Like [`QMatrix::matmul`] but keeps the activations in f32: each weight row is
    /// dequantized on the fly and dotted in f32. Slower; used as a reference.
    pub fn matmul_exact(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.check_matmul_args(x, n, y);
        matmul::matmul_exact(self, x, n, y);
    }

    /// Several matrices with the same `cols` applied to the same `x`
    /// (`ys[j] = x · msⱼᵀ`, each n×rows_j) in one parallel region, quantizing `x`
    /// once when they share a type — e.g. Q/K/V or gate/up projections. Results are
    /// identical to separate [`QMatrix::matmul`] calls.
    pub fn matmul_many(ms: &[&QMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
        assert_eq!(ms.len(), ys.len(), "matmul_many: one output per matrix");
        for (m, y) in ms.iter().zip(ys.iter()) {
            m.check_matmul_args(x, n, y);
        }
        matmul::matmul_many(ms, x, n, ys);
    }

    fn check_matmul_args(&self, x: &[f32], n: usize, y: &[f32]) {
        assert_eq!(x.len(), n * self.cols, "matmul: x must be n×cols");
        assert_eq!(y.len(), n * self.rows, "matmul: y must be n×rows");
    }

    /// A copy with rows reordered: new row i = old row `perm[i]`.
    pub fn permute_rows(&self, perm: &[usize]) -> QMatrix {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(perm.len() * rb);
        for &p in perm {
            bytes.extend_from_slice(self.row_data(p));
        }
        QMatrix {
            dtype: self.dtype,
            rows: perm.len(),
            cols: self.cols,
            data: Storage::from_bytes(&bytes),
            layout: Layout::Rows,
        }
    }

    /// The same matrix in the CPU's interleaved layout (eight rows per group, see
    /// `interleave`), for the types that have one; `None` for the others and for
    /// a matrix already interleaved. Every matmul result is computed by the
    /// interleaved kernels then, whatever the number of activation rows.
    ///
    /// A mapped source's file pages are released as they are copied (they fault
    /// back in if `self` is read again): the copy is meant to replace it.
    pub fn interleaved(&self) -> Option<QMatrix> {
        if !self.interleavable() {
            return None;
        }
        let len = interleave::interleaved_len(self.rows, self.row_bytes());
        let data = Storage::filled(len, |out| self.interleave_into(out));
        Some(self.with_interleaved(data))
    }

    /// The interleaved copies of `mats` (those whose type has the layout; the
    /// others as they are) in one [`Arena`], so that the weights a step streams
    /// lie on huge pages. Same bytes as [`Self::interleaved`] one by one.
    pub fn interleaved_all(mats: &[&QMatrix]) -> Result<Vec<QMatrix>> {
        let len = |m: &QMatrix| interleave::interleaved_len(m.rows, m.row_bytes());
        let mut arena = Arena::new(mats.iter().filter(|m| m.interleavable()).map(|m| len(m)))?;
        // Each matrix's region in the arena, or none when it stays as it is.
        let regions: Vec<Option<usize>> = mats
            .iter()
            .map(|m| {
                m.interleavable().then(|| {
                    let (at, out) = arena.region(len(m));
                    m.interleave_into(out);
                    at
                })
            })
            .collect();
        let map = arena.finish()?;
        Ok(mats
            .iter()
            .zip(regions)
            .map(|(m, region)| match region {
                Some(at) => m.with_interleaved(Arena::window(&map, at, len(m))),
                None => (*m).clone(),
            })
            .collect())
    }

    fn interleavable(&self) -> bool {
        self.layout == Layout::Rows && interleave::supports(self.dtype)
    }

    /// Writes this row-major matrix's interleaved bytes into `out`, releasing
    /// the mapped rows' pages in slices as they are copied, so that a large
    /// mapped matrix is not resident twice at any time.
    fn interleave_into(&self, out: &mut [u8]) {
        let rb = self.row_bytes();
        let rows_per = (RELEASE_EVERY / rb.max(1)).max(1);
        for first in (0..self.rows).step_by(rows_per) {
            let n = rows_per.min(self.rows - first);
            let src = &self.data.bytes()[first * rb..(first + n) * rb];
            interleave::interleave_rows(self.dtype, src, first, rb, out);
            self.data.release_range(first * rb, n * rb);
        }
    }

    fn with_interleaved(&self, data: Storage) -> QMatrix {
        QMatrix {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data,
            layout: Layout::Interleaved8,
        }
    }
}

/// Reference quantizer: f32 values (rows × cols, row-major) to `dtype` bytes.
/// Used by tests and the GGUF writer. Panics if `values.len() != rows × cols` or
/// `cols` is not a multiple of the block length (programming errors).
pub fn quantize(dtype: DType, values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(
        values.len(),
        rows * cols,
        "quantize: wrong number of values"
    );
    assert!(
        cols.is_multiple_of(dtype.block_len()),
        "quantize: {cols} columns is not a multiple of the {} block length",
        dtype.name()
    );
    let mut out = Vec::with_capacity(rows * dtype.bytes_for(cols));
    for row in values.chunks_exact(cols.max(1)).take(rows) {
        quantize::quantize_row(dtype, row, &mut out);
    }
    out
}
