//! The CPU's interleaved weight layout: eight rows at a time, so that one 32-byte
//! vector holds four consecutive quants of each of eight rows.
//!
//! Why: a row-major kernel spends a multiply, a pairwise add, a convert and an FMA
//! per 32 products (one weight row × one activation row per vector). With eight
//! weight rows side by side, four activation bytes are broadcast to all lanes and a
//! whole 32-value block is summed in 16-bit lanes before one convert + FMA covers
//! all eight rows — about 2.5× fewer multiply-pipe operations, and no horizontal
//! reduction (lane r of the result *is* row r). BENCHMARKS.md has the measurement.
//!
//! Layout ([`Layout::Interleaved8`]): rows are padded with zero rows to a multiple
//! of 8; group g (rows 8g..8g+8) takes `8 · row_bytes` bytes at `g · 8 · row_bytes`,
//! so the matrix has exactly the bytes of the row-major one (plus padding). Inside a
//! group, block b (32 values) takes `8 · block_bytes` bytes at `b · 8 · block_bytes`:
//! - first each f16 scale field of the block for rows 0..8 (16 bytes per field:
//!   Q4_0 and Q8_0 `d`; Q4_1 `d` then `m`),
//! - then the quant bytes in 4-byte chunks: chunk c of row r at
//!   `16·fields + 32·c + 4·r`. For Q4_0/Q4_1 chunk t (t < 4) holds values 4t..4t+4
//!   in its low nibbles and 16+4t..16+4t+4 in its high nibbles (GGML's pairing);
//!   for Q8_0 chunk j holds values 4j..4j+4.
//!
//! It is a pure byte permutation of the GGUF blocks: [`interleave_rows`] and
//! [`row_bytes_of`] are inverse, and every result is computed with one fixed
//! sequence of float operations per (weight row, activation row) whatever the
//! batch size (batch invariance): per block an exact integer sum `isum`, then
//! `acc = fma(isum, dw·da, acc)` and, for types with an offset, `acc = fma(mw, s,
//! acc)` — [`dot_portable`] is that sequence in scalar code, and the AVX2 kernels
//! must agree with it bit for bit.

use super::act::ActRow;
use super::blocks::f16_at;
use super::DType;

/// Rows per interleaved group.
pub const GROUP: usize = 8;

/// How a [`super::QMatrix`] stores its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major GGML blocks, as in GGUF files.
    Rows,
    /// Eight rows interleaved per block (see the module header).
    Interleaved8,
}

/// Whether `dtype` has an interleaved layout (and kernels for it).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
}

/// `(f16 scale fields, quant bytes)` per block of an interleavable type.
pub(super) fn shape(dtype: DType) -> (usize, usize) {
    match dtype {
        DType::Q4_0 => (1, 16),
        DType::Q4_1 => (2, 16),
        DType::Q8_0 => (1, 32),
        _ => unreachable!("{dtype} has no interleaved layout"),
    }
}

/// Where byte `i` of a row's block goes inside its group's interleaved block.
#[inline]
fn dest(fields: usize, r: usize, i: usize) -> usize {
    if i < 2 * fields {
        16 * (i / 2) + 2 * r + i % 2
    } else {
        let q = i - 2 * fields;
        16 * fields + 32 * (q / 4) + 4 * r + q % 4
    }
}

/// Bytes of the interleaved form of `rows` rows of `row_bytes` bytes.
pub fn interleaved_len(rows: usize, row_bytes: usize) -> usize {
    rows.next_multiple_of(GROUP) * row_bytes
}

/// Writes the interleaved form of row-major rows `first..first + data.len() /
/// row_bytes` (`data` holds just those rows) into `out`, the whole matrix's
/// [`interleaved_len`] bytes, zeroed beforehand (so padding rows stay zero).
pub fn interleave_rows(dtype: DType, data: &[u8], first: usize, row_bytes: usize, out: &mut [u8]) {
    let (fields, _) = shape(dtype);
    let bb = dtype.block_bytes();
    for (r, row) in (first..).zip(data.chunks_exact(row_bytes)) {
        let (g, lane) = (r / GROUP, r % GROUP);
        let group = &mut out[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let dst = &mut group[b * GROUP * bb..(b + 1) * GROUP * bb];
            for (i, &byte) in block.iter().enumerate() {
                dst[dest(fields, lane, i)] = byte;
            }
        }
    }
}

/// Row `row`'s GGML blocks, read back from interleaved `data`, into `out`
/// (`row_bytes` long).
pub fn row_bytes_of(dtype: DType, data: &[u8], row: usize, row_bytes: usize, out: &mut [u8]) {
    let (fields, _) = shape(dtype);
    let bb = dtype.block_bytes();
    let (g, lane) = (row / GROUP, row % GROUP);
    let group = &data[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
    for (b, block) in out.chunks_exact_mut(bb).enumerate() {
        let src = &group[b * GROUP * bb..(b + 1) * GROUP * bb];
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = src[dest(fields, lane, i)];
        }
    }
}

/// A group kernel: consecutive whole groups (`8 · row_bytes` bytes each) against
/// activation rows (four at a time: a tile of groups stays in cache while each set
/// of four passes over it); `out[q][8·g + r]` = row r of group g · activation
/// row q (one output row per activation row, at least 8 floats per group: the
/// caller's slice of y, so that nothing is copied afterwards).
pub type GroupFn = fn(&[u8], &[ActRow<'_>], &mut [&mut [f32]]);

/// The best group kernel for `dtype` on this CPU.
pub fn kernel(dtype: DType) -> GroupFn {
    simd_kernels(dtype)
        .first()
        .map_or_else(|| portable_kernel(dtype), |&(_, k)| k)
}

/// Every SIMD group kernel for `dtype` this CPU can run, best first, by name.
pub fn simd_kernels(dtype: DType) -> Vec<(&'static str, GroupFn)> {
    #[allow(unused_mut)]
    let mut ks: Vec<(&'static str, GroupFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        ks.extend(super::dot_zmm_i8::kernel(dtype).map(|k| ("avx512-vnni-zmm", k)));
        ks.extend(super::dot_vnni_i8::kernel(dtype).map(|k| ("avx512-vnni", k)));
        ks.extend(super::dot_avx2_i8::kernel(dtype).map(|k| ("avx2", k)));
    }
    ks
}

/// A tile kernel: whole groups (`nb` blocks per row) against up to
/// [`TILE_ROWS_MAX`] activation rows of a [`super::act::QActs`]; `out[g·n + q][r]`
/// = row r of group g · activation row q (n activation rows).
pub type TileKernel =
    fn(&[u8], usize, &super::act::QActs, std::ops::Range<usize>, &mut [[f32; GROUP]]);

/// Most activation rows per [`TileKernel`] call.
pub const TILE_ROWS_MAX: usize = 16;

/// The AMX tile kernel for `dtype`, where the CPU has one.
pub fn tile_kernel(dtype: DType) -> Option<TileKernel> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::amx_i8::kernel(dtype) {
        return Some(k);
    }
    let _ = dtype;
    None
}

/// The scalar group kernel (the definition of the arithmetic).
pub fn portable_kernel(dtype: DType) -> GroupFn {
    match dtype {
        DType::Q4_0 => |g, a, o| dot_portable(DType::Q4_0, g, a, o),
        DType::Q4_1 => |g, a, o| dot_portable(DType::Q4_1, g, a, o),
        DType::Q8_0 => |g, a, o| dot_portable(DType::Q8_0, g, a, o),
        _ => unreachable!("{dtype} has no interleaved layout"),
    }
}

/// Scalar reference of every interleaved kernel (see the module header).
fn dot_portable(dtype: DType, groups: &[u8], acts: &[ActRow<'_>], out: &mut [&mut [f32]]) {
    let Some(first) = acts.first() else { return };
    let (fields, qbytes) = shape(dtype);
    let bb = dtype.block_bytes();
    let group_bytes = (GROUP * bb * first.nb()).max(1);
    for (g, group) in groups.chunks_exact(group_bytes).enumerate() {
        dot_group(dtype, fields, qbytes, group, acts, g, out);
    }
}

/// [`dot_portable`] for group `g`.
fn dot_group(
    dtype: DType,
    fields: usize,
    qbytes: usize,
    group: &[u8],
    acts: &[ActRow<'_>],
    g: usize,
    out: &mut [&mut [f32]],
) {
    let bb = dtype.block_bytes();
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        for (lane, o) in o[g * GROUP..][..GROUP].iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..a.nb() {
                let blk = &group[b * GROUP * bb..(b + 1) * GROUP * bb];
                let dw = f16_at(blk, 2 * lane);
                let aq = &a.qs[32 * b..32 * (b + 1)];
                let quant = |q: usize| blk[16 * fields + 32 * (q / 4) + 4 * lane + q % 4];
                let mut isum = 0i32;
                for q in 0..qbytes {
                    let byte = quant(q);
                    isum += match dtype {
                        DType::Q8_0 => byte as i8 as i32 * aq[q] as i32,
                        _ => {
                            (byte & 0x0f) as i32 * aq[q] as i32
                                + (byte >> 4) as i32 * aq[q + 16] as i32
                        }
                    };
                }
                acc = (isum as f32).mul_add(dw * a.d(b), acc);
                let mw = match dtype {
                    DType::Q4_0 => Some(dw * -8.0),
                    DType::Q4_1 => Some(f16_at(blk, 16 + 2 * lane)),
                    _ => None,
                };
                if let Some(mw) = mw {
                    acc = mw.mul_add(a.s(b), acc);
                }
            }
            *o = acc;
        }
    }
}
