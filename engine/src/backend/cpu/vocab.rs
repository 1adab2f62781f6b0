//! The sampler's vocabulary-wide passes — the sanitising argmax and the row sum of
//! exponentials behind every sampled token's logprob — compiled a second time with
//! AVX2 enabled, and picked at run time.
//!
//! Why: the crate is built for baseline x86-64, so LLVM vectorises these loops
//! four lanes wide (SSE); with AVX2 the same code runs eight wide. They run once
//! per sampled token over the whole vocabulary (49,152 entries for SmolLM2), which
//! made them ~3% of a batch-16 decode step.
//!
//! Invariant: the AVX2 build returns bitwise what the portable build returns. Only
//! `avx2` is enabled, not `fma`: Rust never fuses a multiply and an add on its own,
//! and the other operations (add, multiply, min/max, compare, integer and bit
//! moves) give the same bits at any width; the lane layout of the sums is fixed in
//! the source (`fastmath::lane_sum`). The tests below hold the two builds equal.

use crate::sampling::{fastmath, processors};

/// [`fastmath::sum_exp_shifted_portable`], with AVX2 where the CPU has it.
pub fn sum_exp_shifted(logits: &[f32], max: f32, t: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(logits: &[f32], max: f32, t: f32) -> f64 {
            fastmath::sum_exp_shifted_portable(logits, max, t)
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2(logits, max, t) };
    }
    fastmath::sum_exp_shifted_portable(logits, max, t)
}

/// [`processors::sanitize_argmax_portable`], with AVX2 where the CPU has it.
pub fn sanitize_argmax(logits: &mut [f32]) -> Option<(u32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(logits: &mut [f32]) -> Option<(u32, f32)> {
            processors::sanitize_argmax_portable(logits)
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2(logits) };
    }
    processors::sanitize_argmax_portable(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with every kind of entry the sampler meets: ordinary logits at
    /// several scales, ties, NaN, ±inf, and lengths that are not a multiple of
    /// the lane or block widths.
    fn rows() -> Vec<Vec<f32>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut out = Vec::new();
        for (len, scale) in [
            (1, 1.0),
            (7, 3.0),
            (255, 10.0),
            (1003, 30.0),
            (49_152, 20.0),
        ] {
            let mut row: Vec<f32> = (0..len).map(|_| (next() - 0.5) * scale).collect();
            out.push(row.clone());
            if len > 8 {
                row[3] = f32::NAN;
                row[5] = f32::NEG_INFINITY;
                row[len - 1] = row[len / 2];
                out.push(row.clone());
                row[len / 3] = f32::INFINITY;
                out.push(row);
            }
        }
        out.push(vec![f32::NEG_INFINITY; 9]);
        out.push(Vec::new());
        out
    }

    #[test]
    fn dispatched_builds_equal_the_portable_ones_bitwise() {
        for row in rows() {
            let (mut a, mut b) = (row.clone(), row.clone());
            let got = sanitize_argmax(&mut a);
            let want = processors::sanitize_argmax_portable(&mut b);
            assert_eq!(
                got.map(|(i, m)| (i, m.to_bits())),
                want.map(|(i, m)| (i, m.to_bits()))
            );
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let Some((_, max)) = want else { continue };
            for t in [1.0, 0.7, 1.3] {
                let got = sum_exp_shifted(&b, max, t);
                let want = fastmath::sum_exp_shifted_portable(&b, max, t);
                assert_eq!(got.to_bits(), want.to_bits(), "len {} t {t}", b.len());
                assert!(got >= 1.0, "the max entry alone contributes 1");
            }
        }
    }
}
