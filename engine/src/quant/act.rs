//! 8-bit activation quantization for the integer matmul kernels.
//!
//! Activations `x[n×cols]` are quantized once per matmul into symmetric 8-bit
//! blocks of `block` values (32 for the Q4_0..Q8_1 weight types, 256 for the
//! K-quants): `x ≈ d·q`, q in −127..=127, with an f32 scale per block (more precise
//! than GGML's f16). Each block also carries `s = d·Σq` (for weight types with an
//! offset/min term), and every 16 values carry their integer sum `bsums` (K-quants).
//!
//! Invariants: `cols % block == 0`; `qs.len() == n·cols`; `ds.len() ==
//! 2·n·cols/block`; `bsums.len() == n·cols/16`.

/// Quantized activations for `n` rows.
pub struct QActs {
    pub block: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    /// Interleaved per block: `[d, s]` (so both load as one 64-bit value).
    pub ds: Vec<f32>,
    pub bsums: Vec<i16>,
}

/// One activation row of a [`QActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [f32],
    pub bsums: &'a [i16],
}

/// From this many values on, [`QActs::quantize`] splits the rows across the
/// rayon pool (a batch-16 down projection's 24,576 values took 10 µs on one thread
/// while the other waited; a 512-token prefill's hundreds of µs per matmul).
const QUANTIZE_PARALLEL_FROM: usize = 16 * 1024;

/// A mutable view of consecutive rows of a [`QActs`] (block indices relative to
/// the first row), what the quantizers write.
pub struct QActsMut<'a> {
    pub block: usize,
    pub qs: &'a mut [i8],
    pub ds: &'a mut [f32],
    pub bsums: &'a mut [i16],
}

impl QActs {
    /// Quantizes `x` (n×cols) in blocks of `block` values; large inputs are split
    /// by rows across the rayon pool (every row's result is the same either way).
    pub fn quantize(x: &[f32], cols: usize, block: usize) -> QActs {
        debug_assert!(cols.is_multiple_of(block) && block.is_multiple_of(16));
        let nb = x.len() / block;
        let mut a = QActs {
            block,
            cols,
            qs: vec![0; x.len()],
            ds: vec![0.0; 2 * nb],
            bsums: vec![0; x.len() / 16],
        };
        let rows = x.len() / cols.max(1);
        if x.len() < QUANTIZE_PARALLEL_FROM || rows < 2 {
            quantize_into(x, &mut a.as_mut());
            return a;
        }
        use rayon::prelude::*;
        let chunk = rows.div_ceil(2 * rayon::current_num_threads()).max(1) * cols;
        x.par_chunks(chunk)
            .zip(a.qs.par_chunks_mut(chunk))
            .zip(a.ds.par_chunks_mut(2 * chunk / block))
            .zip(a.bsums.par_chunks_mut(chunk / 16))
            .for_each(|(((x, qs), ds), bsums)| {
                quantize_into(
                    x,
                    &mut QActsMut {
                        block,
                        qs,
                        ds,
                        bsums,
                    },
                );
            });
        a
    }

    /// The whole of `self` as a [`QActsMut`].
    pub fn as_mut(&mut self) -> QActsMut<'_> {
        QActsMut {
            block: self.block,
            qs: &mut self.qs,
            ds: &mut self.ds,
            bsums: &mut self.bsums,
        }
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.cols / self.block;
        ActRow {
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
            ds: &self.ds[2 * i * nb..2 * (i + 1) * nb],
            bsums: &self.bsums[i * self.cols / 16..(i + 1) * self.cols / 16],
        }
    }
}

impl ActRow<'_> {
    /// Number of blocks in the row.
    #[inline(always)]
    pub fn nb(&self) -> usize {
        self.ds.len() / 2
    }
    /// Scale of block `b`.
    #[inline(always)]
    pub fn d(&self, b: usize) -> f32 {
        self.ds[2 * b]
    }
    /// `d·Σq` of block `b`.
    #[inline(always)]
    pub fn s(&self, b: usize) -> f32 {
        self.ds[2 * b + 1]
    }
}

/// Four activation rows processed together, with their block scales transposed so
/// that one load gives the four rows' values: for block b,
/// `d8[8b..8b + 8] = [d₀, d₁, d₂, d₃, d₀, d₁, d₂, d₃]` (duplicated so that an
/// in-lane shuffle broadcasts one row's scale) and `s4[4b..4b + 4] = [s₀..s₃]`.
pub struct ActTile4<'a> {
    pub rows: [ActRow<'a>; 4],
    pub d8: Vec<f32>,
    pub s4: Vec<f32>,
}

impl<'a> ActTile4<'a> {
    pub fn new(rows: [ActRow<'a>; 4]) -> ActTile4<'a> {
        let (d8, s4) = transpose_scales(&rows);
        ActTile4 { rows, d8, s4 }
    }
}

/// Eight activation rows processed together: for block b,
/// `d16[16b..16b + 16] = [d₀..d₃, d₀..d₃, d₄..d₇, d₄..d₇]` (each half duplicated, as
/// in [`ActTile4`]) and `s8[8b..8b + 8] = [s₀..s₇]`.
pub struct ActTile8<'a> {
    pub rows: [ActRow<'a>; 8],
    pub d16: Vec<f32>,
    pub s8: Vec<f32>,
}

impl<'a> ActTile8<'a> {
    pub fn new(rows: [ActRow<'a>; 8]) -> ActTile8<'a> {
        let (d16, s8) = transpose_scales(&rows);
        ActTile8 { rows, d16, s8 }
    }
}

/// Block-major scales of `R` rows (R a multiple of 4) in the tiles' layout: per block
/// b, `d[2R·b ..]` holds each group of four rows' `d` twice (`[d₀..d₃, d₀..d₃]`, …)
/// and `s[R·b + r] = s_r(b)`.
fn transpose_scales<const R: usize>(rows: &[ActRow<'_>; R]) -> (Vec<f32>, Vec<f32>) {
    let nb = rows[0].nb();
    let mut d = vec![0f32; 2 * R * nb];
    let mut s = vec![0f32; R * nb];
    for b in 0..nb {
        for (r, row) in rows.iter().enumerate() {
            let base = 2 * R * b + 8 * (r / 4) + r % 4;
            d[base] = row.d(b);
            d[base + 4] = row.d(b);
            s[R * b + r] = row.s(b);
        }
    }
    (d, s)
}

/// Quantizes `x` into `a` with the best quantizer this CPU has.
fn quantize_into(x: &[f32], a: &mut QActsMut<'_>) {
    #[cfg(target_arch = "x86_64")]
    if super::dot_avx2::available() {
        super::dot_avx2::quantize_acts(x, a);
        return;
    }
    quantize_acts_scalar(x, a);
}

/// Portable quantizer; the AVX2 one must produce identical output.
pub fn quantize_acts_scalar(x: &[f32], a: &mut QActsMut<'_>) {
    let block = a.block;
    for (b, xs) in x.chunks_exact(block).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let qs = &mut a.qs[b * block..(b + 1) * block];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            // round half away from zero, like `_mm256_round_ps` with nearest-even
            // differs only on exact .5 ties; we use nearest-even in both paths.
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        a.ds[2 * b] = d;
        a.ds[2 * b + 1] = d * sum as f32;
        for (g, chunk) in qs.chunks_exact(16).enumerate() {
            a.bsums[b * block / 16 + g] = chunk.iter().map(|&q| q as i16).sum();
        }
    }
}
