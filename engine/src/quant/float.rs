//! f32 dot products against weight rows stored as F32, F16 or BF16 (and against
//! dequantized rows of any type). Portable versions here; AVX2/F16C/FMA versions in
//! `dot_avx2`, selected at run time.

use super::blocks::{bf16_at, f16_at};
use super::DType;

/// `Σ w[i]·x[i]` for a weight row of a float `dtype` (bytes) and f32 `x`.
pub fn dot_float_row(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::dot_avx2::available() {
        return super::dot_avx2::dot_float_row(dtype, w, x);
    }
    dot_float_row_scalar(dtype, w, x)
}

pub fn dot_float_row_scalar(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    // 8 partial sums so that the compiler can vectorize and rounding is closer to
    // the SIMD path.
    let mut acc = [0f32; 8];
    let get: fn(&[u8], usize) -> f32 = match dtype {
        DType::F32 => |b, i| super::blocks::f32_at(b, 4 * i),
        DType::F16 => |b, i| f16_at(b, 2 * i),
        DType::BF16 => |b, i| bf16_at(b, 2 * i),
        _ => unreachable!("dot_float_row on {dtype:?}"),
    };
    for (i, &xv) in x.iter().enumerate() {
        acc[i % 8] += get(w, i) * xv;
    }
    acc.iter().sum()
}

/// Four dots sharing the row `w`.
pub fn dot_f32_x4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::dot_avx2::available() {
        return super::dot_avx2::dot_f32_x4(w, x);
    }
    x.map(|x| dot_f32(w, x))
}

/// `Σ a[i]·b[i]` in f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::dot_avx2::available() {
        return super::dot_avx2::dot_f32(a, b);
    }
    let mut acc = [0f32; 8];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] += x * y;
    }
    acc.iter().sum()
}
