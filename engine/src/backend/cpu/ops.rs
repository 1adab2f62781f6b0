//! Element-wise and row-wise CPU kernels (safe Rust written so LLVM vectorizes it:
//! fixed-width lane accumulators instead of serial float reductions).

use crate::kv::pool::KvElem;
use crate::sampling::fastmath::exp_nonpos;

/// Dot product with 8 independent accumulators (vectorizes without fast-math);
/// `b` may be stored KV elements (widened to f32 exactly).
#[inline]
pub fn dot<E: KvElem>(a: &[f32], b: &[E]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l].to_f32();
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y.to_f32();
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy<E: KvElem>(a: f32, x: &[E], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi.to_f32();
    }
}

/// `out = x / sqrt(mean(x²) + eps) * w` for one row.
#[inline]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// `x · sigmoid(x)`, with the exponential of a non-positive argument only
/// (`e = exp(−|x|)`, then `1/(1+e)` or `e/(1+e)`), so that it vectorises without a
/// libm call (relative error ~2e-7).
#[inline]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpos(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// cos/sin tables for RoPE: `[positions][head_dim / 2]` each.
pub fn rope_tables(positions: &[u32], head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for f in &inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotate-half RoPE on one head vector.
#[inline]
pub fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }

    #[test]
    fn silu_matches_f64() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(silu(-1000.0), -0.0);
        assert_eq!(silu(1000.0), 1000.0);
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let (c, s) = rope_tables(&[0], 8, 10000.0);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x.clone();
        rope_head(&mut x, &c, &s);
        assert_eq!(x, orig);
    }

    #[test]
    fn rope_preserves_norm() {
        let (c, s) = rope_tables(&[17], 8, 10000.0);
        let mut x = vec![1.0, -2.0, 3.0, 0.5, 5.0, 6.0, -7.0, 8.0];
        let n0 = dot(&x, &x);
        rope_head(&mut x, &c, &s);
        assert!((dot(&x, &x) - n0).abs() < 1e-3);
    }
}
