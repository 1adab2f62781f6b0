//! Portable (scalar) integer dot products of one quantized weight row with one
//! 8-bit activation row ([`ActRow`]). These define the semantics; the AVX2 kernels
//! in `dot_avx2` compute the same integer sums and are tested against these.
//!
//! Per 32-block b with weight scale dw (and min mw) and activation scale da:
//! - Q4_0: dw·da·(Σ q·a − 8·Σa)      - Q4_1: dw·da·Σ q·a + mw·s_b
//! - Q5_0: dw·da·(Σ q·a − 16·Σa)     - Q5_1: dw·da·Σ q·a + mw·s_b
//! - Q8_0: dw·da·Σ q·a
//!
//! K-quants (256 super-blocks, activations in 256-blocks with 16-value `bsums`):
//! - Q4_K/Q5_K: da·(d·Σ_j sc_j·Σ q·a − dmin·Σ_j m_j·Σa_j) over 8 sub-blocks of 32
//! - Q6_K: da·d·Σ_g sc_g·(Σ q·a − 32·Σa_g) over 16 groups of 16

use super::act::ActRow;
use super::blocks::*;
use super::DType;

/// A scalar row-dot kernel: weight row bytes × activation row → f32.
pub type DotFn = fn(&[u8], &ActRow<'_>) -> f32;

/// The scalar kernel and activation block size for `dtype`, if it has an integer
/// path.
pub fn scalar_kernel(dtype: DType) -> Option<(DotFn, usize)> {
    Some(match dtype {
        DType::Q4_0 => (dot_q4_0 as DotFn, QK),
        DType::Q4_1 => (dot_q4_1, QK),
        DType::Q5_0 => (dot_q5_0, QK),
        DType::Q5_1 => (dot_q5_1, QK),
        DType::Q8_0 => (dot_q8_0, QK),
        DType::Q4_K => (dot_q4_k, QK_K),
        DType::Q5_K => (dot_q5_k, QK_K),
        DType::Q6_K => (dot_q6_k, QK_K),
        _ => return None,
    })
}

#[inline(always)]
fn asum32(a: &ActRow<'_>, b: usize) -> i32 {
    a.bsums[2 * b] as i32 + a.bsums[2 * b + 1] as i32
}

#[inline(always)]
fn nibble_dot(qs: &[u8], qh: u32, aq: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as i32 | ((((qh >> j) & 1) << 4) as i32);
        let hi = (qs[j] >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
        s += lo * aq[j] as i32 + hi * aq[j + 16] as i32;
    }
    s
}

pub fn dot_q4_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let s = nibble_dot(&blk[2..18], 0, &a.qs[32 * b..32 * b + 32]);
        acc += f16_at(blk, 0) * a.d(b) * (s - 8 * asum32(a, b)) as f32;
    }
    acc
}

pub fn dot_q4_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let s = nibble_dot(&blk[4..20], 0, &a.qs[32 * b..32 * b + 32]);
        acc += f16_at(blk, 0) * a.d(b) * s as f32 + f16_at(blk, 2) * a.s(b);
    }
    acc
}

pub fn dot_q5_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(22).enumerate() {
        let s = nibble_dot(&blk[6..22], u32_at(blk, 2), &a.qs[32 * b..32 * b + 32]);
        acc += f16_at(blk, 0) * a.d(b) * (s - 16 * asum32(a, b)) as f32;
    }
    acc
}

pub fn dot_q5_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(24).enumerate() {
        let s = nibble_dot(&blk[8..24], u32_at(blk, 4), &a.qs[32 * b..32 * b + 32]);
        acc += f16_at(blk, 0) * a.d(b) * s as f32 + f16_at(blk, 2) * a.s(b);
    }
    acc
}

pub fn dot_q8_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let aq = &a.qs[32 * b..32 * b + 32];
        let s: i32 = blk[2..34]
            .iter()
            .zip(aq)
            .map(|(&q, &x)| (q as i8) as i32 * x as i32)
            .sum();
        acc += f16_at(blk, 0) * a.d(b) * s as f32;
    }
    acc
}

/// Shared Q4_K / Q5_K body; `qh` is empty for Q4_K.
fn dot_k4(blk: &[u8], qs: &[u8], qh: &[u8], a: &ActRow<'_>, b: usize) -> f32 {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let scales = &blk[4..16];
    let aq = &a.qs[256 * b..256 * b + 256];
    let (mut sum_s, mut sum_m) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let c = j / 2;
        let shift = 4 * (j % 2);
        let mut s = 0i32;
        for l in 0..32 {
            let mut q = ((qs[32 * c + l] >> shift) & 0x0f) as i32;
            if !qh.is_empty() {
                q |= (((qh[l] >> j) & 1) as i32) << 4;
            }
            s += q * aq[32 * j + l] as i32;
        }
        sum_s += sc as i32 * s;
        let asum = a.bsums[16 * b + 2 * j] as i32 + a.bsums[16 * b + 2 * j + 1] as i32;
        sum_m += m as i32 * asum;
    }
    a.d(b) * (d * sum_s as f32 - dmin * sum_m as f32)
}

pub fn dot_q4_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    w.chunks_exact(144)
        .enumerate()
        .map(|(b, blk)| dot_k4(blk, &blk[16..144], &[], a, b))
        .sum()
}

pub fn dot_q5_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    w.chunks_exact(176)
        .enumerate()
        .map(|(b, blk)| dot_k4(blk, &blk[48..176], &blk[16..48], a, b))
        .sum()
}

pub fn dot_q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
        let d = f16_at(blk, 208);
        let aq = &a.qs[256 * b..256 * b + 256];
        let mut sum = 0i32;
        // Value e = 128h + 32k + l: low 4 bits from ql[64h + l + 32(k&1)] (nibble
        // k/2), high 2 bits from qh[32h + l] bits 2k..2k+2; group e/16.
        for e in 0..256 {
            let (h, k, l) = (e / 128, (e / 32) % 4, e % 32);
            let lo = (ql[64 * h + l + 32 * (k & 1)] >> (4 * (k / 2))) & 0x0f;
            let hi = (qh[32 * h + l] >> (2 * k)) & 3;
            let q = (lo | (hi << 4)) as i32;
            sum += (sc[e / 16] as i8) as i32 * q * aq[e] as i32;
        }
        let off: i32 = sc
            .iter()
            .zip(&a.bsums[16 * b..16 * b + 16])
            .map(|(&s, &bs)| (s as i8) as i32 * bs as i32)
            .sum();
        acc += a.d(b) * d * (sum - 32 * off) as f32;
    }
    acc
}
